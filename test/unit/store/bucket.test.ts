import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  applyBucket,
  applyTakes,
  type BucketOp,
  type BucketState,
  EPSILON_PER_TOKEN,
  IDLE_MARGIN_MS,
} from "../../../src/store/bucket.js";
import type { BucketTake } from "../../../src/store/types.js";

/** A bucket driven by a fake clock: each call says when (ms) it happens. */
function bucket(ratePerSec: number, burst: number, state?: BucketState) {
  let current = state;
  return {
    call(op: BucketOp, amount: number, now: number) {
      const step = applyBucket(current, op, amount, ratePerSec, burst, now);
      current = step.state;
      return { ...step.result, expireMs: step.expireMs, ts: step.state.ts };
    },
  };
}

describe("token bucket arithmetic (10 tokens/s, burst 5)", () => {
  it("starts full, takes, refuses when empty, and says when to come back", () => {
    const b = bucket(10, 5);
    expect(b.call("take", 1, 0)).toMatchObject({ allowed: true, remaining: 4, msToNext: 0, msToFull: 100 });
    expect(b.call("take", 4, 0)).toMatchObject({ allowed: true, remaining: 0, msToNext: 0, msToFull: 500 });
    expect(b.call("take", 1, 0)).toMatchObject({
      allowed: false,
      remaining: 0,
      msToNext: 100,
      msToFull: 500,
    });
    expect(b.call("take", 3, 0)).toMatchObject({ allowed: false, remaining: 0, msToNext: 300 });
  });

  it("refills fractionally and keeps the fraction", () => {
    const b = bucket(10, 5, { tokens: 0, ts: 0 });
    expect(b.call("take", 1, 50)).toMatchObject({
      allowed: false,
      remaining: 0.5,
      msToNext: 50,
      msToFull: 450,
    });
    expect(b.call("take", 1, 100)).toMatchObject({ allowed: true, remaining: 0, msToNext: 0 });
    expect(b.call("take", 0, 125)).toMatchObject({ allowed: true, remaining: 0.25, msToNext: 75 });
  });

  it("caps the refill at burst", () => {
    const b = bucket(10, 5, { tokens: 0, ts: 0 });
    expect(b.call("take", 0, 60_000)).toMatchObject({ remaining: 5, msToNext: 0, msToFull: 0 });
    expect(b.call("take", 6, 60_000)).toMatchObject({ allowed: false, remaining: 5, msToNext: 100 });
  });

  it("adds nothing when the clock goes back, and keeps ts", () => {
    const b = bucket(10, 5, { tokens: 0, ts: 1000 });
    expect(b.call("take", 0, 500)).toMatchObject({ remaining: 0, ts: 1000 });
    expect(b.call("take", 1, 1100)).toMatchObject({ allowed: true, remaining: 0, ts: 1100 });
  });

  it("adjust charges into debt, refill pays it back, refunds stop at burst", () => {
    const b = bucket(10, 5);
    expect(b.call("adjust", 8, 0)).toMatchObject({
      allowed: true,
      remaining: -3,
      msToNext: 400,
      msToFull: 800,
    });
    // In debt, a read is not allowed and a take waits for the debt and the cost.
    expect(b.call("take", 0, 0)).toMatchObject({ allowed: false, remaining: -3, msToNext: 400 });
    expect(b.call("take", 2, 100)).toMatchObject({ allowed: false, remaining: -2, msToNext: 400 });
    expect(b.call("take", 0, 300)).toMatchObject({
      allowed: true,
      remaining: 0,
      msToNext: 100,
      msToFull: 500,
    });
    expect(b.call("adjust", -100, 300)).toMatchObject({ remaining: 5, msToNext: 0, msToFull: 0 });
    expect(b.call("adjust", -1, 300)).toMatchObject({ remaining: 5 });
  });

  it("treats a negative take as a read (refunds go through adjust)", () => {
    const b = bucket(10, 5, { tokens: 2, ts: 0 });
    expect(b.call("take", -3, 0)).toMatchObject({ allowed: true, remaining: 2, msToNext: 0, msToFull: 300 });
  });

  it("never admits a cost above burst", () => {
    const b = bucket(10, 5);
    expect(b.call("take", 5.5, 1e9)).toMatchObject({ allowed: false, remaining: 5, msToNext: 50 });
  });

  it("expires an idle bucket once it is full, plus a margin", () => {
    const b = bucket(10, 5);
    expect(b.call("take", 0, 0).expireMs).toBe(IDLE_MARGIN_MS);
    expect(b.call("take", 2.05, 0).expireMs).toBe(205 + IDLE_MARGIN_MS);
    expect(b.call("adjust", 1e30, 0).expireMs).toBe(1e13);
  });

  it("admits a take that float drift left a hair short", () => {
    // 1000 steps of 1 ms at 7 tokens/s add up to 6.999999999999879 tokens, not 7.
    const b = bucket(7, 10, { tokens: 0, ts: 0 });
    for (let t = 1; t < 1000; t++) b.call("take", 0, t);
    expect(b.call("take", 7, 1000)).toMatchObject({ allowed: true, msToNext: 0 });
  });
});

describe("token bucket properties", () => {
  const spec = fc.record({
    ratePerSec: fc.double({ min: 0.01, max: 1000, noNaN: true }),
    burst: fc.double({ min: 0.5, max: 1000, noNaN: true }),
  });

  it("never admits more than burst + rate × elapsed (fractional costs, clock steps back and forth)", () => {
    const step = fc.record({
      dt: fc.oneof(fc.double({ min: -500, max: 2000, noNaN: true }), fc.constant(0)),
      cost: fc.double({ min: 0, max: 1, noNaN: true }),
    });
    fc.assert(
      fc.property(spec, fc.array(step, { maxLength: 200, size: "max" }), ({ ratePerSec, burst }, steps) => {
        let state: BucketState | undefined;
        let now = 1_000_000;
        let latest = now;
        let admitted = 0;
        for (const { dt, cost } of steps) {
          now += dt;
          latest = Math.max(latest, now);
          const c = cost * burst * 1.2;
          const r = applyBucket(state, "take", c, ratePerSec, burst, now);
          state = r.state;
          if (r.result.allowed) admitted += c;
        }
        const bound = burst + (ratePerSec * (latest - 1_000_000)) / 1000;
        expect(admitted).toBeLessThanOrEqual(bound + EPSILON_PER_TOKEN * Math.max(1, burst) + 1e-9 * bound);
      }),
      { numRuns: 500 },
    );
  });

  it("refills exact to the token: after draining, floor(rate × t) unit takes succeed at t", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 1, max: 1000 }),
        fc.array(fc.integer({ min: 0, max: 20 }), { maxLength: 300, size: "max" }),
        fc.boolean(),
        (ratePerSec, burst, reads, wholeSeconds) => {
          let state: BucketState | undefined;
          const take = (cost: number, now: number) => {
            const r = applyBucket(state, "take", cost, ratePerSec, burst, now);
            state = r.state;
            return r.result;
          };
          for (let i = 0; i < burst; i++) expect(take(1, 0).allowed).toBe(true);
          expect(take(1, 0).allowed).toBe(false);
          // Reads at intermediate times apply the refill in many small steps (float drift).
          let t = 0;
          for (const dt of reads) {
            t += dt;
            take(0, t);
          }
          // Whole seconds make rate × t an exact integer: the case drift would get wrong.
          if (wholeSeconds) t = Math.max(1, Math.ceil(t / 1000)) * 1000;
          let admitted = 0;
          while (admitted <= burst && take(1, t).allowed) admitted++;
          expect(admitted).toBe(Math.min(burst, Math.floor((ratePerSec * t) / 1000)));
        },
      ),
      { numRuns: 200 },
    );
  });

  it("msToNext is honest: waiting that long makes the refused take succeed", () => {
    fc.assert(
      fc.property(
        spec,
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        ({ ratePerSec, burst }, level, cost) => {
          const c = cost * burst;
          const start = { tokens: level * burst, ts: 0 };
          const first = applyBucket(start, "take", c, ratePerSec, burst, 0);
          if (first.result.allowed) return;
          const later = applyBucket(start, "take", c, ratePerSec, burst, first.result.msToNext);
          expect(later.result.allowed).toBe(true);
          // and msToFull is when the bucket is full
          const full = applyBucket(start, "take", 0, ratePerSec, burst, first.result.msToFull);
          expect(full.result.remaining).toBeCloseTo(burst, 6);
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe("several buckets at once (applyTakes)", () => {
  const a = { key: "a", ratePerSec: 10, burst: 5 };
  const b = { key: "b", ratePerSec: 1, burst: 2 };
  const t = { key: "t", ratePerSec: 100, burst: 1000 };

  it("takes every required bucket when each fits, each as applyBucket would", () => {
    const states = [{ tokens: 3, ts: 0 }, undefined, { tokens: 500, ts: 0 }];
    const takes: BucketTake[] = [
      { spec: a, cost: 1 },
      { spec: b, cost: 1 },
      { spec: t, cost: 200, optional: true },
    ];
    const r = applyTakes(states, takes, 100);
    expect(r.taken).toBe(true);
    takes.forEach((take, i) => {
      const alone = applyBucket(states[i], "take", take.cost, take.spec.ratePerSec, take.spec.burst, 100);
      expect(r.steps[i]).toEqual(alone);
    });
  });

  it("one required bucket short: none is taken, each says whether it alone would fit", () => {
    const states = [
      { tokens: 3, ts: 0 },
      { tokens: 0.5, ts: 0 },
      { tokens: 500, ts: 0 },
    ];
    const takes: BucketTake[] = [
      { spec: a, cost: 1 },
      { spec: b, cost: 1 },
      { spec: t, cost: 200, optional: true },
    ];
    const r = applyTakes(states, takes, 100);
    expect(r.taken).toBe(false);
    // a: refilled 3 + 1, untouched; b: refused as alone (0.5 + 0.1 < 1); t: untouched.
    expect(r.steps[0]?.result).toEqual({ allowed: true, remaining: 4, msToNext: 0, msToFull: 100 });
    expect(r.steps[0]?.state).toEqual({ tokens: 4, ts: 100 });
    expect(r.steps[1]).toEqual(applyBucket(states[1], "take", 1, 1, 2, 100));
    expect(r.steps[1]?.result.allowed).toBe(false);
    expect(r.steps[2]?.state).toEqual({ tokens: 510, ts: 100 });
    expect(r.steps[2]?.result).toMatchObject({ allowed: true, remaining: 510, msToNext: 0 });
  });

  it("an optional take that does not fit refuses nothing else", () => {
    const states = [undefined, { tokens: 10, ts: 0 }];
    const takes: BucketTake[] = [
      { spec: a, cost: 1 },
      { spec: t, cost: 200, optional: true },
    ];
    const r = applyTakes(states, takes, 0);
    expect(r.taken).toBe(true);
    expect(r.steps[0]?.result).toMatchObject({ allowed: true, remaining: 4 });
    expect(r.steps[1]).toEqual(applyBucket(states[1], "take", 200, 100, 1000, 0));
    expect(r.steps[1]?.result).toMatchObject({ allowed: false, remaining: 10, msToNext: 1900 });
  });

  it("for any states: taken iff every required take fits; each bucket loses its cost exactly when taken", () => {
    const take = fc.record({
      ratePerSec: fc.double({ min: 0.01, max: 1000, noNaN: true }),
      burst: fc.double({ min: 0.5, max: 1000, noNaN: true }),
      level: fc.double({ min: -0.5, max: 1, noNaN: true }),
      ts: fc.double({ min: 0, max: 2000, noNaN: true }),
      cost: fc.double({ min: 0, max: 1.2, noNaN: true }),
      optional: fc.boolean(),
      fresh: fc.boolean(),
    });
    fc.assert(
      fc.property(
        fc.array(take, { minLength: 1, maxLength: 5 }),
        fc.double({ min: 0, max: 3000, noNaN: true }),
        (ts, now) => {
          const states = ts.map((x) => (x.fresh ? undefined : { tokens: x.level * x.burst, ts: x.ts }));
          const takes: BucketTake[] = ts.map((x, i) => ({
            spec: { key: `k${i}`, ratePerSec: x.ratePerSec, burst: x.burst },
            cost: x.cost * x.burst,
            optional: x.optional,
          }));
          const r = applyTakes(states, takes, now);
          const alone = takes.map((take, i) =>
            applyBucket(states[i], "take", take.cost, take.spec.ratePerSec, take.spec.burst, now),
          );
          expect(r.taken).toBe(takes.every((take, i) => take.optional === true || alone[i]?.result.allowed));
          takes.forEach((take, i) => {
            const fits = alone[i]?.result.allowed === true;
            expect(r.steps[i]?.result.allowed).toBe(fits);
            if (r.taken && fits) expect(r.steps[i]).toEqual(alone[i]);
            else {
              // Not taken: the state of a refused take (the tokens as refilled).
              const untouched = applyBucket(
                states[i],
                "take",
                Number.POSITIVE_INFINITY,
                take.spec.ratePerSec,
                take.spec.burst,
                now,
              );
              expect(r.steps[i]?.state).toEqual(untouched.state);
              expect(r.steps[i]?.expireMs).toBe(untouched.expireMs);
            }
          });
        },
      ),
      { numRuns: 500 },
    );
  });
});
