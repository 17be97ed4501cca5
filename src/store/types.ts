/**
 * Shared state between replicas. `memory` serves one replica (the embedded default); `redis`
 * (a server, Sentinel or Cluster) makes several replicas enforce one limit as one gateway.
 * Every method either answers or rejects with StoreUnavailableError within the store's command
 * timeout: a dead Redis never hangs a request (the caller decides what that means).
 */

/** A token bucket: `burst` tokens at most, refilled at `ratePerSec` tokens per second. */
export interface BucketSpec {
  /** Logical key, e.g. "rl:requests:tenant:team-a"; the store adds its prefix and hash tag. */
  key: string;
  ratePerSec: number;
  burst: number;
}

export interface BucketResult {
  allowed: boolean;
  /** Tokens left after this call (fractional; negative after a forced charge: a debt). */
  remaining: number;
  /** ms until `cost` tokens will be available (0 when allowed now; for cost ≤ 0, until 1 token). */
  msToNext: number;
  /** ms until the bucket is full again. */
  msToFull: number;
}

/** One bucket's part in a call on several (Store.takeAll). */
export interface BucketTake {
  spec: BucketSpec;
  cost: number;
  /**
   * Taken only if it fits and every required take of the call is taken; its own refusal
   * refuses nothing else (a token reservation beside the request limits).
   */
  optional?: boolean;
}

export interface TakeAllResult {
  /** Every required take fitted, so each was taken (and each optional one that fitted). */
  taken: boolean;
  /** Per take, in order; `allowed`: that bucket alone had the tokens (taken or not). */
  results: BucketResult[];
}

export interface LeaseResult {
  acquired: boolean;
  /** Leases held after this call (including the new one when acquired). */
  held: number;
}

/** One replica's part in a pool's shared slots (src/upstream/fleet.ts). */
export interface FleetState {
  /** Requests waiting, per band (interactive, batch, background). */
  d: number[];
  /** Per backend: [claim (wanted, or as recorded), requests in flight]. */
  b: Record<string, [number, number]>;
}

export interface FleetReply {
  /** The claim granted per backend (never more than the room the other live claims leave). */
  granted: Record<string, number>;
  /** The other live replicas' states, as recorded. */
  others: FleetState[];
}

export interface Store {
  readonly kind: "memory" | "redis";
  /** Takes `cost` tokens only if that many are there (cost 0: read without taking). */
  take(spec: BucketSpec, cost: number): Promise<BucketResult>;
  /**
   * Several buckets in one call (distinct keys): the required takes all or none, the optional
   * ones beside them (see bucket.ts, applyTakes). Atomic on one Redis server (which may decide
   * the calls of one event-loop turn in one script, each all or none); in a Cluster,
   * whose buckets sit on different nodes, one call per bucket, and what a refusal leaves taken
   * is given back.
   */
  takeAll(takes: readonly BucketTake[]): Promise<TakeAllResult>;
  /** takeAll decided at once, with no promise: the store in process memory offers it. */
  takeAllNow?(takes: readonly BucketTake[]): TakeAllResult;
  /**
   * Settles a reservation: delta > 0 charges more (even into debt: the tokens were used),
   * delta < 0 refunds (never above burst). Always applied.
   */
  adjust(spec: BucketSpec, delta: number): Promise<BucketResult>;
  /** One of at most `limit` concurrent leases under `key`, expiring after ttlMs unless renewed. */
  acquireLease(key: string, id: string, limit: number, ttlMs: number): Promise<LeaseResult>;
  /** Extends a held lease; false if it had expired (it is not re-created). */
  renewLease(key: string, id: string, ttlMs: number): Promise<boolean>;
  releaseLease(key: string, id: string): Promise<void>;
  /** A value with an expiry (ms); undefined when absent or expired. */
  getBlob(key: string): Promise<Buffer | undefined>;
  /** Stores `value` (binary-safe) for ttlMs (> 0), replacing any previous value and expiry. */
  setBlob(key: string, value: Buffer, ttlMs: number): Promise<void>;
  deleteBlob(key: string): Promise<void>;
  /**
   * A lock with expiry (SET NX PX): true when `owner` now holds it. Not reentrant: while the
   * lock is held, even by `owner`, the answer is false and the expiry is left alone. Locks and
   * blobs live in separate namespaces: a lock may take the same logical key as the blob it guards.
   */
  acquireLock(key: string, owner: string, ttlMs: number): Promise<boolean>;
  /** Releases only if `owner` still holds it (compare-and-delete, one Lua script). */
  releaseLock(key: string, owner: string): Promise<void>;
  /**
   * Deletes every blob whose logical key starts with `logicalPrefix` (never a bucket, lease or
   * lock); returns how many. Not atomic: a blob set while it runs may survive it.
   */
  deleteBlobsByPrefix(logicalPrefix: string): Promise<number>;
  /**
   * Shared backend slots (Redis only; one replica alone needs none): records this replica's
   * state under `key` for leaseMs and grants its claims within the slots (FLEET_SYNC_LUA).
   */
  syncFleet?(
    key: string,
    replica: string,
    state: FleetState,
    slots: Record<string, number>,
    leaseMs: number,
  ): Promise<FleetReply>;
  /** Deletes every key under the prefix that starts with `logicalPrefix` (tests, admin). */
  clear?(logicalPrefix: string): Promise<void>;
  /**
   * Resolves true once the store can answer (Redis: connected and past its ready check; a
   * Cluster: knowing its masters), or false after `timeoutMs` without that.
   */
  ready(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

/** The store could not answer in time (down, timed out, refused, cluster failover). */
export class StoreUnavailableError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = "StoreUnavailableError";
  }
}
