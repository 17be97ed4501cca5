/**
 * `floodgate sim ...`: runs one simulated GPU backend until the process is stopped.
 * Exits by itself only for --help (0) and bad flags (2); everything else is the caller's to decide.
 */

import { parseArgs } from "node:util";
import { parseDurationMs } from "./duration.js";
import type { SimFaults } from "./faults.js";
import { resolveSimOptions, type SimOptions } from "./options.js";
import { type SimServer, startSim } from "./server.js";

export const SIM_USAGE = `Usage: floodgate sim [options]

Runs one simulated OpenAI-compatible inference server (vLLM-like, continuous batching).

Server:
  --host HOST                   listen address (default 127.0.0.1)
  --port N                      listen port, 0 for any free one (default 0)
  --model NAME                  served model name; repeat for several (default sim-model)
  --load-time DURATION          /health answers 503 this long after start (default 0)
  --seed N                      seed of the generated text (default 1)

Batching model (times in ms, multiplied by --time-scale):
  --slots N                     concurrent sequences (default 16)
  --max-queue N                 waiting requests before 503 server_busy (default 64)
  --scheduling-policy P         fcfs, or priority: waiting requests by their priority field,
                                lower first (default fcfs: a priority field gets 400, as vLLM)
  --prefill-ms-per-token MS     prefill cost per prompt token, embeddings inputs too (default 0.1)
  --decode-step-ms MS           fixed cost of one decode step (default 15)
  --decode-ms-per-seq MS        extra step cost per running sequence (default 0.3)
  --time-scale X                0 answers instantly (default 1)
  --output-tokens N|MIN..MAX    output length without max_tokens (default 16..256)
  --kv-cache-tokens N           KV-cache capacity in tokens (default 32768)

Embeddings engine (one call at a time by default, as llama.cpp with one slot or Ollama; a call
costs --embed-call-ms + --embed-per-input-ms per input + its tokens' prefill):
  --embed-slots N               embeddings calls computed at once; the others wait, up to
                                --max-queue (default 1)
  --embed-call-ms MS            fixed cost of one embeddings call (default 8)
  --embed-per-input-ms MS       cost per input of an embeddings call (default 0.5)

Prefix caching (vLLM's automatic prefix caching, for chat and completion prompts):
  --prefix-cache-blocks N       blocks of prompt text the server keeps, least recently used
                                evicted first; prefill skips the longest cached run of leading
                                blocks (default 0: prefix caching off)
  --prefix-block-chars N        characters per block of the prompt's text; only full blocks are
                                cached (default 256)

Faults (also settable at run time: POST /sim/faults):
  --error-rate X                fraction 0..1 of requests answered with --error-status
  --error-status N              status of injected errors (default 500)
  --retry-after S               retry-after seconds on injected 429/503
  --latency DURATION            delay before each response starts
  --hang                        accept requests and never answer
  --drop-after N                cut each response after N streamed tokens
  --refuse                      refuse connections (not listening)
  --reset                       reset every new connection
  --slow-start DURATION         start up to 5x slower, easing to normal over this window
  --unhealthy                   /health answers 503

Durations: 250ms, 5s, 1m, 1h, or plain milliseconds.
  -h, --help                    show this help
`;

/** A flag the user got wrong; the message names it. */
export class SimCliUsageError extends Error {
  override name = "SimCliUsageError";
}

export type ParsedSimArgs = { help: true } | { help: false; options: Partial<SimOptions> };

const FLAGS = {
  host: { type: "string" },
  port: { type: "string" },
  model: { type: "string", multiple: true },
  "load-time": { type: "string" },
  seed: { type: "string" },
  "scheduling-policy": { type: "string" },
  slots: { type: "string" },
  "max-queue": { type: "string" },
  "prefill-ms-per-token": { type: "string" },
  "decode-step-ms": { type: "string" },
  "decode-ms-per-seq": { type: "string" },
  "time-scale": { type: "string" },
  "output-tokens": { type: "string" },
  "kv-cache-tokens": { type: "string" },
  "embed-slots": { type: "string" },
  "embed-call-ms": { type: "string" },
  "embed-per-input-ms": { type: "string" },
  "prefix-cache-blocks": { type: "string" },
  "prefix-block-chars": { type: "string" },
  "error-rate": { type: "string" },
  "error-status": { type: "string" },
  "retry-after": { type: "string" },
  latency: { type: "string" },
  hang: { type: "boolean" },
  "drop-after": { type: "string" },
  refuse: { type: "boolean" },
  reset: { type: "boolean" },
  "slow-start": { type: "string" },
  unhealthy: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

function number(
  flag: string,
  text: string,
  min: number,
  integer: boolean,
  max = Number.POSITIVE_INFINITY,
): number {
  const value = text.trim() === "" ? Number.NaN : Number(text);
  if (!Number.isFinite(value) || value < min || value > max || (integer && !Number.isInteger(value))) {
    const range = max === Number.POSITIVE_INFINITY ? `>= ${min}` : `between ${min} and ${max}`;
    throw new SimCliUsageError(
      `--${flag} expects ${integer ? "an integer" : "a number"} ${range}, got "${text}"`,
    );
  }
  return value;
}

function duration(flag: string, text: string): number {
  const ms = parseDurationMs(text);
  if (ms === null)
    throw new SimCliUsageError(`--${flag} expects a duration like 250ms, 5s or 1m, got "${text}"`);
  return ms;
}

function outputRange(text: string): [number, number] {
  const parts = text.split("..");
  if (parts.length === 1) {
    const n = number("output-tokens", text, 1, true);
    return [n, n];
  }
  const [minText = "", maxText = ""] = parts;
  if (parts.length !== 2) throw new SimCliUsageError(`--output-tokens expects N or MIN..MAX, got "${text}"`);
  const min = number("output-tokens", minText, 1, true);
  const max = number("output-tokens", maxText, min, true);
  return [min, max];
}

function parseFlags(argv: string[]) {
  return parseArgs({ args: argv, options: FLAGS, allowPositionals: false, strict: true }).values;
}

/** Parses and validates the flags; throws SimCliUsageError naming the bad flag. */
export function parseSimArgs(argv: string[]): ParsedSimArgs {
  let values: ReturnType<typeof parseFlags>;
  try {
    values = parseFlags(argv);
  } catch (err) {
    throw new SimCliUsageError(err instanceof Error ? err.message : String(err));
  }
  if (values.help === true) return { help: true };

  const options: Partial<SimOptions> = {};
  const faults: Partial<SimFaults> = {};
  if (values.host !== undefined) options.host = values.host;
  if (values.port !== undefined) options.port = number("port", values.port, 0, true, 65535);
  if (values.model !== undefined) options.models = values.model;
  if (values["load-time"] !== undefined) options.loadTimeMs = duration("load-time", values["load-time"]);
  const policy = values["scheduling-policy"];
  if (policy !== undefined) {
    if (policy !== "fcfs" && policy !== "priority")
      throw new Error("--scheduling-policy must be fcfs or priority");
    options.schedulingPolicy = policy;
  }
  if (values.seed !== undefined) options.seed = number("seed", values.seed, Number.MIN_SAFE_INTEGER, true);
  if (values.slots !== undefined) options.slots = number("slots", values.slots, 1, true);
  if (values["max-queue"] !== undefined) options.maxQueue = number("max-queue", values["max-queue"], 0, true);
  const ms = (
    flag:
      | "prefill-ms-per-token"
      | "decode-step-ms"
      | "decode-ms-per-seq"
      | "embed-call-ms"
      | "embed-per-input-ms",
  ) => {
    const text = values[flag];
    return text === undefined ? undefined : number(flag, text, 0, false);
  };
  const prefill = ms("prefill-ms-per-token");
  if (prefill !== undefined) options.prefillMsPerToken = prefill;
  const step = ms("decode-step-ms");
  if (step !== undefined) options.decodeStepMs = step;
  const perSeq = ms("decode-ms-per-seq");
  if (perSeq !== undefined) options.decodeMsPerSeq = perSeq;
  const call = ms("embed-call-ms");
  if (call !== undefined) options.embedCallMs = call;
  const perInput = ms("embed-per-input-ms");
  if (perInput !== undefined) options.embedPerInputMs = perInput;
  if (values["embed-slots"] !== undefined)
    options.embedSlots = number("embed-slots", values["embed-slots"], 1, true);
  if (values["time-scale"] !== undefined)
    options.timeScale = number("time-scale", values["time-scale"], 0, false);
  if (values["output-tokens"] !== undefined) {
    [options.outputTokensMin, options.outputTokensMax] = outputRange(values["output-tokens"]);
  }
  if (values["kv-cache-tokens"] !== undefined) {
    options.kvCacheTokens = number("kv-cache-tokens", values["kv-cache-tokens"], 1, true);
  }
  if (values["prefix-cache-blocks"] !== undefined) {
    options.prefixCacheBlocks = number("prefix-cache-blocks", values["prefix-cache-blocks"], 0, true);
  }
  if (values["prefix-block-chars"] !== undefined) {
    options.prefixBlockChars = number("prefix-block-chars", values["prefix-block-chars"], 1, true);
  }
  if (values["error-rate"] !== undefined)
    faults.errorRate = number("error-rate", values["error-rate"], 0, false, 1);
  if (values["error-status"] !== undefined) {
    faults.errorStatus = number("error-status", values["error-status"], 400, true, 599);
  }
  if (values["retry-after"] !== undefined)
    faults.errorRetryAfterS = number("retry-after", values["retry-after"], 0, false);
  if (values.latency !== undefined) faults.latencyMs = duration("latency", values.latency);
  if (values.hang === true) faults.hang = true;
  if (values["drop-after"] !== undefined) {
    faults.dropMidStreamAfterTokens = number("drop-after", values["drop-after"], 0, true);
  }
  if (values.refuse === true) faults.refuseConnections = true;
  if (values.reset === true) faults.resetConnections = true;
  if (values["slow-start"] !== undefined) faults.slowStartMs = duration("slow-start", values["slow-start"]);
  if (values.unhealthy === true) faults.unhealthy = true;
  options.faults = faults;

  // Cross-field checks (e.g. --output-tokens against defaults) surface as usage errors too.
  try {
    resolveSimOptions(options);
  } catch (err) {
    throw new SimCliUsageError(err instanceof Error ? err.message : String(err));
  }
  return { help: false, options };
}

export async function runSimCli(
  argv: string[],
  print: (line: string) => void = (line) => console.log(line),
): Promise<SimServer> {
  let parsed: ParsedSimArgs;
  try {
    parsed = parseSimArgs(argv);
  } catch (err) {
    if (!(err instanceof SimCliUsageError)) throw err;
    process.stderr.write(`floodgate sim: ${err.message}\nRun "floodgate sim --help" for the flags.\n`);
    process.exit(2);
  }
  if (parsed.help) {
    process.stdout.write(SIM_USAGE);
    process.exit(0);
  }
  const sim = await startSim(parsed.options);
  const o = sim.options;
  print(
    `floodgate sim listening on ${sim.url} (models: ${o.models.join(", ")}; slots ${o.slots}, ` +
      `queue ${o.maxQueue}, time scale ${o.timeScale}; embeddings ${o.embedCallMs} ms/call + ` +
      `${o.embedPerInputMs} ms/input, ${o.embedSlots} at once` +
      (o.prefixCacheBlocks > 0
        ? `, prefix cache ${o.prefixCacheBlocks} blocks of ${o.prefixBlockChars} chars)`
        : ")"),
  );
  return sim;
}
