import { afterEach, describe, expect, it } from "vitest";
import { MemoryStore } from "../../../src/store/memory-store.js";

let clock = 0;
let store: MemoryStore;
function fresh(): MemoryStore {
  clock = 0;
  store = new MemoryStore({ now: () => clock, sweepIntervalMs: 0 });
  return store;
}
afterEach(() => store?.close());

const spec = { key: "rl:t", ratePerSec: 10, burst: 5 };

describe("MemoryStore buckets", () => {
  it("takes, adjusts and refills on its clock", async () => {
    const s = fresh();
    expect(s.kind).toBe("memory");
    expect(await s.take(spec, 5)).toMatchObject({ allowed: true, remaining: 0 });
    expect(await s.take(spec, 1)).toMatchObject({ allowed: false, msToNext: 100 });
    clock = 100;
    expect(await s.take(spec, 1)).toMatchObject({ allowed: true, remaining: 0 });
    expect(await s.adjust(spec, 2)).toMatchObject({ remaining: -2, msToNext: 300 });
    expect(await s.adjust(spec, -10)).toMatchObject({ remaining: 5 });
    expect(await s.take({ ...spec, key: "rl:other" }, 1)).toMatchObject({ remaining: 4 });
  });

  it("takeAll: the required takes all or none, an optional one beside them, at once or as a promise", async () => {
    const s = fresh();
    const tokens = { key: "tok:t", ratePerSec: 10, burst: 100 };
    const takes = [
      { spec, cost: 1 },
      { spec: { ...spec, key: "rl:u", burst: 2 }, cost: 1 },
      { spec: tokens, cost: 60, optional: true },
    ];
    expect(s.takeAllNow(takes)).toMatchObject({
      taken: true,
      results: [{ remaining: 4 }, { remaining: 1 }, { remaining: 40 }],
    });
    // The optional take no longer fits: the others are taken all the same.
    expect(await s.takeAll(takes)).toMatchObject({
      taken: true,
      results: [{ remaining: 3 }, { remaining: 0 }, { allowed: false, remaining: 40, msToNext: 2000 }],
    });
    // rl:u is empty: nothing is taken, not even from the buckets that had room.
    expect(s.takeAllNow([{ spec, cost: 1 }, takes[1] as (typeof takes)[number]])).toMatchObject({
      taken: false,
      results: [
        { allowed: true, remaining: 3 },
        { allowed: false, msToNext: 100 },
      ],
    });
    expect(await s.take(spec, 0)).toMatchObject({ remaining: 3 });
    expect(() => s.takeAllNow([{ spec: { ...spec, ratePerSec: 0 }, cost: 1 }])).toThrow(RangeError);
  });

  it("forgets idle buckets once full, so memory stays bounded", async () => {
    const s = fresh();
    for (let i = 0; i < 100; i++) await s.take({ ...spec, key: `rl:${i}` }, 5);
    expect(s.size().buckets).toBe(100);
    clock = 500 + 1000 - 1;
    s.sweep();
    expect(s.size().buckets).toBe(100);
    clock = 500 + 1000;
    s.sweep();
    expect(s.size().buckets).toBe(0);
    // and a forgotten bucket comes back full
    expect(await s.take(spec, 0)).toMatchObject({ remaining: 5 });
  });

  it("rejects specs it cannot serve", async () => {
    const s = fresh();
    await expect(s.take({ ...spec, ratePerSec: 0 }, 1)).rejects.toThrow(RangeError);
    await expect(s.take({ ...spec, burst: Number.NaN }, 1)).rejects.toThrow(RangeError);
    await expect(s.take(spec, Number.POSITIVE_INFINITY)).rejects.toThrow(RangeError);
  });

  it("clear removes keys under a logical prefix only", async () => {
    const s = fresh();
    await s.take({ ...spec, key: "a:1" }, 5);
    await s.take({ ...spec, key: "b:1" }, 5);
    await s.acquireLease("a:lease", "x", 1, 1000);
    await s.clear("a:");
    expect(await s.take({ ...spec, key: "a:1" }, 0)).toMatchObject({ remaining: 5 });
    expect(await s.take({ ...spec, key: "b:1" }, 0)).toMatchObject({ remaining: 0 });
    expect(await s.acquireLease("a:lease", "y", 1, 1000)).toEqual({ acquired: true, held: 1 });
  });
});

describe("MemoryStore leases", () => {
  it("grants at most limit, frees on release", async () => {
    const s = fresh();
    expect(await s.acquireLease("k", "a", 2, 1000)).toEqual({ acquired: true, held: 1 });
    expect(await s.acquireLease("k", "b", 2, 1000)).toEqual({ acquired: true, held: 2 });
    expect(await s.acquireLease("k", "c", 2, 1000)).toEqual({ acquired: false, held: 2 });
    // re-acquiring a held id renews it rather than taking a second slot
    expect(await s.acquireLease("k", "a", 2, 1000)).toEqual({ acquired: true, held: 2 });
    await s.releaseLease("k", "a");
    expect(await s.acquireLease("k", "c", 2, 1000)).toEqual({ acquired: true, held: 2 });
    await s.releaseLease("k", "nobody");
    await s.releaseLease("none", "a");
  });

  it("expires leases after ttl unless renewed; an expired lease is not re-created", async () => {
    const s = fresh();
    await s.acquireLease("k", "a", 2, 1000);
    await s.acquireLease("k", "b", 2, 1000);
    clock = 900;
    expect(await s.renewLease("k", "a", 1000)).toBe(true);
    clock = 1000;
    expect(await s.renewLease("k", "b", 1000)).toBe(false);
    expect(await s.acquireLease("k", "c", 2, 1000)).toEqual({ acquired: true, held: 2 });
    clock = 1899;
    expect(await s.acquireLease("k", "d", 2, 1000)).toEqual({ acquired: false, held: 2 });
    clock = 1900;
    expect(await s.acquireLease("k", "d", 2, 1000)).toEqual({ acquired: true, held: 2 });
    expect(await s.renewLease("gone", "a", 1000)).toBe(false);
  });

  it("sweeps lease sets whose holders all died", async () => {
    const s = fresh();
    for (let i = 0; i < 50; i++) await s.acquireLease(`k${i}`, "a", 1, 100);
    expect(s.size().leaseKeys).toBe(50);
    clock = 100;
    s.sweep();
    expect(s.size().leaseKeys).toBe(0);
  });

  it("a limit of 0 grants nothing", async () => {
    const s = fresh();
    expect(await s.acquireLease("k", "a", 0, 1000)).toEqual({ acquired: false, held: 0 });
  });
});
