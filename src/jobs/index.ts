/**
 * The jobs queue: in memory (one replica, the embedded default: jobs are lost on restart) or on
 * the store's Redis (shared by the replicas: any one answers a poll, none loses a job by dying),
 * chosen by the `store` section as the store itself is (src/store/index.ts).
 */
import type { GatewayConfig } from "../config/schema.js";
import type { CallTally } from "../store/redis-calls.js";
import { MemoryJobQueue } from "./memory-queue.js";
import { createRedisJobQueue } from "./redis-queue.js";
import type { JobQueue } from "./types.js";

export { MemoryJobQueue, type MemoryJobQueueOptions } from "./memory-queue.js";
export { createRedisJobQueue, RedisJobQueue, type RedisJobQueueOptions } from "./redis-queue.js";
export type {
  GroupCounts,
  JobQueue,
  JobRecord,
  JobRequest,
  JobResult,
  JobState,
  NewJob,
} from "./types.js";

export interface JobQueueOptions {
  /** Redis: the queue's name, its keys' hash tag (queues of different names share nothing); default "jobs". */
  name?: string;
  /** How long the record of a job that ended `expired` is kept, ms; default 24 h. */
  expiredTtlMs?: number;
  /** Redis connection errors, for logging. */
  onError?: (error: Error) => void;
  /** Redis: counts the round trips per operation (floodgate_store_calls_total). */
  tally?: CallTally;
}

export function createJobQueue(storeConfig: GatewayConfig["store"], options: JobQueueOptions = {}): JobQueue {
  if (storeConfig.type === "redis") return createRedisJobQueue(storeConfig, options);
  return new MemoryJobQueue(options.expiredTtlMs === undefined ? {} : { expiredTtlMs: options.expiredTtlMs });
}
