/**
 * LLM tokens per tenant, charged before the request goes upstream: the estimate (prompt plus
 * the most it may generate) is reserved atomically in the shared bucket, so concurrent requests
 * cannot all pass on the same remaining budget; a reservation the bucket cannot cover is refused
 * before any GPU time is spent. When the answer ends, the reservation settles to its real
 * `usage`: the difference is refunded (or charged, even into debt, when usage ran over).
 * No usage known (a stream cut off, a client gone mid-stream): the reservation stands. No
 * answer at all (the backend failed): it is refunded in full.
 *
 * With request limits, the reservation is taken in the limits' store call (ask(), then the
 * request-limits stage), before the response cache, and the token-budget stage, after it, adopts
 * what that call decided (adopt()): a miss costs one store call for the limits and the tokens
 * together. A cache hit gives the reservation back unseen (Reservation.cancel: no token event,
 * no decision counted), so it spends no tokens; a reservation refused there refuses only a
 * miss, at the token-budget stage, as when it is taken there.
 */
import type { Tenant } from "../auth/api-keys.js";
import type { GatewayConfig, RateSpecConfig, StoreErrorPolicyConfig } from "../config/index.js";
import { errors } from "../errors.js";
import type { BucketResult, BucketSpec } from "../store/types.js";
import type { GuardedStore, GuardedTake } from "./guarded-store.js";
import type { LimitState } from "./headers.js";
import type { BesideOutcome } from "./request-limits.js";

export interface TokenEvents {
  tokens?(tenant: string, kind: "reserved" | "settled" | "refunded" | "charged", amount: number): void;
  decided?(limit: string, tenant: string, allowed: boolean): void;
}

interface Budget {
  spec: BucketSpec;
  policy: StoreErrorPolicyConfig;
}

/**
 * A reservation asked of the request limits' store call: what to take, and, once that call
 * answered, what came of it (for the token-budget stage, and the way back).
 */
export class TokenAsk {
  /** The reservation taken, until the token-budget stage adopts it or the way back cancels it. */
  held: Reservation | undefined;
  outcome: BesideOutcome | undefined;
  readonly take: GuardedTake;

  constructor(
    readonly tenant: Tenant,
    readonly budget: Budget,
    readonly tokens: number,
    readonly defaultMaxTokens: number | undefined,
  ) {
    this.take = { spec: budget.spec, cost: tokens, optional: true, limit: LIMIT_NAME, policy: budget.policy };
  }
}

const LIMIT_NAME = "tenant.tokens";

export class TokenBudgets {
  private readonly budgets = new Map<string, Budget>();

  constructor(
    config: GatewayConfig,
    private readonly guard: GuardedStore,
    private readonly events: TokenEvents = {},
  ) {
    for (const [tenant, settings] of Object.entries(config.tenants)) {
      const tokens: RateSpecConfig | undefined = settings.limits.tokens;
      if (!tokens) continue;
      this.budgets.set(tenant, {
        spec: {
          key: `tok:tenant:${tenant}`,
          ratePerSec: (tokens.rate * 1000) / tokens.per,
          burst: tokens.burst ?? tokens.rate,
        },
        policy: settings.limits.onStoreError,
      });
    }
  }

  /** Some tenant has one: the stage is on. */
  get enabled(): boolean {
    return this.budgets.size > 0;
  }

  has(tenant: Tenant | undefined): boolean {
    return tenant !== undefined && this.budgets.has(tenant.id);
  }

  /**
   * The reservation to take beside the request limits; undefined when the tenant has no budget,
   * or `tokens` exceed it (reserve() refuses that without asking the store).
   */
  ask(tenant: Tenant, tokens: number, defaultMaxTokens?: number): TokenAsk | undefined {
    const budget = this.budgets.get(tenant.id);
    if (!budget || tokens > budget.spec.burst) return undefined;
    return new TokenAsk(tenant, budget, tokens, defaultMaxTokens);
  }

  /** Records what the limits' store call decided of `ask` (its reservation, when taken). */
  answered(ask: TokenAsk, outcome: BesideOutcome): void {
    ask.outcome = outcome;
    if (!outcome.taken) return;
    const r = outcome.result;
    const state = { limit: ask.budget.spec.burst, remaining: r.remaining, resetMs: r.msToFull };
    ask.held = new Reservation(ask.tenant.id, ask.budget, ask.tokens, state, this.guard, this.events);
  }

  /**
   * The token-budget stage's part of a reservation decided beside the limits: counts the
   * decision as reserve() does, and returns the reservation or throws the same refusals.
   */
  adopt(ask: TokenAsk): Reservation {
    const outcome = ask.outcome;
    if (outcome === undefined) throw new Error("adopt: the reservation was never decided");
    if (outcome.undecided) throw errors.limiterUnavailable();
    this.events.decided?.(LIMIT_NAME, ask.tenant.id, outcome.taken);
    const held = ask.held;
    if (held === undefined) throw this.refusal(ask.tokens, ask.defaultMaxTokens, outcome.result);
    ask.held = undefined;
    this.events.tokens?.(ask.tenant.id, "reserved", ask.tokens);
    return held;
  }

  /**
   * Reserves `tokens` or throws the 429 that says when they will be there. `defaultMaxTokens`:
   * the request set no max_tokens and this default was counted for it, which the 429 says (the
   * client would not recognise the number otherwise).
   */
  async reserve(tenant: Tenant, tokens: number, defaultMaxTokens?: number): Promise<Reservation | undefined> {
    const budget = this.budgets.get(tenant.id);
    if (!budget) return undefined;
    if (tokens > budget.spec.burst) {
      throw errors.tokensExceedBudget(tokens, budget.spec.burst, defaultMaxTokens);
    }
    const r = await this.guard.take(budget.spec, tokens, LIMIT_NAME, budget.policy);
    this.events.decided?.(LIMIT_NAME, tenant.id, r.allowed);
    if (!r.allowed) throw this.refusal(tokens, defaultMaxTokens, r);
    this.events.tokens?.(tenant.id, "reserved", tokens);
    const state = { limit: budget.spec.burst, remaining: r.remaining, resetMs: r.msToFull };
    return new Reservation(tenant.id, budget, tokens, state, this.guard, this.events);
  }

  private refusal(tokens: number, defaultMaxTokens: number | undefined, r: BucketResult): Error {
    return errors.rateLimited(
      "tokens",
      `${tokens} tokens asked${defaultMaxTokens === undefined ? "" : ` (max_tokens unset: the default ${defaultMaxTokens} counted)`}, ${Math.floor(Math.max(0, r.remaining))} left`,
      Math.max(1, r.msToNext),
    );
  }
}

export class Reservation {
  private settled = false;

  constructor(
    private readonly tenant: string,
    private readonly budget: Budget,
    readonly tokens: number,
    readonly state: LimitState,
    private readonly guard: GuardedStore,
    private readonly events: TokenEvents,
  ) {}

  /** Settles to what was used; `undefined` keeps the reservation. Runs once. */
  async settle(used: number | undefined): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    if (used === undefined) {
      this.events.tokens?.(this.tenant, "settled", this.tokens);
      return;
    }
    this.events.tokens?.(this.tenant, "settled", used);
    const delta = used - this.tokens;
    if (delta === 0) return;
    this.events.tokens?.(this.tenant, delta < 0 ? "refunded" : "charged", Math.abs(delta));
    await this.guard.adjust(this.budget.spec, delta, LIMIT_NAME, this.budget.policy).catch(() => undefined);
  }

  /**
   * Gives the whole reservation back unseen: it was taken beside the limits for a request that
   * never needed it (a cache hit, a refusal before the token-budget stage), which counts no
   * tokens. Runs once, and not after settle().
   */
  async cancel(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    await this.guard
      .adjust(this.budget.spec, -this.tokens, LIMIT_NAME, this.budget.policy)
      .catch(() => undefined);
  }
}
