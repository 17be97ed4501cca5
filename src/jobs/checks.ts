/**
 * Argument checks shared by MemoryJobQueue and RedisJobQueue, so that both refuse the same
 * calls with the same RangeError (a programming error, not a store failure) before touching
 * any state.
 */
import type { NewJob } from "./types.js";

/** A whole number ≥ min. */
export function checkCount(what: string, value: number, min = 0): void {
  if (!(Number.isInteger(value) && value >= min)) {
    throw new RangeError(`${what} must be a whole number ≥ ${min}, got ${value}`);
  }
}

/** A duration or epoch time: a finite number > 0 (ms). */
export function checkMs(what: string, value: number): void {
  if (!(Number.isFinite(value) && value > 0)) {
    throw new RangeError(`${what} must be a finite number of ms > 0, got ${value}`);
  }
}

/**
 * The jobs of one enqueue: one tenant (the cap is that tenant's), distinct ids, sane times and
 * line numbers. Returns the tenant ("" for no jobs).
 */
export function checkNewJobs(jobs: readonly NewJob[], cap: number): string {
  checkCount("enqueue: cap", cap);
  const tenant = jobs[0]?.tenant ?? "";
  const ids = new Set<string>();
  for (const job of jobs) {
    if (job.id === "") throw new RangeError("enqueue: a job id must not be empty");
    if (ids.has(job.id)) throw new RangeError(`enqueue: job id ${job.id} appears twice`);
    ids.add(job.id);
    if (job.tenant !== tenant) {
      throw new RangeError(`enqueue: the jobs of one call share one tenant (${tenant}, then ${job.tenant})`);
    }
    if (job.runAt !== undefined && !Number.isFinite(job.runAt)) {
      throw new RangeError(`enqueue: job ${job.id} runAt must be finite, got ${job.runAt}`);
    }
    if (job.expiresAt !== undefined && !Number.isFinite(job.expiresAt)) {
      throw new RangeError(`enqueue: job ${job.id} expiresAt must be finite, got ${job.expiresAt}`);
    }
    if (job.seq !== undefined) checkCount(`enqueue: job ${job.id} seq`, job.seq);
    if ((job.group === undefined) !== (jobs[0]?.group === undefined)) {
      throw new RangeError(
        "enqueue: the jobs of one call are all lines of groups or none (they are counted apart)",
      );
    }
    if (job.seq !== undefined && job.group === undefined) {
      throw new RangeError(`enqueue: job ${job.id} has a seq but no group`);
    }
  }
  return tenant;
}

/**
 * What a tenant's cap counts: its own jobs (async requests), or its batch lines, counted apart
 * so that a large batch never fills the cap of the tenant's async requests. Redis keeps the same
 * keys (ENQUEUE_LUA's `counted`).
 */
export function countKey(tenant: string, group: string | undefined): string {
  return group === undefined || group === "" ? tenant : `${tenant}\0lines`;
}
