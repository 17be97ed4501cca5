/**
 * The embedded store: one replica's buckets and leases in process memory.
 *
 * Buckets run applyBucket (bucket.ts: the same arithmetic as the Redis Lua) on a monotonic
 * clock, so wall-clock jumps (NTP, DST) neither refill nor drain anything. A bucket idle for
 * `expireMs` is full again, so it is forgotten: lazily when touched, and by an unref'd sweep
 * timer, which bounds memory to the buckets used within about their refill time.
 *
 * Leases: key → (id → expiresAt); expiresAt ≤ now has expired, as in the Redis zset script.
 */
import { applyBucket, type BucketOp, type BucketState, checkAmount, checkBucketSpec } from "./bucket.js";
import type { BucketResult, BucketSpec, LeaseResult, Store } from "./types.js";

export interface MemoryStoreOptions {
  /** Monotonic ms clock; tests inject a fake one. Default performance.now. */
  now?: () => number;
  /** How often expired buckets and leases are swept; default 10 s. 0 turns the timer off. */
  sweepIntervalMs?: number;
}

interface StoredBucket extends BucketState {
  expiresAt: number;
}

export class MemoryStore implements Store {
  readonly kind = "memory" as const;
  private readonly buckets = new Map<string, StoredBucket>();
  private readonly leases = new Map<string, Map<string, number>>();
  private readonly now: () => number;
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(options: MemoryStoreOptions = {}) {
    this.now = options.now ?? (() => performance.now());
    const every = options.sweepIntervalMs ?? 10_000;
    if (every > 0) {
      this.timer = setInterval(() => this.sweep(), every);
      // Sweeping is housekeeping: it must not keep a finished process alive.
      this.timer.unref();
    }
  }

  async take(spec: BucketSpec, cost: number): Promise<BucketResult> {
    checkAmount("cost", cost);
    return this.apply(spec, "take", cost);
  }

  async adjust(spec: BucketSpec, delta: number): Promise<BucketResult> {
    checkAmount("delta", delta);
    return this.apply(spec, "adjust", delta);
  }

  async acquireLease(key: string, id: string, limit: number, ttlMs: number): Promise<LeaseResult> {
    checkAmount("ttlMs", ttlMs);
    const now = this.now();
    let held = this.leases.get(key);
    if (held === undefined) {
      held = new Map();
      this.leases.set(key, held);
    }
    dropExpired(held, now);
    // Re-acquiring a lease already held renews it (the Redis script does the same).
    const acquired = held.has(id) || held.size < limit;
    if (acquired) held.set(id, now + ttlMs);
    const count = held.size;
    if (count === 0) this.leases.delete(key);
    return { acquired, held: count };
  }

  async renewLease(key: string, id: string, ttlMs: number): Promise<boolean> {
    checkAmount("ttlMs", ttlMs);
    const held = this.leases.get(key);
    if (held === undefined) return false;
    const now = this.now();
    dropExpired(held, now);
    const alive = held.has(id);
    if (alive) held.set(id, now + ttlMs);
    if (held.size === 0) this.leases.delete(key);
    return alive;
  }

  async releaseLease(key: string, id: string): Promise<void> {
    const held = this.leases.get(key);
    if (held === undefined) return;
    held.delete(id);
    if (held.size === 0) this.leases.delete(key);
  }

  async clear(logicalPrefix: string): Promise<void> {
    for (const key of this.buckets.keys()) if (key.startsWith(logicalPrefix)) this.buckets.delete(key);
    for (const key of this.leases.keys()) if (key.startsWith(logicalPrefix)) this.leases.delete(key);
  }

  async close(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer);
  }

  /** Entries held now (buckets + lease sets), for tests of the memory bound. */
  size(): { buckets: number; leaseKeys: number } {
    return { buckets: this.buckets.size, leaseKeys: this.leases.size };
  }

  /** Forgets expired buckets and leases; the timer calls it, tests may too. */
  sweep(): void {
    const now = this.now();
    for (const [key, bucket] of this.buckets) if (bucket.expiresAt <= now) this.buckets.delete(key);
    for (const [key, held] of this.leases) {
      dropExpired(held, now);
      if (held.size === 0) this.leases.delete(key);
    }
  }

  private apply(spec: BucketSpec, op: BucketOp, amount: number): BucketResult {
    checkBucketSpec(spec);
    const now = this.now();
    let saved: StoredBucket | undefined = this.buckets.get(spec.key);
    // An expired bucket is full by construction; starting afresh gives the same answer (as PEXPIRE).
    if (saved !== undefined && saved.expiresAt <= now) saved = undefined;
    const step = applyBucket(saved, op, amount, spec.ratePerSec, spec.burst, now);
    this.buckets.set(spec.key, { ...step.state, expiresAt: now + step.expireMs });
    return step.result;
  }
}

function dropExpired(held: Map<string, number>, now: number): void {
  for (const [id, expiresAt] of held) if (expiresAt <= now) held.delete(id);
}
