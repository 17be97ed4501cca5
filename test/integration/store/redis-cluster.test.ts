/** RedisStore on a real 3-master Redis Cluster: keys spread over every node, never CROSSSLOT. */
import { createServer, type Server, type Socket, connect as tcpConnect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisStore, type RedisStore } from "../../../src/store/redis-store.js";
import { StoreUnavailableError } from "../../../src/store/types.js";
import { eventually } from "../../helpers/eventually.js";
import { startRedisCluster, type TestRedisCluster } from "../../helpers/redis.js";
import { redisStoreConfig } from "./store-config.js";

// The store takes the generous default deadline: these tests are about where keys go, not
// latency, and 150 calls right after connecting can take long on a loaded machine. Only the
// test of a cluster that went away uses a short one.
const COMMAND_TIMEOUT = 200;
/** Timer lag allowed past that deadline on a busy machine. */
const LAG = 1000;
let cluster: TestRedisCluster;
let store: RedisStore;
beforeAll(async () => {
  cluster = await startRedisCluster(3);
  store = createRedisStore(redisStoreConfig({ nodes: cluster.nodes.slice(0, 1) }));
}, 30_000);
afterAll(async () => {
  await store?.close();
  await cluster?.stop();
});

const KEYS = Array.from({ length: 150 }, (_, i) => `tenant-${i}`);

async function everyKey(): Promise<void> {
  const buckets = await Promise.all(
    KEYS.map((k) => store.take({ key: `rl:req:${k}`, ratePerSec: 1, burst: 10 }, 3)),
  );
  for (const b of buckets) expect(b.allowed).toBe(true);
  const leases = await Promise.all(KEYS.map((k) => store.acquireLease(`inflight:${k}`, "r1", 5, 10_000)));
  for (const l of leases) expect(l.acquired).toBe(true);
}

describe("RedisStore on Redis Cluster", () => {
  it("buckets and leases on many keys, spread over all three masters", async () => {
    await everyKey();
    const adjusted = await store.adjust({ key: "rl:req:adjusted", ratePerSec: 1, burst: 10 }, 20);
    expect(adjusted.remaining).toBe(-10);
    expect(await store.renewLease("inflight:tenant-7", "r1", 10_000)).toBe(true);
    await store.releaseLease("inflight:tenant-7", "r1");
    expect(await store.renewLease("inflight:tenant-7", "r1", 10_000)).toBe(false);
    // Only one seed node was configured: ioredis found the other two from CLUSTER SLOTS.
    const masters = (await Promise.all(cluster.nodes.map((url) => dbsize(url)))).filter((n) => n > 0);
    expect(masters).toHaveLength(3);
  });

  it("takeAll over buckets on different nodes: one call each, and a refusal gives back what was taken", async () => {
    const limit = { key: "rl:all:the-limit", ratePerSec: 0.001, burst: 1 };
    const others = KEYS.slice(0, 6).map((k) => ({
      spec: { key: `rl:all:${k}`, ratePerSec: 0.001, burst: 5 },
      cost: 1,
    }));
    const tokens = {
      spec: { key: "tok:all:tenant-1", ratePerSec: 0.001, burst: 100 },
      cost: 30,
      optional: true,
    };
    const first = await store.takeAll([{ spec: limit, cost: 1 }, ...others, tokens]);
    expect(first.taken).toBe(true);
    expect(first.results.every((r) => r.allowed)).toBe(true);
    // The limit is spent: refused, and what the others took is given back.
    const refused = await store.takeAll([{ spec: limit, cost: 1 }, ...others, tokens]);
    expect(refused.taken).toBe(false);
    expect(refused.results[0]?.allowed).toBe(false);
    for (const o of others) expect(Math.floor((await store.take(o.spec, 0)).remaining)).toBe(4);
    expect(Math.floor((await store.take(tokens.spec, 0)).remaining)).toBe(70);
    // The buckets sat on more than one master (else this tested nothing of a cluster).
    const holding = await Promise.all(
      cluster.nodes.map((url) => cli(url, "--scan", "--pattern", "*{rl:all:*")),
    );
    expect(holding.filter((keys) => keys !== "").length).toBeGreaterThan(1);
    await store.clear("rl:all:");
    await store.clear("tok:all:");
  });

  it("still works after SCRIPT FLUSH on every node (NOSCRIPT → EVAL through the cluster)", async () => {
    await Promise.all(cluster.nodes.map((url) => cli(url, "script", "flush")));
    await Promise.all(cluster.nodes.map((url) => cli(url, "config", "resetstat")));
    await everyKey();
    // Every master answered NOSCRIPT at least once, and the calls still succeeded.
    const noscript = await Promise.all(
      cluster.nodes.map(async (url) =>
        /errorstat_NOSCRIPT:count=(\d+)/.exec(await cli(url, "info", "errorstats")),
      ),
    );
    for (const match of noscript) expect(Number(match?.[1])).toBeGreaterThan(0);
  });

  it("clear removes the keys under a prefix on every master", async () => {
    await store.clear("rl:req:");
    await store.clear("inflight:");
    const sizes = await Promise.all(cluster.nodes.map((url) => dbsize(url)));
    expect(sizes).toEqual([0, 0, 0]);
  });

  it("a seed node slower than commandTimeout but within slotsRefreshTimeout: the store connects", async () => {
    // Every reply of the seed arrives 150 ms late (three times commandTimeout), as from a busy
    // host: when commandTimeout was handed to ioredis, its CLUSTER SLOTS timed out at 50 ms, the
    // Cluster closed and retried forever, and no call ever succeeded.
    const proxy = await delayingProxy(Number(new URL(cluster.nodes[0] ?? "").port), 150);
    const slow = createRedisStore(
      redisStoreConfig({ nodes: [proxy.url], commandTimeout: 50, connectTimeout: 1000 }),
    );
    try {
      // A call through the proxy cannot answer within commandTimeout, so any call that answers
      // went straight to a master (the seed, the proxy's address, is not in CLUSTER SLOTS). A
      // loaded machine may miss the 50 ms on a direct call too: those are tried again.
      const answers = async () => {
        try {
          return await slow.take({ key: "rl:req:slow-seed", ratePerSec: 1, burst: 10 }, 1);
        } catch (error) {
          expect(error).toBeInstanceOf(StoreUnavailableError);
          return undefined;
        }
      };
      const options = { timeout: 15_000, interval: 50, what: "a call through the slow seed's cluster" };
      expect(await eventually(answers, options)).toMatchObject({ allowed: true });
      expect(await eventually(answers, options)).toMatchObject({ allowed: true });
    } finally {
      await slow.close();
      await proxy.close();
    }
  });

  it("a cluster that went away: calls reject within commandTimeout, never hang", async () => {
    const short = createRedisStore(
      redisStoreConfig({ nodes: cluster.nodes.slice(0, 1), commandTimeout: COMMAND_TIMEOUT }),
    );
    try {
      const take = (key: string) => short.take({ key: `rl:req:${key}`, ratePerSec: 1, burst: 10 }, 1);
      await eventually(() =>
        take("connect").then(
          () => true,
          () => false,
        ),
      );
      await cluster.stop();
      for (let i = 0; i < 4; i++) {
        const started = performance.now();
        await expect(take(KEYS[i] ?? "")).rejects.toBeInstanceOf(StoreUnavailableError);
        expect(performance.now() - started).toBeLessThan(COMMAND_TIMEOUT + LAG);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    } finally {
      await short.close();
    }
  }, 30_000);
});

async function cli(url: string, ...args: string[]): Promise<string> {
  const { execFile } = await import("node:child_process");
  const port = new URL(url).port;
  return new Promise((resolve, reject) =>
    execFile("/usr/bin/redis-cli", ["-p", port, ...args], (error, stdout) =>
      error ? reject(error) : resolve(stdout.trim()),
    ),
  );
}

/** A TCP proxy to 127.0.0.1:port that holds every chunk from the server for `delayMs`. */
async function delayingProxy(
  port: number,
  delayMs: number,
): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = tcpConnect(port, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("error", () => undefined);
      socket.on("close", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => setTimeout(() => client.writable && client.write(chunk), delayMs));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("proxy has no port");
  return {
    url: `redis://127.0.0.1:${address.port}`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function dbsize(url: string): Promise<number> {
  return Number(await cli(url, "dbsize"));
}
