/**
 * The bucket Lua on a real redis-server gives bit-identical answers to bucket.ts for the same
 * sequences of calls and clock readings (the script's test-only `now` argument).
 */
import fc from "fast-check";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyBucket, type BucketOp, type BucketState } from "../../../src/store/bucket.js";
import { defineScripts, parseBucketReply } from "../../../src/store/redis-store.js";
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
