/** The store: memory (one replica, the embedded default) or Redis (shared between replicas). */
import type { GatewayConfig } from "../config/schema.js";
import { MemoryStore } from "./memory-store.js";
import type { CallTally } from "./redis-calls.js";
import { createRedisStore } from "./redis-store.js";
import type { Store } from "./types.js";

export { applyBucket, type BucketOp, type BucketState, type BucketStep } from "./bucket.js";
export { MemoryStore, type MemoryStoreOptions } from "./memory-store.js";
export { createRedisStore, RedisStore, type RedisStoreOptions } from "./redis-store.js";
export {
  type BucketResult,
  type BucketSpec,
  type LeaseResult,
  type Store,
  StoreUnavailableError,
} from "./types.js";

export function createStore(
  config: GatewayConfig["store"],
  options: { onError?: (error: Error) => void; tally?: CallTally } = {},
): Store {
  return config.type === "redis" ? createRedisStore(config, options) : new MemoryStore();
}
