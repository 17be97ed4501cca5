/**
 * LLM tokens per tenant, charged before the request goes upstream: the estimate (prompt plus
 * the most it may generate) is reserved atomically in the shared bucket, so concurrent requests
 * cannot all pass on the same remaining budget; a reservation the bucket cannot cover is refused
 * before any GPU time is spent. When the answer ends, the reservation settles to its real
 * `usage`: the difference is refunded (or charged, even into debt, when usage ran over).
 * No usage known (a stream cut off, a client gone mid-stream): the reservation stands. No
 * answer at all (the backend failed): it is refunded in full.
 */
import type { Tenant } from "../auth/api-keys.js";
import type { GatewayConfig, RateSpecConfig, StoreErrorPolicyConfig } from "../config/index.js";
import { errors } from "../errors.js";
import type { BucketSpec } from "../store/types.js";
import type { GuardedStore } from "./guarded-store.js";
import type { LimitState } from "./headers.js";

export interface TokenEvents {
  tokens?(tenant: string, kind: "reserved" | "settled" | "refunded" | "charged", amount: number): void;
  decided?(limit: string, tenant: string, allowed: boolean): void;
}

interface Budget {
  spec: BucketSpec;
  policy: StoreErrorPolicyConfig;
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
  get any(): boolean {
    return this.budgets.size > 0;
  }

  has(tenant: Tenant | undefined): boolean {
    return tenant !== undefined && this.budgets.has(tenant.id);
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
    if (!r.allowed) {
      throw errors.rateLimited(
        "tokens",
        `${tokens} tokens asked${defaultMaxTokens === undefined ? "" : ` (max_tokens unset: the default ${defaultMaxTokens} counted)`}, ${Math.floor(Math.max(0, r.remaining))} left`,
        Math.max(1, r.msToNext),
      );
    }
    this.events.tokens?.(tenant.id, "reserved", tokens);
    const state = { limit: budget.spec.burst, remaining: r.remaining, resetMs: r.msToFull };
    return new Reservation(tenant.id, budget, tokens, state, this.guard, this.events);
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
}
