import { describe, expect, it } from "vitest";
import { defaultSimFaults, parseFaults } from "../../../src/sim/faults.js";
import { SLOW_START_MAX_FACTOR, slowStartFactor } from "../../../src/sim/slow-start.js";

describe("parseFaults", () => {
  it("accepts every known fault with a valid value", () => {
    const all = {
      errorRate: 0.5,
      errorStatus: 429,
      errorRetryAfterS: 2,
      latencyMs: 10,
      hang: true,
      dropMidStreamAfterTokens: 0,
      refuseConnections: false,
      resetConnections: true,
      slowStartMs: 1000,
      unhealthy: true,
    };
    expect(parseFaults(all)).toEqual({ ok: true, faults: all });
    expect(parseFaults({ ...defaultSimFaults })).toEqual({ ok: true, faults: defaultSimFaults });
    expect(parseFaults({ dropMidStreamAfterTokens: null, errorRetryAfterS: null }).ok).toBe(true);
  });

  it.each([
    [[], "faults must be a JSON object"],
    [null, "faults must be a JSON object"],
    [{ nope: 1 }, 'unknown fault "nope"'],
    [{ errorRate: 1.5 }, "errorRate"],
    [{ errorRate: "0.5" }, "errorRate"],
    [{ errorStatus: 200 }, "errorStatus"],
    [{ errorStatus: 500.5 }, "errorStatus"],
    [{ latencyMs: -1 }, "latencyMs"],
    [{ hang: "yes" }, "hang"],
    [{ dropMidStreamAfterTokens: 1.5 }, "dropMidStreamAfterTokens"],
    [{ slowStartMs: Number.NaN }, "slowStartMs"],
  ])("rejects %j naming the problem", (input, message) => {
    const result = parseFaults(input);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error).toContain(message);
  });
});

describe("slowStartFactor", () => {
  it.each([
    [0, 0, 1],
    [0, 1000, SLOW_START_MAX_FACTOR],
    [500, 1000, 3],
    [750, 1000, 2],
    [1000, 1000, 1],
    [5000, 1000, 1],
    [-10, 1000, SLOW_START_MAX_FACTOR],
  ])("elapsed %d of %d ms -> x%d", (elapsed, window, factor) => {
    expect(slowStartFactor(elapsed, window)).toBeCloseTo(factor);
  });
});
