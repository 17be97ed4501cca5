/**
 * RedisStore blobs and locks on a real redis-server and a 3-master Cluster: binary values, TTLs,
 * lock ownership, purge by prefix (glob characters in it; every master; no CROSSSLOT), and a
 * Redis that dies.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisStore, type RedisStore } from "../../../src/store/redis-store.js";
import { StoreUnavailableError } from "../../../src/store/types.js";
import { eventually, sleep } from "../../helpers/eventually.js";
import { startRedis, startRedisCluster, type TestRedis, type TestRedisCluster } from "../../helpers/redis.js";
import { redisStoreConfig } from "./store-config.js";

// The stores take the generous default deadline: 1,200 concurrent writes on a busy two-core
// machine can take seconds. Only the test of a dead Redis uses a short one.
const COMMAND_TIMEOUT = 200;
/** Timer lag allowed past that deadline on a busy machine. */
const LAG = 1000;
const bytes = (text: string) => Buffer.from(text);

let redis: TestRedis;
let cluster: TestRedisCluster;
let store: RedisStore;
let clusterStore: RedisStore;
beforeAll(async () => {
  [redis, cluster] = await Promise.all([startRedis(), startRedisCluster(3)]);
  store = createRedisStore(redisStoreConfig({ url: redis.url }));
  clusterStore = createRedisStore(redisStoreConfig({ nodes: cluster.nodes.slice(0, 1) }));
}, 30_000);
afterAll(async () => {
  await Promise.all([store?.close(), clusterStore?.close()]);
  await Promise.all([redis?.stop(), cluster?.stop()]);
});

/** Sets `count` blobs `${prefix}${i}` concurrently. */
async function fill(target: RedisStore, prefix: string, count: number): Promise<void> {
  await Promise.all(
    Array.from({ length: count }, (_, i) => target.setBlob(`${prefix}${i}`, bytes(`v${i}`), 60_000)),
  );
}

/** Every key of a node (or server) matching a pattern, through redis-cli --scan. */
function scanKeys(url: string, pattern: string): Promise<string[]> {
  return new Promise((resolve, reject) =>
    execFile(
      "/usr/bin/redis-cli",
      ["-h", "127.0.0.1", "-p", new URL(url).port, "--scan", "--pattern", pattern],
      (error, stdout) => (error ? reject(error) : resolve(stdout.split("\n").filter((line) => line !== ""))),
    ),
  );
}

describe("RedisStore blobs", () => {
  it("round-trips binary values (zero bytes, invalid UTF-8, 1 MiB) under prefix blob:{key}", async () => {
    const binary = Buffer.from([0, 0xff, 0, 0xfe, 0xc3, 0x28, 0, 0x0d, 0x0a, 0]);
    await store.setBlob("cache:bin", binary, 60_000);
    expect(await store.getBlob("cache:bin")).toEqual(binary);
    expect(store.blobKeyOf("cache:bin")).toBe("floodgate-test:blob:{cache:bin}");
    expect(await redis.cli("strlen", "floodgate-test:blob:{cache:bin}")).toBe("10");
    const large = randomBytes(1024 * 1024);
    await store.setBlob("cache:large", large, 60_000);
    expect((await store.getBlob("cache:large"))?.equals(large)).toBe(true);
    expect(await store.getBlob("cache:absent")).toBeUndefined();
  });

  it("expires after ttlMs; a rewrite replaces value and TTL; delete removes", async () => {
    // The TTL is read on a long one (redis-cli may take a while to start); expiry is seen on a
    // short one, after a sleep that outlasts it.
    const started = performance.now();
    await store.setBlob("cache:ttl-long", bytes("long"), 60_000);
    const pttl = Number(await redis.cli("pttl", store.blobKeyOf("cache:ttl-long")));
    expect(pttl).toBeLessThanOrEqual(60_000);
    expect(pttl).toBeGreaterThanOrEqual(60_000 - (performance.now() - started) - 1);
    await store.setBlob("cache:ttl", bytes("short"), 100);
    await sleep(150);
    expect(await store.getBlob("cache:ttl")).toBeUndefined();
    await store.setBlob("cache:re", bytes("one"), 100);
    await store.setBlob("cache:re", bytes("two"), 60_000);
    await sleep(150);
    expect(await store.getBlob("cache:re")).toEqual(bytes("two"));
    await store.deleteBlob("cache:re");
    await store.deleteBlob("cache:never");
    expect(await store.getBlob("cache:re")).toBeUndefined();
  });

  it("rejects a ttl SET PX would refuse without calling Redis", async () => {
    await expect(store.setBlob("cache:bad", bytes("x"), 0)).rejects.toThrow(RangeError);
    await expect(store.acquireLock("cache:bad", "o", Number.NaN)).rejects.toThrow(RangeError);
  });
});

describe("RedisStore locks", () => {
  it("NX: one holder at a time, the holder included; expiry frees it", async () => {
    // Held long enough that no stall expires it early; then its expiry is brought forward.
    const started = performance.now();
    expect(await store.acquireLock("lock:a", "one", 60_000)).toBe(true);
    expect(await store.acquireLock("lock:a", "two", 100)).toBe(false);
    expect(await store.acquireLock("lock:a", "one", 100)).toBe(false);
    expect(await redis.cli("get", store.lockKeyOf("lock:a"))).toBe("one");
    const pttl = Number(await redis.cli("pttl", store.lockKeyOf("lock:a")));
    expect(pttl).toBeLessThanOrEqual(60_000);
    expect(pttl).toBeGreaterThanOrEqual(60_000 - (performance.now() - started) - 1);
    await redis.cli("pexpire", store.lockKeyOf("lock:a"), "1");
    await sleep(10);
    expect(await store.acquireLock("lock:a", "two", 60_000)).toBe(true);
    // And a short one ends by itself.
    expect(await store.acquireLock("lock:b", "one", 100)).toBe(true);
    await sleep(150);
    expect(await store.acquireLock("lock:b", "two", 60_000)).toBe(true);
  });

  it("is released only by its owner; a late release does not free a new holder's lock", async () => {
    await store.acquireLock("lock:r", "one", 60_000);
    await store.releaseLock("lock:r", "two");
    expect(await store.acquireLock("lock:r", "two", 100)).toBe(false);
    await store.releaseLock("lock:r", "one");
    expect(await store.acquireLock("lock:r", "two", 100)).toBe(true);
    await sleep(150);
    expect(await store.acquireLock("lock:r", "three", 60_000)).toBe(true);
    await store.releaseLock("lock:r", "two");
    expect(await redis.cli("get", store.lockKeyOf("lock:r"))).toBe("three");
  });

  it("a lock and a blob on one logical key do not collide", async () => {
    await store.setBlob("cache:guarded", bytes("body"), 60_000);
    expect(await store.acquireLock("cache:guarded", "o", 60_000)).toBe(true);
    await store.setBlob("cache:guarded", bytes("body2"), 60_000);
    expect(await store.getBlob("cache:guarded")).toEqual(bytes("body2"));
    await store.releaseLock("cache:guarded", "o");
    expect(await redis.cli("exists", store.lockKeyOf("cache:guarded"))).toBe("0");
    expect(await store.getBlob("cache:guarded")).toEqual(bytes("body2"));
  });
});

describe("RedisStore purge by prefix", () => {
  it("deletes many blobs (several SCAN steps) and only blobs under the prefix", async () => {
    await fill(store, "purge:m1:", 1200);
    await fill(store, "purge:m2:", 30);
    await fill(store, "purge:m1", 1);
    await store.acquireLock("purge:m1:0", "o", 60_000);
    await store.take({ key: "purge:m1:bucket", ratePerSec: 1, burst: 5 }, 1);
    await store.acquireLease("purge:m1:lease", "r", 1, 60_000);
    expect(await store.deleteBlobsByPrefix("purge:m1:")).toBe(1200);
    expect(await scanKeys(redis.url, "floodgate-test:blob:{purge:m1:*")).toEqual([]);
    expect(await scanKeys(redis.url, "floodgate-test:blob:{purge:*")).toHaveLength(31);
    expect(await redis.cli("exists", store.lockKeyOf("purge:m1:0"))).toBe("1");
    expect(await redis.cli("exists", store.keyOf("purge:m1:bucket"), store.keyOf("purge:m1:lease"))).toBe(
      "2",
    );
    expect(await store.deleteBlobsByPrefix("purge:m1:")).toBe(0);
  });

  it("matches glob characters in the logical prefix literally", async () => {
    // Each prefix, then blobs an unescaped pattern would (wrongly) match too.
    const cases: [string, string[]][] = [
      ["glob:a*b:", ["glob:aXb:1", "glob:a-long-b:1"]],
      ["glob:[ab]:", ["glob:a:1", "glob:b:1"]],
      ["glob:?:", ["glob:x:1"]],
      ["glob:x]y:", []],
      ["glob:back\\", ["glob:back*1"]],
      ["glob:{}^-:", []],
    ];
    for (const [prefix, others] of cases) {
      await fill(store, prefix, 3);
      for (const other of others) await store.setBlob(other, bytes("keep"), 60_000);
      expect(await store.deleteBlobsByPrefix(prefix), prefix).toBe(3);
      for (const other of others) expect(await store.getBlob(other), other).toEqual(bytes("keep"));
    }
  });

  it("escapes glob characters in keyPrefix too, and leaves other prefixes' blobs alone", async () => {
    const odd = createRedisStore(
      redisStoreConfig({ url: redis.url, keyPrefix: "ft[1]*?:", commandTimeout: COMMAND_TIMEOUT }),
    );
    try {
      expect(odd.keyPrefix).toBe("ft[1]*?:");
      await store.setBlob("shared:1", bytes("main"), 60_000);
      await fill(odd, "shared:", 5);
      await redis.cli("set", "ft1xy:blob:{shared:9}", "lookalike");
      expect(await odd.deleteBlobsByPrefix("shared:")).toBe(5);
      expect(await store.getBlob("shared:1")).toEqual(bytes("main"));
      expect(await redis.cli("get", "ft1xy:blob:{shared:9}")).toBe("lookalike");
    } finally {
      await odd.close();
    }
  });

  it("clear removes blobs and locks under the prefix as well as buckets", async () => {
    await fill(store, "clr:", 5);
    await store.acquireLock("clr:lock", "o", 60_000);
    await store.take({ key: "clr:bucket", ratePerSec: 1, burst: 5 }, 1);
    await store.setBlob("clx:keep", bytes("keep"), 60_000);
    await store.clear("clr:");
    expect(await scanKeys(redis.url, "*clr:*")).toEqual([]);
    expect(await store.getBlob("clx:keep")).toEqual(bytes("keep"));
  });
});

describe("RedisStore blobs on a 3-master Cluster", () => {
  it("purges 300 blobs spread over every master, nothing else, without CROSSSLOT", async () => {
    await fill(clusterStore, "cache:model-a:", 300);
    await fill(clusterStore, "cache:model-b:", 40);
    await clusterStore.acquireLock("cache:model-a:7", "o", 60_000);
    await clusterStore.take({ key: "cache:model-a:bucket", ratePerSec: 1, burst: 5 }, 1);
    const perMaster = await Promise.all(
      cluster.nodes.map(async (url) => (await scanKeys(url, "floodgate-test:blob:{cache:model-a:*")).length),
    );
    expect(perMaster.reduce((a, b) => a + b)).toBe(300);
    for (const count of perMaster) expect(count).toBeGreaterThan(0);
    const binary = Buffer.from([0, 1, 0, 0xff]);
    await clusterStore.setBlob("cache:model-a:bin", binary, 60_000);
    expect(await clusterStore.getBlob("cache:model-a:bin")).toEqual(binary);

    expect(await clusterStore.deleteBlobsByPrefix("cache:model-a:")).toBe(301);
    for (const url of cluster.nodes) {
      expect(await scanKeys(url, "floodgate-test:blob:{cache:model-a:*")).toEqual([]);
    }
    const left = await Promise.all(cluster.nodes.map((url) => scanKeys(url, "floodgate-test:*")));
    const leftKeys = left.flat();
    expect(leftKeys.filter((key) => key.startsWith("floodgate-test:blob:{cache:model-b:"))).toHaveLength(40);
    expect(leftKeys).toContain("floodgate-test:lock:{cache:model-a:7}");
    expect(leftKeys).toContain("floodgate-test:{cache:model-a:bucket}");
    expect(leftKeys).toHaveLength(42);
    const errors = await Promise.all(
      cluster.nodes.map(
        (url) =>
          new Promise<string>((resolve, reject) =>
            execFile(
              "/usr/bin/redis-cli",
              ["-h", "127.0.0.1", "-p", new URL(url).port, "info", "errorstats"],
              (error, stdout) => (error ? reject(error) : resolve(stdout)),
            ),
          ),
      ),
    );
    for (const info of errors) expect(info).not.toContain("CROSSSLOT");
  });

  it("locks work across slots: owner release, NX", async () => {
    for (let i = 0; i < 20; i++) expect(await clusterStore.acquireLock(`lk:${i}`, "a", 60_000)).toBe(true);
    for (let i = 0; i < 20; i++) expect(await clusterStore.acquireLock(`lk:${i}`, "b", 60_000)).toBe(false);
    for (let i = 0; i < 20; i++) await clusterStore.releaseLock(`lk:${i}`, "a");
    for (let i = 0; i < 20; i++) expect(await clusterStore.acquireLock(`lk:${i}`, "b", 60_000)).toBe(true);
  });
});

describe("RedisStore blobs when Redis dies", () => {
  it("a killed Redis: every call rejects with StoreUnavailableError within commandTimeout", async () => {
    const short = createRedisStore(redisStoreConfig({ url: redis.url, commandTimeout: COMMAND_TIMEOUT }));
    try {
      await eventually(() => short.setBlob("cache:kill", bytes("x"), 60_000).then(() => true));
      const inFlight = short.getBlob("cache:kill").then(
        () => "answered",
        (error: unknown) => error,
      );
      await redis.kill();
      const outcome = await inFlight;
      if (outcome !== "answered") expect(outcome).toBeInstanceOf(StoreUnavailableError);
      const calls: (() => Promise<unknown>)[] = [
        () => short.getBlob("cache:kill"),
        () => short.setBlob("cache:kill", bytes("y"), 1000),
        () => short.acquireLock("cache:kill", "o", 1000),
        () => short.releaseLock("cache:kill", "o"),
        () => short.deleteBlobsByPrefix("cache:"),
      ];
      for (let i = 0; i < 3; i++) {
        for (const call of calls) {
          const started = performance.now();
          await expect(call()).rejects.toBeInstanceOf(StoreUnavailableError);
          expect(performance.now() - started).toBeLessThan(COMMAND_TIMEOUT + LAG);
        }
        await sleep(100);
      }
    } finally {
      await short.close();
    }
  });
});
