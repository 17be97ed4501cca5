import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createRng, hashString, mixSeeds, mulberry32 } from "../../../src/sim/rng.js";

function draw(seed: number, n: number): number[] {
  const next = mulberry32(seed);
  return Array.from({ length: n }, () => next());
}

describe("mulberry32", () => {
  it("gives the same sequence for the same seed", () => {
    expect(draw(42, 50)).toEqual(draw(42, 50));
  });

  it("matches the reference mulberry32, so generated text stays stable across releases", () => {
    // Changing the generator would silently change every "deterministic" answer and cache test.
    expect(draw(1, 3).map((x) => x.toFixed(10))).toEqual(["0.6270739406", "0.0027357212", "0.5274470400"]);
  });

  it("gives different sequences for different seeds", () => {
    expect(draw(1, 10)).not.toEqual(draw(2, 10));
  });

  it("stays in [0, 1)", () => {
    fc.assert(
      fc.property(fc.integer(), (seed) => {
        for (const x of draw(seed, 20)) {
          if (!(x >= 0 && x < 1)) return false;
        }
        return true;
      }),
    );
  });
});

describe("createRng().int", () => {
  it("covers [min, max] inclusive and nothing else", () => {
    const rng = createRng(7);
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) seen.add(rng.int(3, 6));
    expect([...seen].sort()).toEqual([3, 4, 5, 6]);
  });

  it("returns min when the range is empty", () => {
    expect(createRng(1).int(5, 5)).toBe(5);
    expect(createRng(1).int(5, 2)).toBe(5);
  });
});

describe("hashString / mixSeeds", () => {
  it("are pure and spread inputs", () => {
    expect(hashString("hello")).toBe(hashString("hello"));
    expect(hashString("hello")).not.toBe(hashString("hellp"));
    expect(hashString("hello", 1)).not.toBe(hashString("hello", 2));
    expect(hashString("")).toBeGreaterThanOrEqual(0);
  });

  it("mixSeeds depends on order and every input", () => {
    expect(mixSeeds(1, 2, 3)).toBe(mixSeeds(1, 2, 3));
    expect(mixSeeds(1, 2, 3)).not.toBe(mixSeeds(3, 2, 1));
    expect(mixSeeds(1, 2, 3)).not.toBe(mixSeeds(1, 2, 4));
  });

  it("returns unsigned 32-bit integers", () => {
    fc.assert(
      fc.property(fc.string(), fc.integer(), (text, seed) => {
        const h = hashString(text, seed);
        const m = mixSeeds(seed, h);
        return Number.isInteger(h) && h >= 0 && h < 2 ** 32 && m >= 0 && m < 2 ** 32;
      }),
    );
  });
});
