/**
 * Request-count limits, by client IP, API key, tenant, model or for everyone, on token buckets
 * in the shared store. @fastify/rate-limit does the keying, the allow-lists and the store
 * protocol (its custom-store interface, through a store class closing over floodgate's store);
 * floodgate evaluates several limits per request with the plugin's createRateLimit() and writes
 * one set of headers and one 429 for all of them. (The plugin's own hook runs one limit per
 * request and would write one limit's headers over another's.)
 *
 * A bucket of `burst` tokens refilled at rate/per maps onto the plugin's (max, timeWindow) as
 * max = burst and timeWindow = the time to refill a full bucket, burst × per / rate.
 */
import rateLimitPlugin, {
  type FastifyRateLimitOptions,
  type FastifyRateLimitStore,
} from "@fastify/rate-limit";
import type { FastifyInstance, FastifyRequest } from "fastify";
import type { GatewayConfig, RateSpecConfig, StoreErrorPolicyConfig } from "../config/index.js";
import { errors } from "../errors.js";
import type { BucketSpec } from "../store/types.js";
import type { GuardedStore } from "./guarded-store.js";
import type { LimitState } from "./headers.js";

export type LimitBy = "ip" | "key" | "tenant" | "model" | "global";

export interface LimitDef {
  /** Metric label and key part: the configured name, or the tenant setting's YAML path. */
  name: string;
  by: LimitBy;
  burst: number;
  ratePerSec: number;
  policy: StoreErrorPolicyConfig;
  models?: ReadonlySet<string>;
  allowList: readonly string[];
}

export interface LimitEvents {
  decided?(limit: string, tenant: string, allowed: boolean): void;
}

type Limiter = ReturnType<FastifyInstance["createRateLimit"]>;

interface BoundLimit {
  def: LimitDef;
  run: Limiter;
}

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
  return { name, by, burst, ratePerSec: (spec.rate * 1000) / spec.per, policy, allowList: [], ...extra };
}

/** The store class @fastify/rate-limit instantiates; each child is bound to one limit. */
function storeClass(guard: GuardedStore) {
  return class FloodgateRateLimitStore implements FastifyRateLimitStore {
    private readonly def: LimitDef | undefined;

    constructor(params: FastifyRateLimitOptions) {
      this.def = (params as { floodgateLimit?: LimitDef }).floodgateLimit;
    }

    incr(
      key: string,
      callback: (error: Error | null, result?: { current: number; ttl: number }) => void,
    ): void {
      const def = this.def;
      if (!def) {
        callback(new Error("rate-limit store used without a floodgate limit"));
        return;
      }
      guard.take(bucketFor(def, key), 1, def.name, def.policy).then(
        (r) =>
          callback(null, {
            // The plugin reads remaining = max − current, and exceeded as current > max.
            current: r.allowed ? def.burst - Math.floor(Math.max(0, r.remaining)) : def.burst + 1,
            ttl: r.allowed ? r.msToFull : r.msToNext,
          }),
        (err: Error) => callback(err),
      );
    }

    child(params: FastifyRateLimitOptions): FastifyRateLimitStore {
      return new FloodgateRateLimitStore(params);
    }
  };
}

export class RequestLimits {
  private readonly global: BoundLimit[] = [];
  private readonly perTenant = new Map<string, BoundLimit[]>();

  private constructor(
    private readonly guard: GuardedStore,
    private readonly events: LimitEvents,
  ) {}

  /** Registers @fastify/rate-limit in `scope` and binds every configured limit. */
  static async register(
    scope: FastifyInstance,
    config: GatewayConfig,
    guard: GuardedStore,
    events: LimitEvents = {},
  ): Promise<RequestLimits> {
    await scope.register(rateLimitPlugin, { global: false, store: storeClass(guard) });
    const limits = new RequestLimits(guard, events);
    const bind = (def: LimitDef): BoundLimit => ({
      def,
      run: scope.createRateLimit({
        max: def.burst,
        timeWindow: Math.max(1, Math.round((def.burst / def.ratePerSec) * 1000)),
        keyGenerator: (request) => limitKey(def.by, request),
        allowList: [...def.allowList],
        floodgateLimit: def,
      } as Parameters<FastifyInstance["createRateLimit"]>[0]),
    });
    for (const l of config.rateLimits) {
      const models = l.models ? new Set(l.models) : undefined;
      limits.global.push(
        bind(defFromSpec(l.name, l.by, l, l.onStoreError, { models, allowList: l.allowList })),
      );
    }
    for (const [tenant, settings] of Object.entries(config.tenants)) {
      const requests = settings.limits.requests;
      if (!requests) continue;
      const specs = Array.isArray(requests) ? requests : [requests];
      limits.perTenant.set(
        tenant,
        specs.map((spec, i) =>
          bind(defFromSpec(`tenant.requests[${i}]`, "tenant", spec, settings.limits.onStoreError)),
        ),
      );
    }
    return limits;
  }

  get enabled(): boolean {
    return this.global.length > 0 || this.perTenant.size > 0;
  }

  /**
   * Counts the request against every limit that applies. Throws the 429 when one is exceeded
   * (and gives back what the others took: a refused request costs nothing); otherwise returns
   * the state of the tightest limit, for the response headers.
   */
  async check(request: FastifyRequest): Promise<LimitState | undefined> {
    const ctx = request.gw;
    const model = ctx.model;
    const applicable: BoundLimit[] = [];
    for (const l of this.global)
      if (!l.def.models || (model !== undefined && l.def.models.has(model))) applicable.push(l);
    if (ctx.tenant) applicable.push(...(this.perTenant.get(ctx.tenant.id) ?? []));
    if (applicable.length === 0) return undefined;

    const results = await Promise.all(applicable.map((l) => l.run(request)));
    const tenant = ctx.tenant?.id ?? "";
    let tightest: LimitState | undefined;
    let exceeded: { def: LimitDef; ttl: number } | undefined;
    results.forEach((r, i) => {
      const def = (applicable[i] as BoundLimit).def;
      if (r.isAllowed) return; // on its allow-list
      this.events.decided?.(def.name, tenant, !r.isExceeded);
      if (r.isExceeded) {
        if (!exceeded || r.ttl > exceeded.ttl) exceeded = { def, ttl: r.ttl };
      } else if (!tightest || r.remaining / r.max < tightest.remaining / tightest.limit) {
        tightest = { limit: r.max, remaining: r.remaining, resetMs: r.ttl };
      }
    });
    if (exceeded) {
      await Promise.all(
        results.map((r, i) => {
          const def = (applicable[i] as BoundLimit).def;
          if (r.isAllowed || r.isExceeded) return undefined;
          return this.guard.adjust(bucketFor(def, r.key), -1, def.name, def.policy).catch(() => undefined);
        }),
      );
      throw errors.rateLimited(
        "requests",
        `${exceeded.def.burst} per ${formatWindow(exceeded.def)} (${exceeded.def.name}, by ${exceeded.def.by})`,
        Math.max(1, exceeded.ttl),
      );
    }
    return tightest;
  }
}

function formatWindow(def: LimitDef): string {
  const ms = Math.round((def.burst / def.ratePerSec) * 1000);
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/** What a limit counts by. Keys are never stored in clear: the key id is part of a digest. */
export function limitKey(by: LimitBy, request: FastifyRequest): string {
  const ctx = request.gw;
  switch (by) {
    case "ip":
      return request.ip;
    case "key":
      return ctx.keyId ?? "anonymous";
    case "tenant":
      return ctx.tenant?.id ?? "anonymous";
    case "model":
      return ctx.model ?? "";
    case "global":
      return "all";
  }
}
