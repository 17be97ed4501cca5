/** Token reservations and concurrency leases on the embedded store: what they take and give back. */
import { afterEach, describe, expect, it } from "vitest";
import type { Tenant } from "../../../src/auth/api-keys.js";
import { parseConfig } from "../../../src/config/index.js";
import { GatewayError } from "../../../src/errors.js";
import { ConcurrencyLimits } from "../../../src/ratelimit/concurrency.js";
import { GuardedStore } from "../../../src/ratelimit/guarded-store.js";
import { TokenBudgets } from "../../../src/ratelimit/token-budget.js";
import { MemoryStore } from "../../../src/store/memory-store.js";

const config = parseConfig(
  `tenants:
  a: { limits: { tokens: { rate: 1000, per: 1h, burst: 1000 }, concurrency: 2 } }
  b: {}
pools: { p: { models: [m], backends: [{ url: "http://127.0.0.1:1" }] } }`,
  "test",
);
const tenant = (id: string): Tenant =>
  ({
    id,
    ...(config.tenants[id] ?? { priority: "interactive", fallback: true, limits: { onStoreError: "local" } }),
  }) as Tenant;

let guards: GuardedStore[] = [];
afterEach(async () => {
  for (const g of guards) await g.close();
  guards = [];
});

function guard(): GuardedStore {
  const store = new MemoryStore({ sweepIntervalMs: 0 });
  const g = new GuardedStore(store, store, { replicas: 1, failures: 3, resetTimeout: 1000 });
  guards.push(g);
  return g;
}

describe("TokenBudgets", () => {
  it("reserves the estimate, refunds to the real usage, and settles only once", async () => {
    const events: [string, number][] = [];
    const budgets = new TokenBudgets(config, guard(), {
      tokens: (_t, kind, n) => void events.push([kind, n]),
    });
    expect(budgets.enabled).toBe(true);
    expect(budgets.has(tenant("b"))).toBe(false);
    const r = await budgets.reserve(tenant("a"), 600);
    expect(r?.state.remaining).toBe(400);
    await r?.settle(100);
    await r?.settle(0); // a second settle changes nothing
    expect(events).toEqual([
      ["reserved", 600],
      ["settled", 100],
      ["refunded", 500],
    ]);
    // 900 left: a reservation of 900 fits, one more token does not.
    const next = await budgets.reserve(tenant("a"), 900);
    expect(next).toBeDefined();
    await expect(budgets.reserve(tenant("a"), 1)).rejects.toMatchObject({ code: "tokens_limit_exceeded" });
  });

  it("unknown usage keeps the reservation; a request larger than the whole budget can never fit", async () => {
    const budgets = new TokenBudgets(config, guard());
    const r = await budgets.reserve(tenant("a"), 700);
    await r?.settle(undefined);
    await expect(budgets.reserve(tenant("a"), 301)).rejects.toBeInstanceOf(GatewayError);
    const err = await budgets.reserve(tenant("a"), 5000).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "tokens_exceed_budget", retryAfterMs: undefined });
  });

  it("a refusal says when the reservation was the default max_tokens, a number the client never sent", async () => {
    const budgets = new TokenBudgets(config, guard());
    const never = await budgets.reserve(tenant("a"), 1036, 1024).catch((e: unknown) => e);
    expect(never).toMatchObject({ code: "tokens_exceed_budget" });
    expect((never as GatewayError).message).toBe(
      "The request may use 1036 tokens, more than this key's token budget of 1000: it did not set max_tokens, so the gateway reserved its default max_tokens (tokens.defaultMaxTokens: 1024) for the answer. Set max_tokens on the request, or ask the operator to raise the budget or lower tokens.defaultMaxTokens.",
    );
    const asked = await budgets.reserve(tenant("a"), 1036).catch((e: unknown) => e);
    expect((asked as GatewayError).message).not.toContain("defaultMaxTokens");
    await budgets.reserve(tenant("a"), 900);
    const later = await budgets.reserve(tenant("a"), 300, 256).catch((e: unknown) => e);
    expect(later).toMatchObject({ code: "tokens_limit_exceeded" });
    expect((later as GatewayError).message).toContain(
      "300 tokens asked (max_tokens unset: the default 256 counted), 100 left",
    );
  });

  it("usage over the reservation is charged, into debt", async () => {
    const budgets = new TokenBudgets(config, guard());
    const r = await budgets.reserve(tenant("a"), 100);
    await r?.settle(1100); // 1,000 more than reserved: the bucket is now 100 in debt
    await expect(budgets.reserve(tenant("a"), 1)).rejects.toMatchObject({ code: "tokens_limit_exceeded" });
  });
});

describe("ConcurrencyLimits", () => {
  it("leases up to the limit, refuses past it, and a release (once) frees a slot", async () => {
    const limits = new ConcurrencyLimits(config, guard());
    expect(limits.enabled).toBe(true);
    const first = await limits.acquire(tenant("a"));
    const second = await limits.acquire(tenant("a"));
    await expect(limits.acquire(tenant("a"))).rejects.toMatchObject({ code: "concurrency_limit_exceeded" });
    first?.release();
    first?.release(); // idempotent: it must not free the second's slot
    const third = await limits.acquire(tenant("a"));
    expect(third).toBeDefined();
    await expect(limits.acquire(tenant("a"))).rejects.toMatchObject({ code: "concurrency_limit_exceeded" });
    second?.release();
    third?.release();
  });

  it("a tenant without a limit takes nothing", async () => {
    const limits = new ConcurrencyLimits(config, guard());
    expect(limits.has(tenant("b"))).toBe(false);
    expect(await limits.acquire(tenant("b"))).toBeUndefined();
  });
});
