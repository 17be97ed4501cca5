/**
 * RedisJobQueue on a real redis-server: the JobQueue contract with two queues (two replicas'
 * connections) on one Redis, then what only Redis has: a Cluster, the keys left behind, and a
 * Redis that cannot answer.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createJobQueue } from "../../../src/jobs/index.js";
import { createRedisJobQueue, type RedisJobQueue } from "../../../src/jobs/redis-queue.js";
import type { JobQueue } from "../../../src/jobs/types.js";
import { StoreUnavailableError } from "../../../src/store/types.js";
import { sleep } from "../../helpers/eventually.js";
import { startRedis, startRedisCluster, type TestRedis } from "../../helpers/redis.js";
import { describeJobQueue, job } from "../../unit/jobs/queue-contract.js";
import { redisStoreConfig } from "../store/store-config.js";

/** What the contract lets lapse: long enough for a few calls on a loaded machine. */
const SHORT = 1000;
const answer = { status: 200, headers: {}, body: "{}" };

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

let queues = 0;
/** A queue of its own name per test: tests share the server, never keys. */
function pair(name = `jobs-${++queues}`): [RedisJobQueue, RedisJobQueue] {
  const config = redisStoreConfig({ url: redis.url });
  return [
    createRedisJobQueue(config, { name, expiredTtlMs: SHORT }),
    createRedisJobQueue(config, { name, expiredTtlMs: SHORT }),
  ];
}

describeJobQueue("RedisJobQueue", async () => {
  const [queue, peer] = pair();
  return {
    queue,
    peer,
    now: () => Date.now(),
    pass: (ms: number) => sleep(ms + 10),
    short: SHORT,
    close: async () => {
      await Promise.all([queue.close(), peer.close()]);
    },
  };
});

describe("RedisJobQueue", () => {
  it("is what createJobQueue makes for store: redis, and uses the store's key prefix", async () => {
    const queue = createJobQueue(redisStoreConfig({ url: redis.url, keyPrefix: "fg-jobs:" }));
    try {
      await queue.enqueue([job("p1")], 1);
      expect(await redis.cli("exists", "fg-jobs:jobs:{jobs}:job:p1")).toBe("1");
    } finally {
      await queue.close();
    }
  });

  it("leaves no key behind once every job ended and its ttl passed", async () => {
    const [queue] = pair("tidy");
    try {
      const t = Date.now();
      const jobs = Array.from({ length: 450 }, (_, i) => job(`t${i}`, { group: "g", seq: i }));
      await queue.enqueue(jobs, 1000);
      await queue.enqueue([job("windowed", { expiresAt: t + SHORT })], 1000);
      await queue.claim("A", 60_000, 2);
      await queue.finish("t0", "A", "succeeded", answer, SHORT);
      await queue.release("t1", "A", t);
      expect(await queue.cancelGroup("g", SHORT)).toBe(449);
      await sleep(2 * SHORT + 10);
      expect(await queue.depth()).toBe(0);
      await sleep(2 * SHORT + 10);
      expect(await redis.cli("--scan", "--pattern", "floodgate-test:jobs:{tidy}:*")).toBe("");
    } finally {
      await queue.close();
    }
  });

  it("two replicas draining one queue at random never both hold a job while its lease lives", async () => {
    const [a, b] = pair();
    try {
      const n = 400;
      await a.enqueue(
        Array.from({ length: n }, (_, i) => job(`r${i}`, { runAt: Date.now() - (i % 17) })),
        n,
      );
      /** id → the owner this process saw claim it, until it let go (finish or release). */
      const holders = new Map<string, string>();
      const ended = new Set<string>();
      const replica = async (queue: JobQueue, owner: string, seed: number) => {
        let x = seed;
        const random = () => {
          x = (x * 1103515245 + 12345) % 2147483648;
          return x / 2147483648;
        };
        while (ended.size < n) {
          const claimed = await queue.claim(owner, 60_000, 1 + Math.floor(random() * 5));
          for (const r of claimed) {
            expect(holders.get(r.id)).toBeUndefined();
            holders.set(r.id, owner);
          }
          for (const [id, holder] of [...holders]) {
            if (holder !== owner) continue;
            const roll = random();
            if (roll < 0.5) {
              expect(await queue.finish(id, owner, "succeeded", answer, 60_000)).toBe(true);
              holders.delete(id);
              ended.add(id);
            } else if (roll < 0.7) {
              holders.delete(id);
              expect(await queue.release(id, owner, 0)).toBe(true);
            } else {
              expect(await queue.renew([id], owner, 60_000)).toEqual([]);
            }
          }
          if (claimed.length === 0) await sleep(1);
        }
      };
      await Promise.all([replica(a, "A", 1), replica(b, "B", 2), replica(a, "C", 3), replica(b, "D", 4)]);
      expect(ended.size).toBe(n);
      expect(await a.depth()).toBe(0);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("works on a Redis Cluster: one queue's keys in one slot", { timeout: 60_000 }, async () => {
    const cluster = await startRedisCluster(3);
    const queue = createRedisJobQueue(redisStoreConfig({ nodes: cluster.nodes.slice(0, 1) }));
    try {
      const jobs = Array.from({ length: 450 }, (_, i) => job(`c${i}`, { group: "g", seq: i }));
      expect(await queue.enqueue(jobs, 1000)).toEqual({ accepted: true, unfinished: 450 });
      const [first] = await queue.claim("A", 60_000, 1);
      expect(first?.id).toBe("c0");
      expect(await queue.renew(["c0"], "A", 60_000)).toEqual([]);
      expect(await queue.finish("c0", "A", "succeeded", answer, 60_000)).toBe(true);
      expect((await queue.list("g", 0, 2)).map((r) => r.state)).toEqual(["succeeded", "queued"]);
      expect(await queue.cancelGroup("g", 60_000)).toBe(449);
      expect(await queue.counts("g")).toMatchObject({ total: 450, completed: 1, cancelled: 449 });
    } finally {
      await queue.close();
      await cluster.stop();
    }
  });
});

describe("RedisJobQueue with a Redis that cannot answer", () => {
  /** Short, as in production. */
  const COMMAND_TIMEOUT = 200;
  /** Timer lag allowed past the deadline on a busy machine (ioredis's own socket timeout is 2 s). */
  const LAG = 1000;

  async function everyMethodFailsFast(queue: JobQueue): Promise<void> {
    const calls: [string, () => Promise<unknown>][] = [
      ["enqueue", () => queue.enqueue([job("x")], 10)],
      [
        "enqueue large",
        () =>
          queue.enqueue(
            Array.from({ length: 500 }, (_, i) => job(`l${i}`)),
            1000,
          ),
      ],
      ["get", () => queue.get("x")],
      ["claim", () => queue.claim("A", 1000, 1)],
      ["renew", () => queue.renew(["x"], "A", 1000)],
      ["finish", () => queue.finish("x", "A", "succeeded", answer, 1000)],
      ["release", () => queue.release("x", "A", 0)],
      ["cancel", () => queue.cancel("x", 1000)],
      ["cancelGroup", () => queue.cancelGroup("g", 1000)],
      ["counts", () => queue.counts("g")],
      ["list", () => queue.list("g", 0, 10)],
      ["depth", () => queue.depth()],
    ];
    for (const [name, call] of calls) {
      const started = performance.now();
      await expect(call(), name).rejects.toBeInstanceOf(StoreUnavailableError);
      // A large enqueue makes up to two calls (the reservation, then its give-back), each bounded.
      const bound = name === "enqueue large" ? 3 * COMMAND_TIMEOUT : COMMAND_TIMEOUT;
      expect(performance.now() - started, name).toBeLessThan(bound + LAG);
    }
  }

  it("rejects every method with StoreUnavailableError within the command timeout: paused, then killed", async () => {
    const own = await startRedis();
    const queue = createRedisJobQueue(redisStoreConfig({ url: own.url, commandTimeout: COMMAND_TIMEOUT }));
    try {
      expect(await queue.ready(5000)).toBe(true);
      await queue.enqueue([job("before")], 10);
      own.pause();
      await everyMethodFailsFast(queue);
      own.resume();
      await own.kill();
      await everyMethodFailsFast(queue);
    } finally {
      own.resume();
      await queue.close();
      await own.stop();
    }
  });
});
