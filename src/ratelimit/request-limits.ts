/**
 * Request-count limits, by client IP, API key, tenant, model or for everyone, on token buckets
 * in the shared store. Every limit that applies to a request is taken in one store call
 * (Store.takeAll: one Lua script on Redis), all of them or none, with the request's token
 * reservation beside them when the request-limits stage asks; one set of headers (the tightest
 * limit's) and one 429 answer for all of them.
 *
 * Evaluated here, on the bucket, rather than through @fastify/rate-limit, which floodgate used
 * before: floodgate supplied its keys, its store and its headers and 429, so the plugin only
 * added its own bookkeeping, and its store protocol (one `incr` per limit) cannot take all of a
 * request's limits in one store call. Measured with bench/limits/run.mjs (two limits per request,
 * memory store, 100,000 calls × 5 rounds, CPU per request, median round): one store call per
 * limit with a promise each, 15.6-16.7 µs; one takeAll, decided without a promise, with the
 * takes built once per limit and key, 2.3-2.5 µs.
 */
import type { GatewayConfig, RateSpecConfig, StoreErrorPolicyConfig } from "../config/index.js";
import { formatRate } from "../config/units.js";
import { errors } from "../errors.js";
import type { BucketResult, BucketSpec } from "../store/types.js";
import type { GuardedStore, GuardedTake, GuardedTakeAll } from "./guarded-store.js";
import { type LimitState, requestHeaders } from "./headers.js";

export type LimitBy = "ip" | "key" | "tenant" | "model" | "global";

export interface LimitDef {
  /** Metric label and key part: the configured name, or the tenant setting's YAML path. */
  name: string;
  by: LimitBy;
  burst: number;
  ratePerSec: number;
  /** The limit as configured, for messages: "5/s (burst 10)". */
  summary: string;
  policy: StoreErrorPolicyConfig;
  models?: ReadonlySet<string>;
  allowList: readonly string[];
}

export interface LimitEvents {
  decided?(limit: string, tenant: string, allowed: boolean): void;
}

/** What a limit counts by, as the request path knows it. */
export interface LimitSubject {
  ip: string;
  tenant: string | undefined;
  keyId: string | undefined;
  model: string | undefined;
}

interface BoundLimit {
  def: LimitDef;
  allow: ReadonlySet<string> | undefined;
  /** The bucket key's first part: `rl:<name>:`. */
  prefix: string;
  /** String(burst), for the headers. */
  limitText: string;
  /** The take of every request, when the key is the same for all (by tenant, global). */
  fixed: LimitTake | undefined;
  /** Takes by key (by IP, API key, model), built once per key; emptied past KEYED_MAX entries. */
  keyed: Map<string, LimitTake>;
}

/** A limit's take of one token, built once per limit and key (see BoundLimit). */
interface LimitTake extends GuardedTake {
  bound: BoundLimit;
}

/** What the token reservation taken beside the limits came to (see RequestLimits.check). */
export interface BesideOutcome {
  result: BucketResult;
  /** The tokens were taken (they fitted and every limit let the request through). */
  taken: boolean;
  /** The store could not answer and the reservation's policy is closed: its stage refuses. */
  undecided: boolean;
}

export interface LimitCheck {
  /** The tightest limit's state, for the response headers (and its limit as text). */
  state: LimitState | undefined;
  limitText: string;
  /** The reservation taken in the same call, when one was asked for and some limit applied. */
  beside: BesideOutcome | undefined;
}

/** Keys remembered per limit (their take objects): past it the map starts afresh. */
const KEYED_MAX = 4096;

const NO_LIMIT: LimitCheck = { state: undefined, limitText: "", beside: undefined };

export function bucketFor(def: LimitDef, key: string): BucketSpec {
  return { key: `rl:${def.name}:${key}`, ratePerSec: def.ratePerSec, burst: def.burst };
}

function defFromSpec(
  name: string,
  by: LimitBy,
  spec: RateSpecConfig,
  policy: StoreErrorPolicyConfig,
  extra: Partial<LimitDef> = {},
): LimitDef {
  const burst = spec.burst ?? spec.rate;
  return {
    name,
    by,
    burst,
    ratePerSec: (spec.rate * 1000) / spec.per,
    summary: formatRate(spec.rate, spec.per, burst),
    policy,
    allowList: [],
    ...extra,
  };
}

/**
 * Every limit that applies to a request, taken in one store call (Store.takeAll: all of them or
 * none, so a refused request takes nothing), with the request's token reservation beside them
 * when the stage asks (src/stages/request-limits.ts). What does not change between requests is
 * built once per config: the list of limits per tenant, each limit's take for a fixed key (by
 * tenant, global) or per key seen (by IP, API key, model).
 */
export class RequestLimits {
  private readonly global: BoundLimit[] = [];
  /** Global limits with a `models` filter: checked per request. */
  private readonly anyModelFiltered: boolean;
  /** Per tenant: the global limits, then the tenant's (the order of the checks). */
  private readonly perTenant = new Map<string, BoundLimit[]>();
  private readonly tenantOnly = new Map<string, BoundLimit[]>();

  constructor(
    config: GatewayConfig,
    private readonly guard: GuardedStore,
    private readonly events: LimitEvents = {},
  ) {
    const bind = (def: LimitDef, fixedKey: string | undefined): BoundLimit => {
      const bound: BoundLimit = {
        def,
        allow: def.allowList.length > 0 ? new Set(def.allowList) : undefined,
        prefix: `rl:${def.name}:`,
        limitText: String(def.burst),
        fixed: undefined,
        keyed: new Map(),
      };
      if (fixedKey !== undefined && !bound.allow?.has(fixedKey)) bound.fixed = takeOf(bound, fixedKey);
      return bound;
    };
    for (const l of config.rateLimits) {
      const models = l.models ? new Set(l.models) : undefined;
      const def = defFromSpec(l.name, l.by, l, l.onStoreError, { models, allowList: l.allowList });
      this.global.push(bind(def, l.by === "global" ? "all" : undefined));
    }
    this.anyModelFiltered = this.global.some((l) => l.def.models !== undefined);
    for (const [tenant, settings] of Object.entries(config.tenants)) {
      const requests = settings.limits.requests;
      if (!requests) continue;
      const specs = Array.isArray(requests) ? requests : [requests];
      const own = specs.map((spec, i) =>
        bind(defFromSpec(`tenant.requests[${i}]`, "tenant", spec, settings.limits.onStoreError), tenant),
      );
      this.tenantOnly.set(tenant, own);
      this.perTenant.set(tenant, [...this.global, ...own]);
    }
  }

  get enabled(): boolean {
    return this.global.length > 0 || this.perTenant.size > 0;
  }

  /**
   * Counts the request against every limit that applies, in one store call, with `beside` (a
   * token reservation, optional: taken only if it fits and the limits let the request through)
   * when some limit applies. Throws the 429 when a limit is exceeded (nothing is taken then);
   * otherwise returns the state of the tightest limit, for the response headers, and what came
   * of the reservation. Without a promise when the store decides at once (memory).
   */
  check(subject: LimitSubject, beside?: GuardedTake): LimitCheck | Promise<LimitCheck> {
    const takes = this.takesFor(subject);
    if (takes.length === 0) return NO_LIMIT;
    const limits = takes.length;
    if (beside !== undefined) takes.push(beside);
    const decided = this.guard.takeAll(takes);
    if (decided instanceof Promise) return decided.then((d) => this.decide(d, takes, limits, subject));
    return this.decide(decided, takes, limits, subject);
  }

  /** The takes of the limits that apply, in order: global ones, then the tenant's. */
  private takesFor(subject: LimitSubject): GuardedTake[] {
    const takes: GuardedTake[] = [];
    const tenant = subject.tenant;
    const own = tenant === undefined || tenant === "" ? undefined : this.perTenant.get(tenant);
    if (this.anyModelFiltered) {
      const model = subject.model;
      for (const l of this.global) {
        const models = l.def.models;
        if (models === undefined || (model !== undefined && models.has(model))) this.push(takes, l, subject);
      }
      const tenantOnly = own === undefined || tenant === undefined ? undefined : this.tenantOnly.get(tenant);
      if (tenantOnly !== undefined) for (const l of tenantOnly) this.push(takes, l, subject);
      return takes;
    }
    for (const l of own ?? this.global) this.push(takes, l, subject);
    return takes;
  }

  private push(takes: GuardedTake[], l: BoundLimit, subject: LimitSubject): void {
    if (l.fixed !== undefined) {
      takes.push(l.fixed);
      return;
    }
    const key = limitKey(l.def.by, subject);
    let take = l.keyed.get(key);
    if (take === undefined) {
      if (l.allow?.has(key)) return; // on its allow-list: not counted
      if (l.keyed.size >= KEYED_MAX) l.keyed.clear();
      take = takeOf(l, key);
      l.keyed.set(key, take);
    }
    takes.push(take);
  }

  private decide(d: GuardedTakeAll, takes: GuardedTake[], limits: number, subject: LimitSubject): LimitCheck {
    const tenant = subject.tenant ?? "";
    const decided = this.events.decided;
    let tightest: LimitState | undefined;
    let tightestText = "";
    let exceeded: LimitDef | undefined;
    let exceededTtl = 0;
    let exceededFull = 0;
    for (let i = 0; i < limits; i++) {
      const def = (takes[i] as LimitTake).bound.def;
      const r = d.results[i] as BucketResult;
      decided?.(def.name, tenant, r.allowed);
      if (!r.allowed) {
        if (exceeded === undefined || r.msToNext > exceededTtl) {
          exceeded = def;
          exceededTtl = r.msToNext;
          exceededFull = r.msToFull;
        }
        continue;
      }
      const remaining = Math.floor(Math.max(0, r.remaining));
      if (tightest === undefined || remaining / def.burst < tightest.remaining / tightest.limit) {
        tightest = { limit: def.burst, remaining, resetMs: r.msToFull };
        tightestText = (takes[i] as LimitTake).bound.limitText;
      }
    }
    if (exceeded !== undefined) {
      // The refusal carries the same x-ratelimit-*-requests family as an answer, for the limit
      // that refused: a client pacing itself by those headers sees the limit it hit.
      throw errors
        .rateLimited(
          "requests",
          `${exceeded.summary}; limit ${exceeded.name}, by ${exceeded.by}`,
          Math.max(1, exceededTtl),
        )
        .withHeaders(requestHeaders({ limit: exceeded.burst, remaining: 0, resetMs: exceededFull }));
    }
    let beside: BesideOutcome | undefined;
    if (takes.length > limits) {
      const result = d.results[limits] as BucketResult;
      beside = { result, taken: d.taken && result.allowed, undecided: d.undecided?.[limits] === true };
    }
    return { state: tightest, limitText: tightestText, beside };
  }
}

function takeOf(bound: BoundLimit, key: string): LimitTake {
  const { def } = bound;
  return {
    spec: { key: bound.prefix + key, ratePerSec: def.ratePerSec, burst: def.burst },
    cost: 1,
    limit: def.name,
    policy: def.policy,
    bound,
  };
}

/** What a limit counts by. Keys are never stored in clear: the key id is part of a digest. */
export function limitKey(by: LimitBy, subject: LimitSubject): string {
  switch (by) {
    case "ip":
      return subject.ip;
    case "key":
      return subject.keyId ?? "anonymous";
    case "tenant":
      return subject.tenant ?? "anonymous";
    case "model":
      return subject.model ?? "";
    case "global":
      return "all";
  }
}
