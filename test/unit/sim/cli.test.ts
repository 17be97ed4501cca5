import { describe, expect, it } from "vitest";
import { parseSimArgs, SimCliUsageError } from "../../../src/sim/cli.js";
import { parseDurationMs } from "../../../src/sim/duration.js";

describe("parseDurationMs", () => {
  it.each([
    ["250ms", 250],
    ["5s", 5000],
    ["1.5s", 1500],
    ["1m", 60_000],
    ["2h", 7_200_000],
    ["100", 100],
    [" 10 ms ", 10],
    ["", null],
    ["5x", null],
    ["-1s", null],
    ["s", null],
  ])("%j -> %j", (text, ms) => {
    expect(parseDurationMs(text)).toBe(ms);
  });
});

describe("parseSimArgs", () => {
  it("maps every flag onto options and faults", () => {
    const parsed = parseSimArgs([
      "--port=8001",
      "--host",
      "0.0.0.0",
      "--model",
      "llama-3.1-8b",
      "--model",
      "llama-3.1-70b",
      "--slots",
      "8",
      "--max-queue",
      "32",
      "--prefill-ms-per-token",
      "0.2",
      "--decode-step-ms",
      "12",
      "--decode-ms-per-seq",
      "0.5",
      "--time-scale",
      "0.1",
      "--output-tokens",
      "16..256",
      "--kv-cache-tokens",
      "4096",
      "--embed-slots",
      "2",
      "--embed-call-ms",
      "6",
      "--embed-per-input-ms",
      "0.25",
      "--prefix-cache-blocks",
      "160",
      "--prefix-block-chars",
      "128",
      "--load-time",
      "2s",
      "--seed",
      "7",
      "--error-rate",
      "0.1",
      "--error-status",
      "503",
      "--retry-after",
      "3",
      "--latency",
      "50ms",
      "--hang",
      "--drop-after",
      "10",
      "--refuse",
      "--reset",
      "--slow-start",
      "10s",
      "--unhealthy",
    ]);
    expect(parsed).toEqual({
      help: false,
      options: {
        host: "0.0.0.0",
        port: 8001,
        models: ["llama-3.1-8b", "llama-3.1-70b"],
        slots: 8,
        maxQueue: 32,
        prefillMsPerToken: 0.2,
        decodeStepMs: 12,
        decodeMsPerSeq: 0.5,
        timeScale: 0.1,
        outputTokensMin: 16,
        outputTokensMax: 256,
        kvCacheTokens: 4096,
        embedSlots: 2,
        embedCallMs: 6,
        embedPerInputMs: 0.25,
        prefixCacheBlocks: 160,
        prefixBlockChars: 128,
        loadTimeMs: 2000,
        seed: 7,
        faults: {
          errorRate: 0.1,
          errorStatus: 503,
          errorRetryAfterS: 3,
          latencyMs: 50,
          hang: true,
          dropMidStreamAfterTokens: 10,
          refuseConnections: true,
          resetConnections: true,
          slowStartMs: 10_000,
          unhealthy: true,
        },
      },
    });
  });

  it("accepts a single output length and no flags at all", () => {
    expect(parseSimArgs(["--output-tokens", "64"])).toMatchObject({
      options: { outputTokensMin: 64, outputTokensMax: 64 },
    });
    expect(parseSimArgs([])).toEqual({ help: false, options: { faults: {} } });
    expect(parseSimArgs(["-h"])).toEqual({ help: true });
  });

  it.each([
    [["--slots", "abc"], "--slots"],
    [["--slots", "0"], "--slots"],
    [["--port", "70000"], "--port"],
    [["--error-rate", "2"], "--error-rate"],
    [["--error-status", "200"], "--error-status"],
    [["--latency", "soon"], "--latency"],
    [["--output-tokens", "9..3"], "--output-tokens"],
    [["--output-tokens", "1..2..3"], "--output-tokens"],
    [["--prefix-cache-blocks", "-1"], "--prefix-cache-blocks"],
    [["--prefix-cache-blocks", "2.5"], "--prefix-cache-blocks"],
    [["--prefix-cache-blocks", "many"], "--prefix-cache-blocks"],
    [["--prefix-block-chars", "0"], "--prefix-block-chars"],
    [["--embed-slots", "0"], "--embed-slots"],
    [["--embed-call-ms", "-1"], "--embed-call-ms"],
    [["--embed-per-input-ms", "x"], "--embed-per-input-ms"],
    [["--prefix-block-chars", ""], "--prefix-block-chars"],
    [["--bogus"], "--bogus"],
    [["--slots"], "--slots"],
    [["stray"], "stray"],
  ])("rejects %j naming %s", (argv, flag) => {
    expect(() => parseSimArgs(argv)).toThrow(SimCliUsageError);
    expect(() => parseSimArgs(argv)).toThrow(flag);
  });
});
