/**
 * Deferred work (issue: async requests and OpenAI batches): the jobs queue in the store.
 *
 * A job is one OpenAI request run later, on behalf of a tenant, by whichever replica claims it:
 * an async request (`Prefer: respond-async`) or one line of a batch. Claiming takes a lease that
 * the runner renews while the job runs; a replica that dies stops renewing, the lease lapses and
 * the next claim on any replica runs the job again (at-least-once: a re-run may spend the
 * tokens twice). A job's end (succeeded, failed, cancelled, expired) is written once, by the
 * lease holder (or by cancel): a stale holder's finish is refused, so the counts of a batch
 * count each line exactly once.
 *
 * Times are epoch milliseconds (the store's clock for Redis, Date.now() in memory): they cross
 * replicas.
 */

export type JobState = "queued" | "running" | "succeeded" | "failed" | "cancelled" | "expired";

/** The request a job makes, as a client would have sent it (always a POST on an OpenAI route). */
export interface JobRequest {
  /** The route, e.g. /v1/chat/completions. */
  url: string;
  /** The JSON body as text. */
  body: string;
}

/** What the synchronous call would have answered (a stream's answer as its final JSON). */
export interface JobResult {
  status: number;
  /** The answer's headers a client should see (content-type, x-request-id, ...). */
  headers: Record<string, string>;
  body: string;
}

export interface NewJob {
  id: string;
  /** The tenant id ("" when the gateway runs without API keys): only it may read the job. */
  tenant: string;
  request: JobRequest;
  /** A batch's id: the jobs of one group are counted, listed and cancelled together. */
  group?: string;
  /** The line number within the group (0-based): listing goes in this order. */
  seq?: number;
  /** The batch line's custom_id. */
  customId?: string;
  /** Not run before (epoch ms); now when absent. */
  runAt?: number;
  /** Unfinished at this time, it ends `expired` (a batch's completion window). */
  expiresAt?: number;
}

export interface JobRecord extends Required<Omit<NewJob, "group" | "seq" | "customId" | "expiresAt">> {
  group: string | undefined;
  seq: number | undefined;
  customId: string | undefined;
  expiresAt: number | undefined;
  state: JobState;
  createdAt: number;
  /** When the current or last run started. */
  startedAt: number | undefined;
  finishedAt: number | undefined;
  /** Runs started (a re-run after a lapsed lease counts again). */
  attempts: number;
  /** The answer, once succeeded or failed. */
  result: JobResult | undefined;
}

export interface GroupCounts {
  total: number;
  /** Ended succeeded. */
  completed: number;
  /** Ended failed (an error answer) or expired. */
  failed: number;
  cancelled: number;
  /** When the last of them ended (epoch ms), once any has. */
  lastFinishedAt: number | undefined;
}

export interface JobQueue {
  /**
   * Adds the jobs, all or none: none when the tenant would then have more than `cap`
   * unfinished jobs (queued or running). `unfinished`: the tenant's count after the call.
   */
  enqueue(jobs: readonly NewJob[], cap: number): Promise<{ accepted: boolean; unfinished: number }>;
  get(id: string): Promise<JobRecord | undefined>;
  /**
   * Up to `max` jobs due now (runAt passed, queued, or running with a lapsed lease), in runAt
   * order, each now running under `owner`'s lease for leaseMs. Jobs past expiresAt are ended
   * `expired` instead of being handed out.
   */
  claim(owner: string, leaseMs: number, max: number): Promise<JobRecord[]>;
  /** Extends the leases `owner` holds; returns the ids it no longer holds (cancelled, lapsed and taken). */
  renew(ids: readonly string[], owner: string, leaseMs: number): Promise<string[]>;
  /**
   * Ends a job `owner` holds with its answer; false (nothing written) when it no longer holds
   * it. The record is kept for ttlMs after.
   */
  finish(
    id: string,
    owner: string,
    state: "succeeded" | "failed",
    result: JobResult,
    ttlMs: number,
  ): Promise<boolean>;
  /** Gives a held job back to the queue, to run at runAt (refused for load, replica stopping). */
  release(id: string, owner: string, runAt: number): Promise<boolean>;
  /** Ends an unfinished job `cancelled` (a running one's holder learns it at its next renew). */
  cancel(id: string, ttlMs: number): Promise<JobRecord | undefined>;
  /** Cancels every unfinished job of the group; returns how many. */
  cancelGroup(group: string, ttlMs: number): Promise<number>;
  counts(group: string): Promise<GroupCounts>;
  /** The group's jobs from line `fromSeq` on, at most `limit`, in line order. */
  list(group: string, fromSeq: number, limit: number): Promise<JobRecord[]>;
  /** Jobs queued and due, all tenants (for the Retry-After estimate and the metrics). */
  depth(): Promise<number>;
  /**
   * Wakes when a job becomes due to run now on any replica (submitted, or given back to run
   * now): `onWake` on each, `onLive` when the subscription comes up (true) or goes down (false;
   * wakes sent meanwhile are lost). Absent on a queue only this process runs (memory).
   */
  subscribe?(onWake: () => void, onLive: (live: boolean) => void): JobWakes;
  /** Closes the queue's connections, its subscriptions' too. */
  close(): Promise<void>;
}

/** A subscription to a queue's wakes (JobQueue.subscribe). */
export interface JobWakes {
  /** Subscribed now: a job due anywhere wakes this replica. */
  readonly live: boolean;
  close(): Promise<void>;
}
