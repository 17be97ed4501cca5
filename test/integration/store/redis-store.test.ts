/** RedisStore against a real redis-server: semantics, script reloads, and a Redis that dies. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisStore, type RedisStore } from "../../../src/store/redis-store.js";
import { StoreUnavailableError } from "../../../src/store/types.js";
import { startRedis, startSentinel, type TestRedis } from "../../helpers/redis.js";
import { redisStoreConfig } from "./store-config.js";

const COMMAND_TIMEOUT = 200;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const spec = (key: string) => ({ key, ratePerSec: 10, burst: 5 });

let redis: TestRedis;
let store: RedisStore;
beforeAll(async () => {
  redis = await startRedis();
  store = createRedisStore(redisStoreConfig({ url: redis.url, commandTimeout: COMMAND_TIMEOUT }));
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

/** Calls `call` every 50 ms until it succeeds; the ms that took. */
async function timeToRecovery(call: () => Promise<unknown>, limitMs = 5000): Promise<number> {
  const started = performance.now();
  for (;;) {
    try {
      await call();
      return performance.now() - started;
    } catch (error) {
      expect(error).toBeInstanceOf(StoreUnavailableError);
      if (performance.now() - started > limitMs) throw error;
      await sleep(50);
    }
  }
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
    const s = spec("rl:a");
    expect(await store.take(s, 5)).toMatchObject({ allowed: true, msToNext: 0 });
    const refused = await store.take(s, 1);
    expect(refused.allowed).toBe(false);
    // Redis TIME moves between calls: the numbers are close to, not equal to, the fake-time ones.
    expect(refused.msToNext).toBeGreaterThan(80);
    expect(refused.msToNext).toBeLessThanOrEqual(100);
    const debt = await store.adjust(s, 3);
    expect(debt.remaining).toBeLessThan(-2.5);
    expect(debt.msToFull).toBeGreaterThan(750);
    expect(await store.adjust(s, -100)).toMatchObject({ remaining: 5, msToFull: 0 });
    await sleep(110);
    expect(await store.take(s, 1)).toMatchObject({ allowed: true, remaining: 4 });
  });

  it("keeps one hash per bucket under prefix{key}, which expires when idle", async () => {
    await store.take(spec("rl:ttl"), 2);
    expect(await redis.cli("hkeys", "floodgate-test:{rl:ttl}")).toBe("tokens\nts");
    const pttl = Number(await redis.cli("pttl", "floodgate-test:{rl:ttl}"));
    expect(pttl).toBeGreaterThan(1000);
    expect(pttl).toBeLessThanOrEqual(200 + 1000);
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
    await store.acquireLease("lease:ttl", "a", 2, 150);
    await store.acquireLease("lease:ttl", "b", 2, 150);
    await sleep(80);
    expect(await store.renewLease("lease:ttl", "a", 300)).toBe(true);
    await sleep(100);
    expect(await store.renewLease("lease:ttl", "b", 300)).toBe(false);
    expect(await store.acquireLease("lease:ttl", "c", 2, 300)).toEqual({ acquired: true, held: 2 });
    expect(await store.acquireLease("lease:ttl", "d", 2, 300)).toEqual({ acquired: false, held: 2 });
    expect(await store.renewLease("lease:none", "a", 300)).toBe(false);
  });
});

describe("RedisStore when Redis fails", () => {
  it("a Redis that stops answering: rejects within commandTimeout, then recovers", async () => {
    await store.take(spec("rl:pause"), 1);
    redis.pause();
    try {
      const elapsed = await timeToFailure(() => store.take(spec("rl:pause"), 1));
      expect(elapsed).toBeGreaterThanOrEqual(COMMAND_TIMEOUT - 5);
      expect(elapsed).toBeLessThan(COMMAND_TIMEOUT + 100);
    } finally {
      redis.resume();
    }
    expect(await timeToRecovery(() => store.take(spec("rl:pause"), 1))).toBeLessThan(3000);
  });

  it("a killed Redis: rejects fast, never hangs; restarted on the same port: works again", async () => {
    await store.take(spec("rl:kill"), 1);
    // A call in flight when the server dies.
    const inFlight = store.take(spec("rl:kill"), 1).then(
      () => "answered",
      (error: unknown) => error,
    );
    await redis.kill();
    const outcome = await inFlight;
    if (outcome !== "answered") expect(outcome).toBeInstanceOf(StoreUnavailableError);
    for (let i = 0; i < 5; i++) {
      expect(await timeToFailure(() => store.take(spec("rl:kill"), 1))).toBeLessThan(COMMAND_TIMEOUT + 100);
      expect(await timeToFailure(() => store.acquireLease("lease:kill", "a", 1, 1000))).toBeLessThan(
        COMMAND_TIMEOUT + 100,
      );
      await sleep(100);
    }
    await redis.restart();
    expect(await timeToRecovery(() => store.take(spec("rl:kill"), 1))).toBeLessThan(3000);
    // The restarted server is empty: the bucket starts full, scripts are reloaded by EVAL.
    expect(await store.take(spec("rl:kill"), 0)).toMatchObject({ allowed: true });
  });

  it("a Redis never reached: rejects within commandTimeout", async () => {
    const nowhere = createRedisStore(
      redisStoreConfig({ url: "redis://127.0.0.1:1", commandTimeout: COMMAND_TIMEOUT }),
    );
    try {
      for (let i = 0; i < 3; i++) {
        expect(await timeToFailure(() => nowhere.take(spec("rl:x"), 1))).toBeLessThan(COMMAND_TIMEOUT + 100);
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
    expect(performance.now() - started).toBeLessThan(300);
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
