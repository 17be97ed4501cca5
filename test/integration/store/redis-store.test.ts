/** RedisStore against a real redis-server: semantics, script reloads, and a Redis that dies. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisStore, MAX_COALESCED, type RedisStore } from "../../../src/store/redis-store.js";
import { StoreUnavailableError } from "../../../src/store/types.js";
import { eventually, sleep } from "../../helpers/eventually.js";
import { startRedis, startSentinel, type TestRedis } from "../../helpers/redis.js";
import { redisStoreConfig } from "./store-config.js";

/** Short, as in production, for the stores that meet a Redis unable to answer. */
const COMMAND_TIMEOUT = 200;
/**
 * Timer lag allowed on a busy machine past a deadline. Still under the 2 s socketTimeout (10 ×
 * commandTimeout) at which ioredis itself would end a command on a silent connection, so a
 * missing deadline of the store's own still fails.
 */
const LAG = 1000;
const spec = (key: string) => ({ key, ratePerSec: 10, burst: 5 });

let redis: TestRedis;
/** The semantics tests' store: the generous default deadline, so load never fails a call. */
let store: RedisStore;
beforeAll(async () => {
  redis = await startRedis();
  store = createRedisStore(redisStoreConfig({ url: redis.url }));
});
afterAll(async () => {
  await store?.close();
  await redis?.stop();
});

/** Rejects with StoreUnavailableError, and how long that took. */
async function timeToFailure(call: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await expect(call()).rejects.toBeInstanceOf(StoreUnavailableError);
  return performance.now() - started;
}

/**
 * Calls `call` until it succeeds, each failure a StoreUnavailableError. The store reconnects
 * with a backoff capped at 2 s; 10 s allows for a loaded machine.
 */
async function recovers(call: () => Promise<unknown>): Promise<void> {
  await eventually(
    async () => {
      try {
        await call();
        return true;
      } catch (error) {
        expect(error).toBeInstanceOf(StoreUnavailableError);
        return false;
      }
    },
    { timeout: 10_000, interval: 50, what: "the store to answer again" },
  );
}

async function scriptCalls(): Promise<{ eval: number; evalsha: number }> {
  const stats = await redis.cli("info", "commandstats");
  const calls = (name: string) => Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
  return { eval: calls("eval"), evalsha: calls("evalsha") };
}

describe("RedisStore buckets", () => {
  it("answers its first call, made before the connection is ready", async () => {
    const fresh = createRedisStore(redisStoreConfig({ url: redis.url }));
    try {
      expect(fresh.kind).toBe("redis");
      expect(await fresh.take(spec("rl:first"), 1)).toMatchObject({ allowed: true, remaining: 4 });
    } finally {
      await fresh.close();
    }
  });

  it("takes, refuses with a wait, charges into debt and refunds up to burst", async () => {
    // Redis TIME moves between calls: the numbers are the fake-time ones less what refilled,
    // and what refilled is bounded by the time measured around the calls.
    const s = { key: "rl:a", ratePerSec: 1, burst: 5 };
    const started = performance.now();
    expect(await store.take(s, 5)).toMatchObject({ allowed: true, msToNext: 0 });
    const refused = await store.take(s, 1);
    const refusedBy = performance.now() - started;
    expect(refused.allowed).toBe(false);
    expect(refused.msToNext).toBeLessThanOrEqual(1000);
    expect(refused.msToNext).toBeGreaterThanOrEqual(1000 - refusedBy - 1);
    const debt = await store.adjust(s, 3);
    const debtBy = performance.now() - started;
    expect(debt.remaining).toBeGreaterThanOrEqual(-3);
    expect(debt.remaining).toBeLessThanOrEqual(-3 + debtBy / 1000 + 0.001);
    expect(debt.msToFull).toBeLessThanOrEqual(8000);
    expect(debt.msToFull).toBeGreaterThanOrEqual(8000 - debtBy - 1);
    expect(await store.adjust(s, -100)).toMatchObject({ remaining: 5, msToFull: 0 });
    expect(await store.take(s, 1)).toMatchObject({ allowed: true, remaining: 4 });
  });

  it("keeps one hash per bucket under prefix{key}, which expires when idle", async () => {
    // Two tokens short of full at 1/s: idle for 2 s, plus 1 s.
    const s = { key: "rl:ttl", ratePerSec: 1, burst: 5 };
    const started = performance.now();
    await store.take(s, 2);
    expect(await redis.cli("hkeys", "floodgate-test:{rl:ttl}")).toBe("tokens\nts");
    const pttl = Number(await redis.cli("pttl", "floodgate-test:{rl:ttl}"));
    expect(pttl).toBeLessThanOrEqual(2000 + 1000);
    expect(pttl).toBeGreaterThanOrEqual(2000 + 1000 - (performance.now() - started) - 1);
  });

  it("takeAll: several buckets in one script call, the required ones all or none", async () => {
    const limit = { key: "rl:all:a", ratePerSec: 1, burst: 2 };
    const other = { key: "rl:all:b", ratePerSec: 1, burst: 5 };
    const tokens = { key: "tok:all", ratePerSec: 1, burst: 100 };
    const takes = [
      { spec: limit, cost: 1 },
      { spec: other, cost: 1 },
      { spec: tokens, cost: 60, optional: true },
    ];
    const before = await scriptCalls();
    expect(await store.takeAll(takes)).toMatchObject({
      taken: true,
      results: [{ allowed: true }, { allowed: true }, { allowed: true }],
    });
    // The reservation no longer fits: the limits are taken all the same.
    const second = await store.takeAll(takes);
    expect(second.taken).toBe(true);
    expect(second.results[2]).toMatchObject({ allowed: false });
    expect(second.results[2]?.remaining).toBeLessThan(41);
    // rl:all:a is empty: nothing is taken from rl:all:b either.
    const refused = await store.takeAll(takes);
    expect(refused.taken).toBe(false);
    expect(refused.results[0]).toMatchObject({ allowed: false });
    expect(refused.results[1]).toMatchObject({ allowed: true });
    const after = await scriptCalls();
    expect(after.evalsha + after.eval).toBe(before.evalsha + before.eval + 3);
    // Three takes of rl:all:b were asked, two were taken (1/s refills less than one meanwhile).
    expect((await store.take(other, 0)).remaining).toBeLessThan(4);
    expect((await store.take(other, 0)).remaining).toBeGreaterThanOrEqual(3);
    await expect(store.takeAll([{ spec: { ...limit, ratePerSec: 0 }, cost: 1 }])).rejects.toThrow(RangeError);
  });

  it("takeAll: the calls of one event-loop turn share one script, decided in arrival order, each all or none", async () => {
    const shared = { key: "rl:turn:shared", ratePerSec: 0.001, burst: 3 };
    const own = { key: "rl:turn:own", ratePerSec: 0.001, burst: 5 };
    const empty = { key: "rl:turn:empty", ratePerSec: 0.001, burst: 1 };
    const tokens = { key: "tok:turn", ratePerSec: 0.001, burst: 10 };
    await store.take(empty, 1);
    const before = await scriptCalls();
    // Five requests in one turn, each with its own group of takes.
    const calls = [
      store.takeAll([
        { spec: shared, cost: 1 },
        { spec: own, cost: 1 },
      ]),
      // Refused by its empty bucket: takes nothing from the shared one.
      store.takeAll([
        { spec: shared, cost: 1 },
        { spec: empty, cost: 1 },
      ]),
      store.takeAll([
        { spec: shared, cost: 1 },
        { spec: tokens, cost: 8, optional: true },
      ]),
      // Its reservation no longer fits after the one before: its limit is taken all the same.
      store.takeAll([
        { spec: shared, cost: 1 },
        { spec: tokens, cost: 8, optional: true },
      ]),
      // The shared bucket is empty by now: refused, nothing taken.
      store.takeAll([
        { spec: shared, cost: 1 },
        { spec: own, cost: 1 },
      ]),
    ];
    const results = await Promise.all(calls);
    const after = await scriptCalls();
    expect(after.evalsha + after.eval).toBe(before.evalsha + before.eval + 1);
    expect(results.map((r) => r.taken)).toEqual([true, false, true, true, false]);
    expect(results[1]?.results.map((r) => r.allowed)).toEqual([true, false]);
    expect(results[2]?.results.map((r) => r.allowed)).toEqual([true, true]);
    expect(results[3]?.results.map((r) => r.allowed)).toEqual([true, false]);
    expect(results[4]?.results.map((r) => r.allowed)).toEqual([false, true]);
    // What each group saw is what the groups before it left (0.001/s refills nothing to see).
    expect(results.map((r) => Math.round(r.results[0]?.remaining ?? -1))).toEqual([2, 2, 1, 0, 0]);
    expect(Math.round((await store.take(shared, 0)).remaining)).toBe(0);
    expect(Math.round((await store.take(own, 0)).remaining)).toBe(4);
    expect(Math.round((await store.take(tokens, 0)).remaining)).toBe(2);
  });

  it("takeAll: a burst of calls in one turn goes in calls of MAX_COALESCED requests at most", async () => {
    const bucket = { key: "rl:burst", ratePerSec: 0.001, burst: 1000 };
    const n = MAX_COALESCED * 2 + 5;
    const before = await scriptCalls();
    const results = await Promise.all(
      Array.from({ length: n }, () => store.takeAll([{ spec: bucket, cost: 1 }])),
    );
    const after = await scriptCalls();
    expect(after.evalsha + after.eval - before.evalsha - before.eval).toBe(3);
    expect(results.every((r) => r.taken)).toBe(true);
    // Decided one after the other, in arrival order: each saw one token fewer than the last.
    expect(results.map((r) => Math.round(r.results[0]?.remaining ?? -1))).toEqual(
      Array.from({ length: n }, (_, i) => 999 - i),
    );
    // A call in a later turn is a call of its own.
    await store.takeAll([{ spec: bucket, cost: 1 }]);
    await store.takeAll([{ spec: bucket, cost: 1 }]);
    const last = await scriptCalls();
    expect(last.evalsha + last.eval - after.evalsha - after.eval).toBe(2);
  });

  it("rejects a spec it cannot serve without calling Redis", async () => {
    await expect(store.take({ key: "rl:bad", ratePerSec: 0, burst: 1 }, 1)).rejects.toThrow(RangeError);
  });

  it("survives SCRIPT FLUSH between calls (EVALSHA → NOSCRIPT → EVAL)", async () => {
    await store.take(spec("rl:flush"), 1);
    const before = await scriptCalls();
    await store.take(spec("rl:flush"), 1);
    expect((await scriptCalls()).evalsha).toBe(before.evalsha + 1);
    await redis.cli("script", "flush");
    expect(await store.take(spec("rl:flush"), 1)).toMatchObject({ allowed: true });
    expect(await store.acquireLease("lease:flush", "a", 1, 1000)).toEqual({ acquired: true, held: 1 });
    const after = await scriptCalls();
    expect(after.eval).toBeGreaterThanOrEqual(before.eval + 2);
  });

  it("clear deletes the keys under a logical prefix, and only those", async () => {
    for (let i = 0; i < 30; i++) await store.take(spec(`clear:a:${i}`), 1);
    await store.take(spec("clear:b"), 1);
    await store.clear("clear:a:");
    expect(await redis.cli("--scan", "--pattern", "floodgate-test:{clear:*")).toBe(
      "floodgate-test:{clear:b}",
    );
  });
});

describe("RedisStore leases", () => {
  it("grants at most limit; release frees; the set vanishes with its last lease", async () => {
    expect(await store.acquireLease("lease:k", "a", 2, 5000)).toEqual({ acquired: true, held: 1 });
    expect(await store.acquireLease("lease:k", "b", 2, 5000)).toEqual({ acquired: true, held: 2 });
    expect(await store.acquireLease("lease:k", "c", 2, 5000)).toEqual({ acquired: false, held: 2 });
    expect(await store.acquireLease("lease:k", "a", 2, 5000)).toEqual({ acquired: true, held: 2 });
    const pttl = Number(await redis.cli("pttl", "floodgate-test:{lease:k}"));
    expect(pttl).toBeGreaterThan(5000);
    await store.releaseLease("lease:k", "a");
    expect(await store.acquireLease("lease:k", "c", 2, 5000)).toEqual({ acquired: true, held: 2 });
    await store.releaseLease("lease:k", "b");
    await store.releaseLease("lease:k", "c");
    expect(await redis.cli("exists", "floodgate-test:{lease:k}")).toBe("0");
  });

  it("expires leases unless renewed; an expired lease is not re-created", async () => {
    // b lives 150 ms and the sleep outlasts it; a lives long enough that no stall expires it,
    // and its renewal shows in its expiry (the score), so nothing races the clock.
    const expiryOfA = async () => Number(await redis.cli("zscore", "floodgate-test:{lease:ttl}", "a"));
    await store.acquireLease("lease:ttl", "a", 2, 10_000);
    await store.acquireLease("lease:ttl", "b", 2, 150);
    const before = await expiryOfA();
    await sleep(200);
    expect(await store.renewLease("lease:ttl", "a", 60_000)).toBe(true);
    expect(await expiryOfA()).toBeGreaterThanOrEqual(before + 50_000);
    expect(await store.renewLease("lease:ttl", "b", 60_000)).toBe(false);
    expect(await store.acquireLease("lease:ttl", "c", 2, 60_000)).toEqual({ acquired: true, held: 2 });
    expect(await store.acquireLease("lease:ttl", "d", 2, 60_000)).toEqual({ acquired: false, held: 2 });
    expect(await store.renewLease("lease:none", "a", 300)).toBe(false);
  });
});

describe("RedisStore when Redis fails", () => {
  let short: RedisStore;
  beforeAll(async () => {
    short = createRedisStore(redisStoreConfig({ url: redis.url, commandTimeout: COMMAND_TIMEOUT }));
    await recovers(() => short.take(spec("rl:connect"), 1));
  });
  afterAll(async () => {
    await short?.close();
  });

  it("a Redis that stops answering: rejects within commandTimeout, then recovers", async () => {
    redis.pause();
    try {
      // A stopped server never answers: the deadline is the only way out.
      const elapsed = await timeToFailure(() => short.take(spec("rl:pause"), 1));
      expect(elapsed).toBeGreaterThanOrEqual(COMMAND_TIMEOUT - 5);
      expect(elapsed).toBeLessThan(COMMAND_TIMEOUT + LAG);
    } finally {
      redis.resume();
    }
    await recovers(() => short.take(spec("rl:pause"), 1));
  });

  it("a Redis that stops answering fails every request of a coalesced call, each within commandTimeout", async () => {
    redis.pause();
    try {
      const started = performance.now();
      const outcomes = await Promise.all(
        [1, 2, 3].map((i) =>
          short.takeAll([{ spec: spec(`rl:pause:${i}`), cost: 1 }]).then(
            () => "answered",
            (error: unknown) => error,
          ),
        ),
      );
      const elapsed = performance.now() - started;
      for (const outcome of outcomes) expect(outcome).toBeInstanceOf(StoreUnavailableError);
      expect(elapsed).toBeLessThan(COMMAND_TIMEOUT + LAG);
    } finally {
      redis.resume();
    }
    await recovers(() => short.takeAll([{ spec: spec("rl:pause:1"), cost: 1 }]));
  });

  it("a killed Redis: rejects fast, never hangs; restarted on the same port: works again", async () => {
    // A call in flight when the server dies.
    const inFlight = short.take(spec("rl:kill"), 1).then(
      () => "answered",
      (error: unknown) => error,
    );
    await redis.kill();
    const outcome = await inFlight;
    if (outcome !== "answered") expect(outcome).toBeInstanceOf(StoreUnavailableError);
    for (let i = 0; i < 5; i++) {
      expect(await timeToFailure(() => short.take(spec("rl:kill"), 1))).toBeLessThan(COMMAND_TIMEOUT + LAG);
      expect(await timeToFailure(() => short.acquireLease("lease:kill", "a", 1, 1000))).toBeLessThan(
        COMMAND_TIMEOUT + LAG,
      );
      await sleep(100);
    }
    await redis.restart();
    await recovers(() => short.take(spec("rl:kill"), 1));
    // The restarted server is empty: the bucket starts full, scripts are reloaded by EVAL.
    expect(await short.take(spec("rl:kill"), 0)).toMatchObject({ allowed: true });
  });

  it("a Redis never reached: rejects within commandTimeout", async () => {
    const nowhere = createRedisStore(
      redisStoreConfig({ url: "redis://127.0.0.1:1", commandTimeout: COMMAND_TIMEOUT }),
    );
    try {
      for (let i = 0; i < 3; i++) {
        expect(await timeToFailure(() => nowhere.take(spec("rl:x"), 1))).toBeLessThan(COMMAND_TIMEOUT + LAG);
      }
    } finally {
      await nowhere.close();
    }
  });

  it("after close, calls reject with StoreUnavailableError", async () => {
    const closing = createRedisStore(redisStoreConfig({ url: redis.url }));
    await closing.take(spec("rl:close"), 1);
    const started = performance.now();
    await closing.close();
    // Closing waits for no reconnect and no timeout (those would take seconds).
    expect(performance.now() - started).toBeLessThan(3000);
    await timeToFailure(() => closing.take(spec("rl:close"), 1));
  });
});

describe("RedisStore through Sentinel", () => {
  it("finds the master through a sentinel and uses it", async () => {
    const sentinel = await startSentinel(redis.port);
    const viaSentinel = createRedisStore(redisStoreConfig({ sentinels: [sentinel.address] }));
    try {
      expect(await viaSentinel.take(spec("rl:sentinel"), 2)).toMatchObject({ allowed: true, remaining: 3 });
      expect(await redis.cli("exists", "floodgate-test:{rl:sentinel}")).toBe("1");
    } finally {
      await viaSentinel.close();
      await sentinel.stop();
    }
  });
});
