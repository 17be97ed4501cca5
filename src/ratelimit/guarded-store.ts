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
import type {
  BucketResult,
  BucketSpec,
  BucketTake,
  LeaseResult,
  Store,
  TakeAllResult,
} from "../store/types.js";
import { StoreUnavailableError } from "../store/types.js";

export type DecisionSource = "store" | "local" | "open";

export interface GuardedResult extends BucketResult {
  source: DecisionSource;
}

/** A take of Store.takeAll, with what decides it when the store cannot. */
export interface GuardedTake extends BucketTake {
  /** The limit's name, for the metrics of decisions made without the store. */
  limit: string;
  policy: StoreErrorPolicyConfig;
}

export interface GuardedTakeAll extends TakeAllResult {
  source: DecisionSource;
  /**
   * Per take, when the store could not answer and the take's policy is closed: an optional take
   * is left undecided (not taken) for its own stage to refuse, since the request may still be
   * answered without it (a cache hit spends no tokens). A required one refuses the whole call.
   */
  undecided: readonly boolean[] | undefined;
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

  /**
   * Store.takeAll, guarded: when the store fails, each take follows its own policy (open:
   * allowed; local: decided in process at limit ÷ replicas, the local takes together in one
   * call, all or none as on the store; closed: a required take refuses the call with the 503,
   * an optional one is left undecided). A store in process memory decides at once: no promise.
   */
  takeAll(takes: readonly GuardedTake[]): GuardedTakeAll | Promise<GuardedTakeAll> {
    const now = this.primary.takeAllNow;
    if (now !== undefined) {
      const r = now.call(this.primary, takes);
      return { taken: r.taken, results: r.results, source: "store", undecided: undefined };
    }
    return this.takeAllShared(takes);
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

  private async takeAllShared(takes: readonly GuardedTake[]): Promise<GuardedTakeAll> {
    if (this.usable()) {
      try {
        const r = await this.primary.takeAll(takes);
        this.succeeded();
        return { taken: r.taken, results: r.results, source: "store", undecided: undefined };
      } catch (err) {
        if (!(err instanceof StoreUnavailableError)) throw err;
        this.failed("take");
      }
    }
    return this.takeAllWithout(takes);
  }

  private async takeAllWithout(takes: readonly GuardedTake[]): Promise<GuardedTakeAll> {
    const local: BucketTake[] = [];
    for (const take of takes) {
      this.events.withoutStore?.(take.limit, take.policy);
      if (take.policy === "local") {
        const { spec, cost } = take;
        local.push(
          take.optional === true
            ? { spec: this.localSpec(spec), cost, optional: true }
            : { spec: this.localSpec(spec), cost },
        );
      } else if (take.policy === "closed" && take.optional !== true) {
        throw errors.limiterUnavailable();
      }
    }
    const decided = local.length > 0 ? await this.local.takeAll(local) : undefined;
    const results: BucketResult[] = [];
    let undecided: boolean[] | undefined;
    let next = 0;
    takes.forEach((take, i) => {
      if (take.policy === "local") {
        results.push(decided?.results[next++] as BucketResult);
        return;
      }
      if (take.policy === "closed") {
        undecided ??= takes.map(() => false);
        undecided[i] = true;
        results.push({ allowed: false, remaining: 0, msToNext: 0, msToFull: 0 });
        return;
      }
      results.push({ allowed: true, remaining: take.spec.burst, msToNext: 0, msToFull: 0 });
    });
    return {
      taken: decided?.taken ?? true,
      results,
      source: decided !== undefined ? "local" : "open",
      undecided,
    };
  }

  private succeeded(): void {
    this.failures = 0;
    this.probing = false;
  }

  private failed(operation: string): void {
    this.events.storeError?.(operation);
    this.probing = false;
    if (++this.failures >= this.settings.failures) this.skipUntil = this.now() + this.settings.resetTimeout;
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
        this.succeeded();
        return { ...value, source: "store" };
      } catch (err) {
        if (!(err instanceof StoreUnavailableError)) throw err;
        this.failed(operation);
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
