/**
 * The bucket Lua on a real redis-server gives bit-identical answers to bucket.ts for the same
 * sequences of calls and clock readings (the script's test-only `now` argument); so does the
 * Lua of several buckets at once, for one request or several (TAKES_LUA ≡ applyTakes, group after
 * group).
 */
import fc from "fast-check";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyBucket, applyTakes, type BucketOp, type BucketState } from "../../../src/store/bucket.js";
import { defineScripts, parseBucketReply, parseTakesReply } from "../../../src/store/redis-store.js";
import type { BucketTake } from "../../../src/store/types.js";
import { startRedis, type TestRedis } from "../../helpers/redis.js";

let redis: TestRedis;
let client: Redis;
beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url, { lazyConnect: true });
  defineScripts(client);
  await client.connect();
});
afterAll(async () => {
  client?.disconnect();
  await redis?.stop();
});

const call = fc.record({
  op: fc.constantFrom<BucketOp>("take", "take", "adjust"),
  /** × burst: takes of 0..1.3 burst (and some negative), adjusts of −1..2 burst. */
  amount: fc.oneof(fc.double({ min: -1, max: 2, noNaN: true }), fc.constantFrom(0, 1, 0.5)),
  /** Clock step in ms: mostly forward, sometimes back, sometimes none. */
  dt: fc.oneof(
    fc.double({ min: -300, max: 3000, noNaN: true }),
    fc.integer({ min: 0, max: 200 }),
    fc.constant(0),
  ),
});

describe("bucket Lua ≡ bucket.ts", () => {
  it("same results and same stored state for random sequences", async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.double({ min: 0.001, max: 100_000, noNaN: true }),
        fc.oneof(fc.double({ min: 0.1, max: 1_000_000, noNaN: true }), fc.integer({ min: 1, max: 100 })),
        fc.double({ min: 1.6e12, max: 1.9e12, noNaN: true }),
        fc.array(call, { minLength: 1, maxLength: 25, size: "max" }),
        async (ratePerSec, burst, start, calls) => {
          const key = `eq:${run++}`;
          let state: BucketState | undefined;
          let now = start;
          for (const { op, amount, dt } of calls) {
            now += dt;
            const a = amount * burst;
            const expected = applyBucket(state, op, a, ratePerSec, burst, now);
            state = expected.state;
            const reply = await client.floodgateBucket(
              key,
              op,
              String(a),
              String(ratePerSec),
              String(burst),
              String(now),
            );
            expect(parseBucketReply(reply)).toEqual(expected.result);
          }
          const [tokens, ts] = await client.hmget(key, "tokens", "ts");
          expect({ tokens: Number(tokens), ts: Number(ts) }).toEqual(state);
          await client.unlink(key);
        },
      ),
      { numRuns: 250 },
    );
  });

  it("sets the idle expiry that bucket.ts computes", async () => {
    const expected = applyBucket(undefined, "take", 7.5, 10, 20, 1e12);
    const started = performance.now();
    await client.floodgateBucket("eq:ttl", "take", "7.5", "10", "20", "1000000000000");
    const pttl = await client.pttl("eq:ttl");
    expect(pttl).toBeLessThanOrEqual(expected.expireMs);
    // Less only by the time between the two calls.
    expect(pttl).toBeGreaterThanOrEqual(expected.expireMs - (performance.now() - started) - 1);
  });
});

/** One bucket of a several-bucket call: its spec, and per call its cost (× burst). */
const member = fc.record({
  ratePerSec: fc.oneof(fc.double({ min: 0.001, max: 100_000, noNaN: true }), fc.integer({ min: 1, max: 50 })),
  burst: fc.oneof(fc.double({ min: 0.1, max: 1_000_000, noNaN: true }), fc.integer({ min: 1, max: 20 })),
  optional: fc.boolean(),
});
/** One request's group in a call: its cost per bucket (× burst), and which buckets it takes. */
const group = fc.record({
  costs: fc.array(fc.oneof(fc.double({ min: -0.2, max: 1.3, noNaN: true }), fc.constantFrom(0, 1, 0.25)), {
    minLength: 4,
    maxLength: 4,
  }),
  uses: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
});
/** One call: a clock step, then one to three requests' groups (the store coalesces several). */
const round = fc.record({
  groups: fc.array(group, { minLength: 1, maxLength: 3 }),
  dt: call.map((c) => c.dt),
});

/** The call's arguments as the store builds them (redis-store.ts, flushTakes). */
function takesArgs(now: string, groups: readonly (readonly BucketTake[])[]): string[] {
  const keys: string[] = [];
  const args = [now, String(groups.length), ...groups.map((g) => String(g.length))];
  for (const takes of groups) {
    for (const t of takes) {
      keys.push(t.spec.key);
      args.push(String(t.cost), String(t.spec.ratePerSec), String(t.spec.burst), t.optional ? "1" : "0");
    }
  }
  return [...keys, ...args];
}

describe("several-bucket Lua ≡ applyTakes", () => {
  it("same results and same stored states for random sequences of calls of several groups", async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(member, { minLength: 1, maxLength: 4 }),
        fc.double({ min: 1.6e12, max: 1.9e12, noNaN: true }),
        fc.array(round, { minLength: 1, maxLength: 12, size: "max" }),
        async (members, start, rounds) => {
          const keys = members.map((_, i) => `eqm:${run}:${i}`);
          run++;
          const states: (BucketState | undefined)[] = members.map(() => undefined);
          let now = start;
          for (const { groups, dt } of rounds) {
            now += dt;
            // Each group: the buckets it uses (at least one), decided after the groups before it.
            const calls = groups.map(({ uses }) => {
              const used = members.flatMap((_, i) => (uses[i] === true ? [i] : []));
              return used.length > 0 ? used : [0];
            });
            const groupTakes = calls.map((used, g) =>
              used.map((i): BucketTake => {
                const m = members[i] as (typeof members)[number];
                return {
                  spec: { key: keys[i] as string, ratePerSec: m.ratePerSec, burst: m.burst },
                  cost: ((groups[g] as (typeof groups)[number]).costs[i] ?? 0) * m.burst,
                  optional: m.optional,
                };
              }),
            );
            const expected = calls.map((used, g) => {
              const step = applyTakes(
                used.map((i) => states[i]),
                groupTakes[g] as BucketTake[],
                now,
              );
              step.steps.forEach((s, j) => {
                states[used[j] as number] = s.state;
              });
              return { taken: step.taken, results: step.steps.map((s) => s.result) };
            });
            const argv = takesArgs(String(now), groupTakes);
            const size = groupTakes.reduce((n, g) => n + g.length, 0);
            const reply = await client.floodgateTakes(size, ...argv);
            expect(
              parseTakesReply(
                reply,
                groupTakes.map((g) => g.length),
              ),
            ).toEqual(expected);
          }
          for (const [i, key] of keys.entries()) {
            const [tokens, ts] = await client.hmget(key, "tokens", "ts");
            if (states[i] === undefined) expect(tokens).toBeNull();
            else expect({ tokens: Number(tokens), ts: Number(ts) }).toEqual(states[i]);
          }
          await client.unlink(...keys);
        },
      ),
      { numRuns: 150 },
    );
  });

  it("sets each bucket's idle expiry as applyTakes computes it", async () => {
    const takes: BucketTake[] = [
      { spec: { key: "eqm:ttl:a", ratePerSec: 10, burst: 20 }, cost: 7.5 },
      { spec: { key: "eqm:ttl:b", ratePerSec: 1, burst: 100 }, cost: 40, optional: true },
    ];
    const expected = applyTakes([undefined, undefined], takes, 1e12);
    const started = performance.now();
    await client.floodgateTakes(2, ...takesArgs("1000000000000", [takes]));
    for (const [i, key] of ["eqm:ttl:a", "eqm:ttl:b"].entries()) {
      const pttl = await client.pttl(key);
      const expireMs = expected.steps[i]?.expireMs ?? 0;
      expect(pttl).toBeLessThanOrEqual(expireMs);
      expect(pttl).toBeGreaterThanOrEqual(expireMs - (performance.now() - started) - 1);
    }
  });
});
