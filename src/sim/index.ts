export {
  countInputTokens,
  countPromptTokens,
  countTokens,
  IMAGE_PART_TOKENS,
  MESSAGE_OVERHEAD_TOKENS,
  NAME_OVERHEAD_TOKENS,
  REPLY_PRIMING_TOKENS,
  tokenize,
} from "../tokens/tokenizer.js";
export type { BatchTiming, SequenceHandle, SequenceSpec } from "./batch-scheduler.js";
export { BatchScheduler, stepDurationMs } from "./batch-scheduler.js";
export type { ParsedSimArgs } from "./cli.js";
export { parseSimArgs, runSimCli, SIM_USAGE, SimCliUsageError } from "./cli.js";
export { parseDurationMs } from "./duration.js";
export { defaultSimFaults, parseFaults } from "./faults.js";
export { resolveSimOptions } from "./options.js";
export type { PrefixLookup } from "./prefix-cache.js";
export { blockHash, blockHashes, cachedPromptTokens, PrefixCache } from "./prefix-cache.js";
export type { SimAbortEvent, SimFaults, SimOptions, SimServer, SimStats } from "./server.js";
export { defaultSimOptions, startSim } from "./server.js";
