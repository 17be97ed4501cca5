/**
 * Options of one simulated inference server. The defaults sketch one mid-size model on one GPU
 * under vLLM: 16 concurrent sequences, ~15 ms per decode step, a 32k-token KV cache; and, for
 * /v1/embeddings, an encoder that runs one call at a time at 8 ms per call plus 0.5 ms per input
 * (see embedding-engine.ts).
 */

import { parseFaults, type SimFaults } from "./faults.js";

export interface SimOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Served model names; the first one labels the engine metrics, as vLLM does. */
  models: string[];
  /** Sequences decoded together (vLLM max_num_seqs). */
  slots: number;
  /** Requests allowed to wait for a slot; beyond it the server answers 503. */
  maxQueue: number;
  /** Prefill cost per prompt token: of chat and completion prompts, and of embeddings inputs. */
  prefillMsPerToken: number;
  decodeStepMs: number;
  decodeMsPerSeq: number;
  /** Embeddings calls computed at once; the others wait (up to maxQueue). */
  embedSlots: number;
  /** Fixed cost of one embeddings call, whatever its size: what merging small calls saves. */
  embedCallMs: number;
  /** Cost per input of an embeddings call (on top of its tokens' prefill). */
  embedPerInputMs: number;
  /** Multiplies prefill, decode and embeddings times (not faults or load time, which are wall-clock). */
  timeScale: number;
  /** Output length when the request sets no max_tokens: uniform in [min, max]. */
  outputTokensMin: number;
  outputTokensMax: number;
  /** KV-cache capacity in tokens; running prompts + generated tokens must fit. */
  kvCacheTokens: number;
  /** /health answers 503 for this long after start, as while a model loads. */
  loadTimeMs: number;
  seed: number;
  /**
   * fcfs, or priority: waiting requests in order of the request's `priority` field (lower first),
   * as vLLM's --scheduling-policy; under fcfs a request that sends `priority` gets 400, as vLLM.
   */
  schedulingPolicy: "fcfs" | "priority";
  /**
   * Prefix-cache capacity in blocks (vLLM's automatic prefix caching, see prefix-cache.ts); 0 turns
   * prefix caching off. Chat and completion prompts only: embeddings are always prefilled in full.
   */
  prefixCacheBlocks: number;
  /** Characters per prefix-cache block, cut from the prompt's canonical text. */
  prefixBlockChars: number;
  faults: Partial<SimFaults>;
}

export const defaultSimOptions: SimOptions = Object.freeze({
  host: "127.0.0.1",
  port: 0,
  models: ["sim-model"],
  slots: 16,
  maxQueue: 64,
  prefillMsPerToken: 0.1,
  decodeStepMs: 15,
  decodeMsPerSeq: 0.3,
  embedSlots: 1,
  embedCallMs: 8,
  embedPerInputMs: 0.5,
  timeScale: 1,
  outputTokensMin: 16,
  outputTokensMax: 256,
  kvCacheTokens: 32768,
  loadTimeMs: 0,
  seed: 1,
  schedulingPolicy: "fcfs",
  prefixCacheBlocks: 0,
  prefixBlockChars: 256,
  faults: {},
});

function requireNumber(name: string, value: number, min: number, integer: boolean): void {
  if (
    typeof value !== "number" ||
    !Number.isFinite(value) ||
    value < min ||
    (integer && !Number.isInteger(value))
  ) {
    const what = integer ? "an integer" : "a number";
    throw new RangeError(`sim option ${name} must be ${what} >= ${min}, got ${String(value)}`);
  }
}

/** Fills in defaults and rejects nonsense early, naming the option. */
export function resolveSimOptions(partial: Partial<SimOptions> = {}): SimOptions {
  const options: SimOptions = { ...defaultSimOptions, ...partial };
  if (partial.models === undefined) options.models = [...defaultSimOptions.models];
  if (typeof options.host !== "string" || options.host.length === 0) {
    throw new RangeError("sim option host must be a non-empty string");
  }
  requireNumber("port", options.port, 0, true);
  if (options.port > 65535) throw new RangeError(`sim option port must be <= 65535, got ${options.port}`);
  if (
    !Array.isArray(options.models) ||
    options.models.length === 0 ||
    options.models.some((m) => typeof m !== "string" || m.length === 0)
  ) {
    throw new RangeError("sim option models must be a non-empty list of model names");
  }
  requireNumber("slots", options.slots, 1, true);
  requireNumber("maxQueue", options.maxQueue, 0, true);
  requireNumber("prefillMsPerToken", options.prefillMsPerToken, 0, false);
  requireNumber("decodeStepMs", options.decodeStepMs, 0, false);
  requireNumber("decodeMsPerSeq", options.decodeMsPerSeq, 0, false);
  requireNumber("embedSlots", options.embedSlots, 1, true);
  requireNumber("embedCallMs", options.embedCallMs, 0, false);
  requireNumber("embedPerInputMs", options.embedPerInputMs, 0, false);
  requireNumber("timeScale", options.timeScale, 0, false);
  requireNumber("outputTokensMin", options.outputTokensMin, 1, true);
  requireNumber("outputTokensMax", options.outputTokensMax, options.outputTokensMin, true);
  requireNumber("kvCacheTokens", options.kvCacheTokens, 1, true);
  requireNumber("loadTimeMs", options.loadTimeMs, 0, false);
  requireNumber("seed", options.seed, Number.MIN_SAFE_INTEGER, true);
  if (options.schedulingPolicy !== "fcfs" && options.schedulingPolicy !== "priority") {
    throw new RangeError(
      `sim option schedulingPolicy must be fcfs or priority, got ${String(options.schedulingPolicy)}`,
    );
  }
  requireNumber("prefixCacheBlocks", options.prefixCacheBlocks, 0, true);
  requireNumber("prefixBlockChars", options.prefixBlockChars, 1, true);
  const faults = parseFaults(options.faults);
  if (!faults.ok) throw new RangeError(`sim option faults: ${faults.error}`);
  options.faults = faults.faults;
  return options;
}

/** True when the batching model has no cost: answers are produced synchronously, without timers. */
export function isInstant(options: SimOptions): boolean {
  return (
    options.timeScale === 0 ||
    (options.prefillMsPerToken === 0 && options.decodeStepMs === 0 && options.decodeMsPerSeq === 0)
  );
}

/** The same for embeddings calls: they cost nothing, so they are answered synchronously. */
export function isEmbedInstant(options: SimOptions): boolean {
  return (
    options.timeScale === 0 ||
    (options.embedCallMs === 0 && options.embedPerInputMs === 0 && options.prefillMsPerToken === 0)
  );
}
