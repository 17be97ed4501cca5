/**
 * The shared store as the limits use it: when Redis fails, each limit's `onStoreError` decides
 * (open: allow; closed: refuse with a 503; local: keep enforcing in process at limit ÷ replicas,
 * so N replicas together still admit about the limit). A small breaker stops paying the command
 * timeout on every request while Redis is down: after `failures` errors in a row, Redis is
 * skipped for `resetTimeout`, then one call probes it, and its success resumes Redis-backed
 * limiting at once.
 */
import type { StoreErrorPolicyConfig } from "../config/index.js";
import { errors } from "../errors.js";
import type { BucketResult, BucketSpec, LeaseResult, Store } from "../store/types.js";
import { StoreUnavailableError } from "../store/types.js";

export type DecisionSource = "store" | "local" | "open";

export interface GuardedResult extends BucketResult {
  source: DecisionSource;
}

export interface GuardSettings {
  replicas: number;
  failures: number;
  resetTimeout: number;
}

export interface GuardEvents {
  storeError?(operation: string): void;
  /** A decision made without the shared store, by the limit's policy. */
  withoutStore?(limit: string, policy: StoreErrorPolicyConfig): void;
}

export class GuardedStore {
  private failures = 0;
  private skipUntil = 0;
  private probing = false;

  constructor(
    readonly primary: Store,
    private readonly local: Store,
    private readonly settings: GuardSettings,
    private readonly events: GuardEvents = {},
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** True while Redis is being skipped (for /admin/status and tests). */
  get degraded(): boolean {
    return this.failures >= this.settings.failures;
  }

  take(
    spec: BucketSpec,
    cost: number,
    limit: string,
    policy: StoreErrorPolicyConfig,
  ): Promise<GuardedResult> {
    return this.run(
      "take",
      limit,
      policy,
      (s) => s.take(spec, cost),
      (s) => s.take(this.localSpec(spec), cost),
      () => ({ allowed: true, remaining: spec.burst, msToNext: 0, msToFull: 0 }),
    );
  }

  adjust(
    spec: BucketSpec,
    delta: number,
    limit: string,
    policy: StoreErrorPolicyConfig,
  ): Promise<GuardedResult> {
    return this.run(
      "adjust",
      limit,
      policy,
      (s) => s.adjust(spec, delta),
      (s) => s.adjust(this.localSpec(spec), delta),
      () => ({ allowed: true, remaining: spec.burst, msToNext: 0, msToFull: 0 }),
    );
  }

  async acquireLease(
    key: string,
    id: string,
    max: number,
    ttlMs: number,
    limit: string,
    policy: StoreErrorPolicyConfig,
  ): Promise<LeaseResult & { source: DecisionSource }> {
    const localMax = Math.max(1, Math.floor(max / this.settings.replicas));
    return this.run(
      "lease",
      limit,
      policy,
      (s) => s.acquireLease(key, id, max, ttlMs),
      (s) => s.acquireLease(key, id, localMax, ttlMs),
      () => ({ acquired: true, held: 0 }),
    );
  }

  /** Renewal and release go wherever the lease was taken; failures there are only logged. */
  async renewLease(source: DecisionSource, key: string, id: string, ttlMs: number): Promise<void> {
    if (source === "open") return;
    const store = source === "local" ? this.local : this.primary;
    await store.renewLease(key, id, ttlMs).catch(() => this.events.storeError?.("renew"));
  }

  async releaseLease(source: DecisionSource, key: string, id: string): Promise<void> {
    if (source === "open") return;
    const store = source === "local" ? this.local : this.primary;
    await store.releaseLease(key, id).catch(() => this.events.storeError?.("release"));
  }

  async close(): Promise<void> {
    await Promise.all([this.primary.close(), this.local === this.primary ? undefined : this.local.close()]);
  }

  private localSpec(spec: BucketSpec): BucketSpec {
    const n = this.settings.replicas;
    return { key: spec.key, ratePerSec: spec.ratePerSec / n, burst: spec.burst / n };
  }

  private async run<T>(
    operation: string,
    limit: string,
    policy: StoreErrorPolicyConfig,
    shared: (s: Store) => Promise<T>,
    local: (s: Store) => Promise<T>,
    open: () => T,
  ): Promise<T & { source: DecisionSource }> {
    if (this.usable()) {
      try {
        const value = await shared(this.primary);
        this.failures = 0;
        this.probing = false;
        return { ...value, source: "store" };
      } catch (err) {
        if (!(err instanceof StoreUnavailableError)) throw err;
        this.events.storeError?.(operation);
        this.probing = false;
        if (++this.failures >= this.settings.failures)
          this.skipUntil = this.now() + this.settings.resetTimeout;
      }
    }
    this.events.withoutStore?.(limit, policy);
    switch (policy) {
      case "open":
        return { ...open(), source: "open" };
      case "closed":
        throw errors.limiterUnavailable();
      case "local":
        return { ...(await local(this.local)), source: "local" };
    }
  }

  /** Redis is tried unless the breaker is open; once its time is up, one call probes it. */
  private usable(): boolean {
    if (this.failures < this.settings.failures) return true;
    if (this.probing || this.now() < this.skipUntil) return false;
    this.probing = true;
    return true;
  }
}
