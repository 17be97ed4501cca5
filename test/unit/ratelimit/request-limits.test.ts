/**
 * Request limits on the embedded store, and on a Redis that is not there: every limit of a
 * request and its token reservation in one store call, all or none, and each limit's
 * onStoreError when the store cannot answer.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { Tenant } from "../../../src/auth/api-keys.js";
import { parseConfig } from "../../../src/config/index.js";
import { GatewayError } from "../../../src/errors.js";
import { GuardedStore } from "../../../src/ratelimit/guarded-store.js";
import { type LimitCheck, RequestLimits } from "../../../src/ratelimit/request-limits.js";
import { TokenBudgets } from "../../../src/ratelimit/token-budget.js";
import { MemoryStore } from "../../../src/store/memory-store.js";
import { createRedisStore } from "../../../src/store/redis-store.js";
import type { BucketTake, Store, TakeAllResult } from "../../../src/store/types.js";
import { freePort } from "../../helpers/ports.js";
import { redisStoreConfig } from "../../integration/store/store-config.js";

const yaml = (ipPolicy = "local", tenantPolicy = "local") => `tenants:
  a: { limits: { requests: { rate: 2, per: 1h }, tokens: { rate: 1000, per: 1h }, onStoreError: ${tenantPolicy} } }
  b: {}
rateLimits:
  - { name: per-ip, by: ip, rate: 10, per: 1h, onStoreError: ${ipPolicy} }
  - { name: gpt-only, by: global, rate: 1, per: 1h, models: [gpt] }
  - { name: trusted, by: ip, rate: 100, per: 1h, allowList: ["10.0.0.1"] }
pools: { p: { models: [m, gpt], backends: [{ url: "http://127.0.0.1:1" }] } }`;

const tenantOf = (config: ReturnType<typeof parseConfig>, id: string): Tenant =>
  ({ id, ...config.tenants[id] }) as Tenant;

/** A memory store that counts its calls (a real store: it still decides everything). */
class CountingStore extends MemoryStore {
  calls = 0;
  override takeAllNow(takes: readonly BucketTake[]): TakeAllResult {
    this.calls++;
    return super.takeAllNow(takes);
  }
}

let closing: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const c of closing) await c.close();
  closing = [];
});

function setup(primary?: Store, policies: [string, string] = ["local", "local"]) {
  const config = parseConfig(yaml(...policies), "test");
  const local = new CountingStore({ sweepIntervalMs: 0 });
  const guard = new GuardedStore(primary ?? local, local, { replicas: 2, failures: 3, resetTimeout: 60_000 });
  closing.push(guard);
  const decisions: string[] = [];
  const events = { decided: (l: string, t: string, ok: boolean) => void decisions.push(`${l}/${t}/${ok}`) };
  const limits = new RequestLimits(config, guard, events);
  const budgets = new TokenBudgets(config, guard, events);
  return { config, local, guard, limits, budgets, decisions };
}

const subject = (ip: string, tenant?: string, model = "m") => ({ ip, tenant, keyId: undefined, model });

async function refusal(check: () => LimitCheck | Promise<LimitCheck>): Promise<GatewayError> {
  try {
    await check();
  } catch (err) {
    if (err instanceof GatewayError) return err;
    throw err;
  }
  throw new Error("not refused");
}

describe("RequestLimits on the embedded store", () => {
  it("decides at once, in one store call for every limit and the reservation beside them", () => {
    const { config, local, limits, budgets, decisions } = setup();
    const ask = budgets.ask(tenantOf(config, "a"), 600);
    const checked = limits.check(subject("1.2.3.4", "a"), ask?.take);
    expect(checked).not.toBeInstanceOf(Promise);
    expect(local.calls).toBe(1);
    // The tightest limit: the tenant's 2 an hour (1 left), not the IP's 10 (9 left).
    expect(checked).toMatchObject({ state: { limit: 2, remaining: 1 }, limitText: "2" });
    expect((checked as LimitCheck).beside).toMatchObject({ taken: true, undecided: false });
    expect(decisions).toEqual(["per-ip/a/true", "trusted/a/true", "tenant.requests[0]/a/true"]);
  });

  it("a refused request takes nothing: not the other limits, not the reservation", async () => {
    const { config, local, limits, budgets, decisions } = setup();
    const a = tenantOf(config, "a");
    for (let i = 0; i < 2; i++) await limits.check(subject("1.2.3.4", "a"), budgets.ask(a, 100)?.take);
    decisions.length = 0;
    const err = await refusal(() => limits.check(subject("1.2.3.4", "a"), budgets.ask(a, 100)?.take));
    expect(err).toMatchObject({ statusCode: 429, code: "requests_limit_exceeded" });
    expect(err.message).toContain("limit tenant.requests[0], by tenant");
    expect(err.headers()).toMatchObject({
      "x-ratelimit-limit-requests": "2",
      "x-ratelimit-remaining-requests": "0",
    });
    expect(decisions).toEqual(["per-ip/a/true", "trusted/a/true", "tenant.requests[0]/a/false"]);
    // The IP limit has 8 of 10 left (2 taken, none for the refused one); 800 tokens are left.
    const ip = await local.take({ key: "rl:per-ip:1.2.3.4", ratePerSec: 10 / 3600, burst: 10 }, 0);
    expect(Math.floor(ip.remaining)).toBe(8);
    const tokens = await local.take({ key: "tok:tenant:a", ratePerSec: 1000 / 3600, burst: 1000 }, 0);
    expect(Math.floor(tokens.remaining)).toBe(800);
  });

  it("a reservation that does not fit refuses only itself", async () => {
    const { config, limits, budgets } = setup();
    const a = tenantOf(config, "a");
    const ask = budgets.ask(a, 900);
    await limits.check(subject("1.2.3.4", "a"), ask?.take);
    const second = budgets.ask(a, 900);
    const checked = await limits.check(subject("1.2.3.4", "a"), second?.take);
    expect(checked.state).toMatchObject({ remaining: 0 });
    expect(checked.beside).toMatchObject({ taken: false, result: { allowed: false } });
    // A reservation larger than the whole budget is never asked of the store.
    expect(budgets.ask(a, 5000)).toBeUndefined();
  });

  it("model filters, allow-lists, and tenants without limits", async () => {
    const { local, limits, decisions } = setup();
    expect(limits.check(subject("10.0.0.1", "b"))).toMatchObject({ state: { limit: 10 } });
    expect(decisions).toEqual(["per-ip/b/true"]); // trusted: on its allow-list; gpt-only: not this model
    decisions.length = 0;
    await limits.check(subject("10.0.0.2", undefined, "gpt"));
    expect(decisions).toEqual(["per-ip//true", "gpt-only//true", "trusted//true"]);
    const err = await refusal(() => limits.check(subject("10.0.0.3", "b", "gpt")));
    expect(err.message).toContain("limit gpt-only, by global");
    expect(local.calls).toBe(3);
  });
});

describe("RequestLimits when the store cannot answer", () => {
  /** A Redis store on a port nothing listens on: each call fails at once (refused connection). */
  async function deadRedis(): Promise<Store> {
    const port = await freePort();
    const store = createRedisStore(
      redisStoreConfig({ url: `redis://127.0.0.1:${port}`, commandTimeout: 200, connectTimeout: 200 }),
    );
    await store.ready(300);
    closing.push(store);
    return store;
  }

  it("local: the limits decided in process at limit ÷ replicas, in one local call", async () => {
    const { config, local, limits, budgets } = setup(await deadRedis());
    const a = tenantOf(config, "a");
    // The tenant's 2 an hour is 1 per replica (2 replicas): the second request is refused.
    const first = await limits.check(subject("1.2.3.4", "a"), budgets.ask(a, 400)?.take);
    expect(first.state).toMatchObject({ limit: 2, remaining: 0 });
    expect(first.beside).toMatchObject({ taken: true });
    expect(local.calls).toBe(1);
    await expect(limits.check(subject("1.2.3.4", "a"), budgets.ask(a, 400)?.take)).rejects.toMatchObject({
      code: "requests_limit_exceeded",
    });
  });

  it("closed refuses with the 503 for a limit, and leaves a reservation undecided for its stage", async () => {
    const store = await deadRedis();
    const closedIp = setup(store, ["closed", "open"]);
    await expect(closedIp.limits.check(subject("1.2.3.4", "b"))).rejects.toMatchObject({
      statusCode: 503,
      code: "rate_limiter_unavailable",
    });
    const closedTenant = setup(store, ["open", "closed"]);
    const a = tenantOf(closedTenant.config, "a");
    const ask = closedTenant.budgets.ask(a, 100);
    // The tenant's request limit is closed too: the 503 comes from the limits.
    await expect(closedTenant.limits.check(subject("1.2.3.4", "a"), ask?.take)).rejects.toMatchObject({
      statusCode: 503,
    });
  });

  it("open admits; an undecided reservation is refused by the token-budget stage alone", async () => {
    const store = await deadRedis();
    const { config, limits, budgets } = setup(store, ["open", "open"]);
    const a = tenantOf(config, "a");
    const ask = budgets.ask(a, 100);
    if (!ask) throw new Error("no ask");
    // A reservation whose policy is closed beside limits that are open (the config cannot say so
    // for one tenant; the guard allows it): the request passes the limits, the stage refuses.
    const take = { ...ask.take, policy: "closed" as const };
    const checked = await limits.check(subject("1.2.3.4", "a"), take);
    // Open limits report full buckets; "trusted" (local by default) is the tightest: 49 of 50.
    expect(checked.state).toMatchObject({ limit: 100, remaining: 49 });
    expect(checked.beside).toMatchObject({ taken: false, undecided: true });
    budgets.answered(ask, checked.beside as NonNullable<LimitCheck["beside"]>);
    expect(() => budgets.adopt(ask)).toThrow(expect.objectContaining({ code: "rate_limiter_unavailable" }));
  });
});

describe("a reservation taken beside the limits", () => {
  it("adopted: counted as reserved once; cancelled unadopted: given back with no token event", async () => {
    const events: string[] = [];
    const config = parseConfig(yaml(), "test");
    const store = new MemoryStore({ sweepIntervalMs: 0 });
    const guard = new GuardedStore(store, store, { replicas: 1, failures: 3, resetTimeout: 1000 });
    closing.push(guard);
    const budgets = new TokenBudgets(config, guard, {
      tokens: (_t, kind, n) => void events.push(`${kind} ${n}`),
      decided: (l, _t, ok) => void events.push(`${l} ${ok}`),
    });
    const limits = new RequestLimits(config, guard);
    const a = tenantOf(config, "a");
    const left = async () =>
      Math.round(
        (await store.take({ key: "tok:tenant:a", ratePerSec: 1000 / 3600, burst: 1000 }, 0)).remaining,
      );

    const hit = budgets.ask(a, 300);
    if (!hit) throw new Error("no ask");
    budgets.answered(hit, (await limits.check(subject("1.1.1.1", "a"), hit.take)).beside as never);
    expect(await left()).toBe(700);
    await hit.held?.cancel();
    expect(await left()).toBe(1000);
    expect(events).toEqual([]);

    const miss = budgets.ask(a, 300);
    if (!miss) throw new Error("no ask");
    budgets.answered(miss, (await limits.check(subject("1.1.1.1", "a"), miss.take)).beside as never);
    const reservation = budgets.adopt(miss);
    expect(miss.held).toBeUndefined(); // the way back of the limits stage has nothing to cancel
    await reservation.settle(50);
    expect(await left()).toBe(950);
    expect(events).toEqual(["tenant.tokens true", "reserved 300", "settled 50", "refunded 250"]);
  });
});
