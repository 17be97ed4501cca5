import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { mulberry32 } from "../../../src/sim/rng.js";
import {
  type AffinityPick,
  boundFor,
  fleetLoad,
  HashRing,
  hashString,
  MAX_RING_POINTS,
  POINTS_PER_WEIGHT,
  pickWithAffinity,
  ringPoints,
} from "../../../src/upstream/affinity.js";

interface Node {
  name: string;
  weight: number;
  inFlight: number;
  othersInFlight?: number;
  usable: boolean;
}

function node(name: string, weight = 1, inFlight = 0): Node {
  return { name, weight, inFlight, usable: true };
}

const names = (n: number, prefix = "http://10.0.0.") =>
  Array.from({ length: n }, (_, i) => `${prefix}${i}:8000`);

/** Key hashes as a router sees them: the hash of distinct prompts. */
function keys(n: number, seed = 1): number[] {
  const rnd = mulberry32(seed);
  return Array.from({ length: n }, (_, i) => hashString(`prompt ${i} ${rnd()}`));
}

const usable = (b: Node) => b.usable;

/** The oracle: the bound exactly as settled, written out again. */
function oracleBound(load: number[], weight: number[], i: number, loadFactor: number, ok: boolean[]): number {
  let total = 0;
  let sumW = 0;
  for (let j = 0; j < load.length; j++) {
    if (!ok[j]) continue;
    total += load[j] as number;
    sumW += weight[j] as number;
  }
  return Math.ceil((loadFactor * (total + 1) * (weight[i] as number)) / sumW);
}

describe("HashRing", () => {
  it("gives each backend points in proportion to its weight", () => {
    expect(ringPoints(1)).toBe(POINTS_PER_WEIGHT);
    expect(ringPoints(2.5)).toBe(2.5 * POINTS_PER_WEIGHT);
    expect(ringPoints(0.001)).toBe(1);
    expect(ringPoints(0)).toBe(0);
    const ring = HashRing.build([node("a", 1), node("b", 3)]);
    expect(ring.pointCount).toBe(4 * POINTS_PER_WEIGHT);
  });

  it("scales an oversized ring down as a whole, keeping every backend on it", () => {
    const heavy = ["a", "b", "c", "d"].map((x) => node(x, 1000));
    const ring = HashRing.build([...heavy, node("e", 0.01)]);
    expect(ring.pointCount).toBeLessThanOrEqual(MAX_RING_POINTS);
    expect(ring.pointCount).toBeGreaterThan(MAX_RING_POINTS * 0.99);
    const seen = new Set<string>();
    for (const k of keys(20_000)) seen.add(ring.home(k)?.name ?? "none");
    expect(seen.has("none")).toBe(false);
    expect([...ring.successors(12345)].map((b) => b.name).sort()).toEqual(["a", "b", "c", "d", "e"]);
  });

  it("an empty ring has no home and no successors", () => {
    const ring = HashRing.build<Node>([]);
    expect(ring.home(1)).toBeUndefined();
    expect([...ring.successors(1)]).toEqual([]);
    expect(pickWithAffinity(ring, 1, usable, fleetLoad, 1.25)).toBeUndefined();
  });

  it("successors yield every backend once, home first", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 12 }), fc.nat({ max: 0xffffffff }), (n, key) => {
        const ring = HashRing.build(names(n).map((x) => node(x)));
        const order = [...ring.successors(key)];
        expect(order.length).toBe(n);
        expect(new Set(order).size).toBe(n);
        expect(order[0]).toBe(ring.home(key));
      }),
    );
  });

  it("the same names and weights give the same ring, whatever the order they come in", () => {
    const list = names(6).map((x, i) => node(x, 1 + (i % 3)));
    const a = HashRing.build(list);
    const b = HashRing.build([...list].reverse());
    for (const k of keys(2_000)) expect(a.home(k)?.name).toBe(b.home(k)?.name);
  });

  it("a backend leaving moves only its own keys, about 1/N of them (N=5, 10,000 keys)", () => {
    const all = names(5).map((x) => node(x));
    const gone = all[2] as Node;
    const before = HashRing.build(all);
    const after = HashRing.build(all.filter((b) => b !== gone));
    let moved = 0;
    for (const k of keys(10_000)) {
      const was = before.home(k);
      const now = after.home(k);
      if (was !== now) {
        moved++;
        expect(was).toBe(gone);
      }
      expect(now).not.toBe(gone);
    }
    // Its share of the circle: 1/5, ±6% rms from the ring, a few % from sampling.
    expect(moved / 10_000).toBeGreaterThan(0.2 * 0.8);
    expect(moved / 10_000).toBeLessThan(0.2 * 1.2);
  });

  it("a backend joining takes keys only for itself, about 1/(N+1) of them (N=5, 10,000 keys)", () => {
    const all = names(6).map((x) => node(x));
    const joining = all[5] as Node;
    const before = HashRing.build(all.slice(0, 5));
    const after = HashRing.build(all);
    let moved = 0;
    for (const k of keys(10_000, 2)) {
      const was = before.home(k);
      const now = after.home(k);
      if (was !== now) {
        moved++;
        expect(now).toBe(joining);
      }
    }
    expect(moved / 10_000).toBeGreaterThan((1 / 6) * 0.8);
    expect(moved / 10_000).toBeLessThan((1 / 6) * 1.2);
  });

  it("a weight change moves keys only to or from that backend", () => {
    const all = names(5).map((x) => node(x));
    const before = HashRing.build(all);
    const changed = all.map((b, i) => (i === 1 ? { ...b, weight: 3 } : b));
    const after = HashRing.build(changed);
    let moved = 0;
    for (const k of keys(10_000, 3)) {
      const was = before.home(k)?.name;
      const now = after.home(k)?.name;
      if (was !== now) {
        moved++;
        expect(now).toBe(all[1]?.name);
      }
    }
    // From 1/5 of the weight to 3/7: about 0.43 - 0.2 of the keys move.
    expect(moved / 10_000).toBeGreaterThan(0.23 * 0.75);
    expect(moved / 10_000).toBeLessThan(0.23 * 1.25);
  });

  it("removing a backend keeps the ring order of all the others (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 10 }),
        fc.nat(),
        fc.array(fc.nat({ max: 0xffffffff }), { minLength: 1, maxLength: 20 }),
        (n, which, ks) => {
          const all = names(n).map((x, i) => node(x, 1 + (i % 4) * 0.5));
          const gone = all[which % n] as Node;
          const before = HashRing.build(all);
          const after = HashRing.build(all.filter((b) => b !== gone));
          for (const k of ks) {
            const expected = [...before.successors(k)].filter((b) => b !== gone);
            expect([...after.successors(k)]).toEqual(expected);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it("keys go to backends in proportion to their weights (±15%, 50,000 keys)", () => {
    const weights = [1, 2, 3, 1, 0.5, 2.5];
    const list = names(weights.length, "gpu-").map((x, i) => node(x, weights[i]));
    const ring = HashRing.build(list);
    const counts = new Map<Node, number>();
    const ks = keys(50_000, 4);
    for (const k of ks) {
      const h = ring.home(k) as Node;
      counts.set(h, (counts.get(h) ?? 0) + 1);
    }
    const sumW = weights.reduce((a, b) => a + b, 0);
    for (const b of list) {
      const expected = (ks.length * b.weight) / sumW;
      const got = counts.get(b) ?? 0;
      expect(got, b.name).toBeGreaterThan(expected * 0.85);
      expect(got, b.name).toBeLessThan(expected * 1.15);
    }
  });

  it("matches() and update() rebuild only on a change of members or weights", () => {
    const list = names(3).map((x) => node(x));
    const ring = HashRing.build(list);
    expect(ring.matches(list)).toBe(true);
    expect(ring.update(list)).toBe(ring);
    expect(ring.matches([...list])).toBe(true);
    expect(ring.matches(list.slice(0, 2))).toBe(false);
    const replaced = [list[0] as Node, { ...(list[1] as Node) }, list[2] as Node];
    expect(ring.matches(replaced)).toBe(false);
    (list[0] as Node).weight = 2;
    expect(ring.matches(list)).toBe(false);
    const rebuilt = ring.update(list);
    expect(rebuilt).not.toBe(ring);
    expect(rebuilt.pointCount).toBe(4 * POINTS_PER_WEIGHT);
  });
});

describe("boundFor", () => {
  it("is ceil(loadFactor × (total + 1) × w / sum w)", () => {
    // Idle pool of five: every backend may take one.
    expect(boundFor(0, 1, 5, 1.25)).toBe(1);
    // 9 in flight over 5 equal backends at 1.25: ceil(1.25 × 10 / 5) = 3.
    expect(boundFor(9, 1, 5, 1.25)).toBe(3);
    // A backend of weight 3 out of 4 with 7 in flight: ceil(1.25 × 8 × 3/4) = 8.
    expect(boundFor(7, 3, 4, 1.25)).toBe(8);
    expect(boundFor(7, 1, 4, 1)).toBe(2);
  });
});

describe("pickWithAffinity", () => {
  const build = (n = 5) => {
    const list = names(n).map((x) => node(x));
    return { list, ring: HashRing.build(list) };
  };
  const key = hashString("system prompt of application 7");

  it("takes the home when it is usable and within its bound", () => {
    const { ring } = build();
    const pick = pickWithAffinity(ring, key, usable, fleetLoad, 1.25);
    expect(pick).toEqual({ backend: ring.home(key), outcome: "home", hops: 0, bounded: true });
  });

  it("spills to the next successor when the home is at its bound", () => {
    const { ring } = build();
    const order = [...ring.successors(key)];
    (order[0] as Node).inFlight = 3; // total 3: bound ceil(1.25 × 4 / 5) = 1
    const pick = pickWithAffinity(ring, key, usable, fleetLoad, 1.25);
    expect(pick).toEqual({ backend: order[1], outcome: "spilled", hops: 1, bounded: true });
  });

  it("counts the other replicas' requests in the load", () => {
    const { ring } = build();
    const order = [...ring.successors(key)];
    (order[0] as Node).othersInFlight = 3;
    expect(pickWithAffinity(ring, key, usable, fleetLoad, 1.25)?.outcome).toBe("spilled");
    // Own counts only: the home is idle.
    expect(pickWithAffinity(ring, key, usable, (b) => b.inFlight, 1.25)?.outcome).toBe("home");
  });

  it("walks on when the home cannot serve: home_unavailable", () => {
    const { ring } = build();
    const order = [...ring.successors(key)];
    (order[0] as Node).usable = false;
    (order[1] as Node).usable = false;
    const pick = pickWithAffinity(ring, key, usable, fleetLoad, 1.25);
    expect(pick).toEqual({ backend: order[2], outcome: "home_unavailable", hops: 2, bounded: true });
  });

  it("takes candidates as a set too", () => {
    const { ring } = build();
    const order = [...ring.successors(key)];
    const set = new Set(order.slice(1));
    expect(pickWithAffinity(ring, key, set, fleetLoad, 1.25)).toMatchObject({
      backend: order[1],
      outcome: "home_unavailable",
    });
  });

  it("leaves the bound's sums to the candidates: a full backend's load does not count", () => {
    const { ring } = build(2);
    const [home, next] = [...ring.successors(key)] as [Node, Node];
    next.inFlight = 10;
    next.usable = false;
    // Candidates: the home alone, total 0, bound ceil(1.25 × 1 × 1/1) = 2.
    expect(pickWithAffinity(ring, key, usable, fleetLoad, 1.25)?.backend).toBe(home);
    home.inFlight = 1;
    expect(pickWithAffinity(ring, key, usable, fleetLoad, 1.25)?.backend).toBe(home);
    home.inFlight = 2;
    // Bound ceil(1.25 × 3) = 4 > 2: still within. A lone candidate is always within for loadFactor ≥ 1.
    expect(pickWithAffinity(ring, key, usable, fleetLoad, 1.25)?.bounded).toBe(true);
  });

  it("with no usable candidate returns undefined", () => {
    const { list, ring } = build();
    for (const b of list) b.usable = false;
    expect(pickWithAffinity(ring, key, usable, fleetLoad, 1.25)).toBeUndefined();
  });

  it("past maxHops falls back to the least loaded per weight, not bounded", () => {
    const { ring } = build();
    const order = [...ring.successors(key)] as Node[];
    order[0]!.inFlight = 5;
    order[1]!.inFlight = 5;
    order[2]!.inFlight = 0;
    order[3]!.inFlight = 1;
    order[4]!.inFlight = 1;
    // Total 12: bound ceil(1.25 × 13 / 5) = 4; the first two are over it.
    const pick = pickWithAffinity(ring, key, usable, fleetLoad, 1.25, 1);
    expect(pick).toEqual({ backend: order[2], outcome: "spilled", hops: 2, bounded: false });
    expect(pickWithAffinity(ring, key, usable, fleetLoad, 1.25, 2)).toEqual({
      backend: order[2],
      outcome: "spilled",
      hops: 2,
      bounded: true,
    });
  });

  it("a loadFactor below 1 that admits no one still returns a backend, the least loaded per weight", () => {
    const list = [node("a", 1, 4), node("b", 2, 4), node("c", 1, 3)];
    const ring = HashRing.build(list);
    const pick = pickWithAffinity(ring, key, usable, fleetLoad, 0.1);
    // (load + 1) / w: a 5, b 2.5, c 4.
    expect(pick?.backend.name).toBe("b");
    expect(pick?.bounded).toBe(false);
  });

  it("an infinite loadFactor is plain consistent hashing: always the first usable successor", () => {
    const { ring } = build();
    const order = [...ring.successors(key)] as Node[];
    order[0]!.inFlight = 1000;
    expect(pickWithAffinity(ring, key, usable, fleetLoad, Number.POSITIVE_INFINITY)?.backend).toBe(order[0]);
  });

  it("uses the weight given for the bound (a slow-start ramp)", () => {
    const { ring } = build(2);
    const [home, next] = [...ring.successors(key)] as [Node, Node];
    home.inFlight = 1;
    next.inFlight = 1;
    // Configured weights: bound ceil(1.25 × 3 / 2) = 2 > 1, the home takes it.
    expect(pickWithAffinity(ring, key, usable, fleetLoad, 1.25)?.backend).toBe(home);
    // The home ramping at 10%: ceil(1.25 × 3 × 0.1 / 1.1) = 1, not > 1, it spills.
    const ramp = (b: Node) => (b === home ? 0.1 : 1);
    expect(
      pickWithAffinity(ring, key, usable, fleetLoad, 1.25, Number.POSITIVE_INFINITY, ramp),
    ).toMatchObject({
      backend: next,
      outcome: "spilled",
    });
  });

  it("property: the pick is the first usable successor within the bound, labelled by its home", () => {
    const arbPool = fc.array(
      fc.record({
        weight: fc.double({ min: 0.1, max: 10, noNaN: true }),
        load: fc.nat({ max: 60 }),
        others: fc.nat({ max: 20 }),
        usable: fc.boolean(),
      }),
      { minLength: 1, maxLength: 8 },
    );
    fc.assert(
      fc.property(
        arbPool,
        fc.double({ min: 1, max: 3, noNaN: true }),
        fc.nat({ max: 0xffffffff }),
        (spec, loadFactor, k) => {
          const list: Node[] = spec.map((s, i) => ({
            name: `b${i}`,
            weight: s.weight,
            inFlight: s.load,
            othersInFlight: s.others,
            usable: s.usable,
          }));
          const ring = HashRing.build(list);
          const pick = pickWithAffinity(ring, k, usable, fleetLoad, loadFactor);
          const ok = list.map((b) => b.usable);
          if (!ok.some(Boolean)) {
            expect(pick).toBeUndefined();
            return;
          }
          const p = pick as AffinityPick<Node>;
          const loads = list.map(fleetLoad);
          const weights = list.map((b) => b.weight);
          const within = (b: Node) => {
            const i = list.indexOf(b);
            return b.usable && (loads[i] as number) < oracleBound(loads, weights, i, loadFactor, ok);
          };
          // loadFactor ≥ 1: some usable backend is always within its bound.
          expect(p.bounded).toBe(true);
          expect(p.backend.usable).toBe(true);
          expect(within(p.backend)).toBe(true);
          const order = [...ring.successors(k)];
          const first = order.findIndex(within);
          expect(p.backend).toBe(order[first]);
          expect(p.hops).toBe(first);
          const home = order[0] as Node;
          expect(p.outcome).toBe(!home.usable ? "home_unavailable" : within(home) ? "home" : "spilled");
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe("a stream of acquisitions under one hot key", () => {
  /** No backend above ceil(loadFactor × total × w_i / sum w), total counted after the pick. */
  function assertBounded(list: Node[], loadFactor: number) {
    const total = list.reduce((a, b) => a + b.inFlight, 0);
    const sumW = list.reduce((a, b) => a + b.weight, 0);
    for (const b of list) {
      expect(b.inFlight, b.name).toBeLessThanOrEqual(Math.ceil((loadFactor * total * b.weight) / sumW));
    }
  }

  it("spreads a hot key over its successors, none ever above its bound", () => {
    const weights = [1, 1, 2, 1, 3];
    const list = weights.map((w, i) => node(`gpu-${i}`, w));
    const ring = HashRing.build(list);
    const hot = hashString("the one system prompt everybody uses");
    const cold = keys(200, 9);
    const rnd = mulberry32(7);
    const outcomes = { home: 0, spilled: 0, home_unavailable: 0, placed: 0 };
    for (let step = 0; step < 2_000; step++) {
      const k = rnd() < 0.8 ? hot : (cold[Math.floor(rnd() * cold.length)] as number);
      const pick = pickWithAffinity(ring, k, usable, fleetLoad, 1.25) as AffinityPick<Node>;
      pick.backend.inFlight++;
      if (k === hot) outcomes[pick.outcome]++;
      assertBounded(list, 1.25);
    }
    // The hot key's home keeps its share, the rest spills; nothing is ever unavailable here.
    expect(outcomes.home).toBeGreaterThan(0);
    expect(outcomes.spilled).toBeGreaterThan(0);
    expect(outcomes.home_unavailable).toBe(0);
    const home = ring.home(hot) as Node;
    const total = list.reduce((a, b) => a + b.inFlight, 0);
    expect(home.inFlight).toBeGreaterThanOrEqual(Math.ceil((1.25 * total * home.weight) / 8) - 1);
  });

  it("property: with acquisitions and releases, each pick stays within the bound after it", () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant("acquire" as const), key: fc.nat({ max: 3 }) }),
      fc.record({ kind: fc.constant("release" as const), at: fc.nat() }),
    );
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0.1, max: 5, noNaN: true }), { minLength: 1, maxLength: 6 }),
        fc.double({ min: 1, max: 3, noNaN: true }),
        fc.array(op, { minLength: 1, maxLength: 150 }),
        fc.boolean(),
        (weights, loadFactor, ops, acquireOnly) => {
          const list = weights.map((w, i) => node(`b${i}`, w));
          const ring = HashRing.build(list);
          const sumW = weights.reduce((a, b) => a + b, 0);
          const held: Node[] = [];
          // One hot key: half the acquisitions in the generated mix.
          const keyHashes = [hashString("hot"), hashString("k2"), hashString("k3")];
          for (const o of ops) {
            if (o.kind === "release") {
              if (acquireOnly || held.length === 0) continue;
              const [b] = held.splice(o.at % held.length, 1) as [Node];
              b.inFlight--;
              continue;
            }
            const k = keyHashes[Math.max(0, o.key - 1)] as number;
            const pick = pickWithAffinity(ring, k, usable, fleetLoad, loadFactor) as AffinityPick<Node>;
            expect(pick.bounded).toBe(true);
            pick.backend.inFlight++;
            held.push(pick.backend);
            const total = held.length;
            const b = pick.backend;
            expect(b.inFlight).toBeLessThanOrEqual(Math.ceil((loadFactor * total * b.weight) / sumW));
            if (acquireOnly) assertBounded(list, loadFactor);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
