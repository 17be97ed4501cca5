/**
 * Small seeded PRNG and string hashing for the simulator.
 *
 * mulberry32 (Tommy Ettinger, public domain): 32-bit state, passes gjrand/PractRand to a few GB,
 * which is far more than a simulator drawing a few hundred numbers per request needs, and it is
 * a handful of integer ops so it costs nothing on the benchmark path.
 *
 * hashString is cyrb53 (bryc, public domain) folded to 32 bits: cheap, well mixed, and stable
 * across Node versions, unlike anything derived from object identity or Math.random.
 */

export interface Rng {
  /** Uniform float in [0, 1). */
  next(): number;
  /** Uniform integer in [min, maxInclusive]. */
  int(min: number, maxInclusive: number): number;
}

/** Raw mulberry32 step function; returns floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function createRng(seed: number): Rng {
  const next = mulberry32(seed);
  return {
    next,
    int(min, maxInclusive) {
      if (maxInclusive <= min) return min;
      return min + Math.floor(next() * (maxInclusive - min + 1));
    },
  };
}

/** cyrb53 folded to an unsigned 32-bit integer. */
export function hashString(text: string, seed = 0): number {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (h1 ^ (h2 >>> 3) ^ Math.imul(h2, 0x9e3779b1)) >>> 0;
}

/** Combines several 32-bit values into one seed, order-sensitive (splitmix-style finaliser). */
export function mixSeeds(...values: number[]): number {
  let h = 0x9e3779b9;
  for (const value of values) {
    h = Math.imul(h ^ (value >>> 0), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  return h >>> 0;
}
