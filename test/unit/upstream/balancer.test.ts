import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { mulberry32 } from "../../../src/sim/rng.js";
import type { BalancerBackend } from "../../../src/upstream/backend.js";
import { Balancer, type BalancerKind, canTake, isHealthy } from "../../../src/upstream/balancer.js";
import { rampFactor } from "../../../src/upstream/slow-start.js";

const NO_RAMP = { window: 0, aggression: 1, minWeightPercent: 10 };

/** A backend as the balancer sees it; `ejectedUntil` stands for a breaker open until then. */
function backend(
  name: string,
  over: Partial<BalancerBackend> & { penalty?: number; ejectedUntil?: number } = {},
): BalancerBackend {
  const { penalty = 1, ejectedUntil = 0, ...rest } = over;
  return {
    name,
    weight: 1,
    maxConcurrency: Number.POSITIVE_INFINITY,
    backup: false,
    inFlight: 0,
    drained: false,
    healthy: true,
    admits: (now) => now >= ejectedUntil,
    notBefore: 0,
    rampFrom: Number.NEGATIVE_INFINITY,
    rrCurrent: 0,
    loadPenalty: () => penalty,
    ...rest,
  };
}

function balancer(
  kind: BalancerKind = "least_request",
  extra: { panicThreshold?: number; seed?: number } = {},
) {
  return new Balancer(
    { kind, activeRequestBias: 1, panicThreshold: extra.panicThreshold ?? 50, slowStart: NO_RAMP },
    mulberry32(extra.seed ?? 42),
  );
}

function share(picks: (BalancerBackend | undefined)[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const p of picks) counts[p?.name ?? "none"] = (counts[p?.name ?? "none"] ?? 0) + 1;
  return counts;
}

const many = (n: number, pick: () => BalancerBackend | undefined) => Array.from({ length: n }, pick);

describe("selection", () => {
  it.each(["least_request", "round_robin", "random"] as const)(
    "%s: weights 3:1 give 3:1 ±5%% at equal load",
    (kind) => {
      const b = balancer(kind);
      const list = [backend("a", { weight: 3 }), backend("b", { weight: 1 })];
      const counts = share(many(40_000, () => b.pick(list, { now: 0 })));
      const ratio = (counts.a ?? 0) / (counts.b ?? 1);
      expect(ratio).toBeGreaterThan(3 * 0.95);
      expect(ratio).toBeLessThan(3 * 1.05);
    },
  );

  it("least_request, equal weights: a busy backend is avoided", () => {
    const b = balancer();
    const list = [
      backend("busy", { inFlight: 10 }),
      backend("x", { inFlight: 1 }),
      backend("y", { inFlight: 1 }),
    ];
    const counts = share(many(3000, () => b.pick(list, { now: 0 })));
    expect(counts.busy).toBeUndefined();
  });

  it("least_request, unequal weights: load shifts traffic away from the heavier backend", () => {
    const b = balancer();
    const list = [backend("big", { weight: 3, inFlight: 8 }), backend("small", { weight: 1, inFlight: 0 })];
    const counts = share(many(10_000, () => b.pick(list, { now: 0 })));
    // cost: big (9)/3 = 3, small 1/1 = 1: small gets 3 of 4 picks.
    expect((counts.small ?? 0) / 10_000).toBeCloseTo(0.75, 1);
  });

  it("an engine reporting a queue or a full KV cache is picked less", () => {
    const b = balancer();
    const list = [backend("queued", { penalty: 5 }), backend("idle", { penalty: 1 })];
    const counts = share(many(2000, () => b.pick(list, { now: 0 })));
    expect(counts.queued).toBeUndefined(); // two backends: P2C always compares both
    const three = [backend("queued", { penalty: 5 }), backend("i1"), backend("i2")];
    const c3 = share(many(3000, () => b.pick(three, { now: 0 })));
    expect(c3.queued).toBeUndefined();
  });

  it("a backend at its maxConcurrency, drained, ejected or unhealthy is not picked", () => {
    const b = balancer("least_request", { panicThreshold: 0 });
    const list = [
      backend("full", { maxConcurrency: 2, inFlight: 2 }),
      backend("drained", { drained: true }),
      backend("ejected", { ejectedUntil: 100 }),
      backend("sick", { healthy: false }),
      backend("ok"),
    ];
    expect(share(many(500, () => b.pick(list, { now: 50 })))).toEqual({ ok: 500 });
    // The ejection ends at 100.
    expect(Object.keys(share(many(500, () => b.pick(list, { now: 100 }))))).toContain("ejected");
  });

  it("backups take traffic only when no primary can", () => {
    const b = balancer();
    const list = [backend("p1"), backend("p2"), backend("cloud", { backup: true })];
    expect(share(many(500, () => b.pick(list, { now: 0 }))).cloud).toBeUndefined();
    for (const p of list.slice(0, 2)) p.healthy = false;
    // 1 of 3 healthy is under the 50% panic threshold: panic spreads over the primaries...
    expect(share(many(500, () => b.pick(list, { now: 0 }))).cloud).toBeUndefined();
    // ...without panic (threshold 0), the backup serves.
    const strict = balancer("least_request", { panicThreshold: 0 });
    expect(share(many(500, () => strict.pick(list, { now: 0 })))).toEqual({ cloud: 500 });
    // Primaries full (not sick): the backup serves.
    const full = [backend("p", { maxConcurrency: 1, inFlight: 1 }), backend("cloud", { backup: true })];
    expect(strict.pick(full, { now: 0 })?.name).toBe("cloud");
  });

  it("panic: under the threshold, load spreads over all primaries instead of the survivors", () => {
    const b = balancer("round_robin");
    const list = [
      backend("a"),
      backend("b", { healthy: false }),
      backend("c", { healthy: false }),
      backend("d", { healthy: false }),
    ];
    const counts = share(many(400, () => b.pick(list, { now: 0 })));
    expect(counts).toEqual({ a: 100, b: 100, c: 100, d: 100 });
    expect(b.panic(list, 0)).toBe(true);
    list[1] = backend("b"); // 2 of 4 healthy = 50%: not under the threshold
    expect(b.panic(list, 0)).toBe(false);
    expect(Object.keys(share(many(400, () => b.pick(list, { now: 0 })))).sort()).toEqual(["a", "b"]);
  });

  it("a backend that said Retry-After is skipped until then while another can serve", () => {
    const b = balancer();
    const list = [backend("busy", { notBefore: 1000 }), backend("free")];
    expect(share(many(200, () => b.pick(list, { now: 500 })))).toEqual({ free: 200 });
    list[1] = backend("free", { notBefore: 2000 });
    expect(b.pick(list, { now: 500 })).toBeDefined(); // both asked to wait: still served
  });

  it("a retry goes to a backend not tried yet, and to a tried one only when none is left", () => {
    const b = balancer();
    const list = [backend("a"), backend("b")];
    const a = list[0] as BalancerBackend;
    expect(share(many(100, () => b.pick(list, { now: 0, exclude: new Set([a]) })))).toEqual({ b: 100 });
    expect(b.pick(list, { now: 0, exclude: new Set(list) })).toBeDefined();
  });

  it("slow start ramps a rejoining backend's share", () => {
    const b = new Balancer(
      {
        kind: "least_request",
        activeRequestBias: 1,
        panicThreshold: 50,
        slowStart: { window: 1000, aggression: 1, minWeightPercent: 10 },
      },
      mulberry32(7),
    );
    const list = [backend("old"), backend("new", { rampFrom: 0 })];
    const at = (now: number) => (share(many(20_000, () => b.pick(list, { now }))).new ?? 0) / 20_000;
    expect(at(100)).toBeCloseTo(0.1 / 1.1, 1); // factor 0.1 (the floor)
    expect(at(500)).toBeCloseTo(0.5 / 1.5, 1);
    expect(at(1000)).toBeCloseTo(0.5, 1);
  });
});

describe("rampFactor", () => {
  const cfg = { window: 1000, aggression: 1, minWeightPercent: 10 };
  it.each([
    [-1, 0.1],
    [0, 0.1],
    [50, 0.1],
    [250, 0.25],
    [500, 0.5],
    [999, 0.999],
    [1000, 1],
    [5000, 1],
  ])("t=%d → %d", (t, f) => expect(rampFactor(cfg, 0, t)).toBeCloseTo(f, 5));
  it("aggression 2 ramps faster early: (t/window)^(1/2)", () => {
    expect(rampFactor({ ...cfg, aggression: 2 }, 0, 250)).toBeCloseTo(0.5, 5);
  });
  it("window 0 is off", () => expect(rampFactor({ ...cfg, window: 0 }, 0, 0)).toBe(1));
});

describe("properties", () => {
  const state = fc.record({
    weight: fc.double({ min: 0.01, max: 100, noNaN: true }),
    maxConcurrency: fc.oneof(fc.constant(Number.POSITIVE_INFINITY), fc.integer({ min: 1, max: 5 })),
    inFlight: fc.integer({ min: 0, max: 6 }),
    backup: fc.boolean(),
    drained: fc.boolean(),
    healthy: fc.boolean(),
    ejectedUntil: fc.constantFrom(0, 50, 200),
    notBefore: fc.constantFrom(0, 200),
    rampFrom: fc.constantFrom(Number.NEGATIVE_INFINITY, 0, 90),
    penalty: fc.double({ min: 1, max: 20, noNaN: true }),
  });
  const kinds = fc.constantFrom<BalancerKind>("least_request", "round_robin", "random");

  it("never picks an ejected, drained, full or unhealthy backend while another is eligible (panic off)", () => {
    fc.assert(
      fc.property(
        fc.array(state, { minLength: 1, maxLength: 8 }),
        kinds,
        fc.integer(),
        (states, kind, seed) => {
          const list = states.map((s, i) => backend(`b${i}`, s));
          const b = new Balancer(
            {
              kind,
              activeRequestBias: 1,
              panicThreshold: 0,
              slowStart: { window: 100, aggression: 1, minWeightPercent: 10 },
            },
            mulberry32(seed),
          );
          const now = 100;
          const good = (x: BalancerBackend) => canTake(x) && isHealthy(x, now);
          const picked = b.pick(list, { now });
          if (list.some(good)) {
            expect(picked).toBeDefined();
            expect(good(picked as BalancerBackend)).toBe(true);
            // and a backup only when no primary is good
            if (list.some((x) => good(x) && !x.backup)) expect(picked?.backup).toBe(false);
          } else {
            expect(picked).toBeUndefined();
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("never picks a drained or full backend, panic or not", () => {
    fc.assert(
      fc.property(
        fc.array(state, { minLength: 1, maxLength: 8 }),
        kinds,
        fc.integer(),
        (states, kind, seed) => {
          const list = states.map((s, i) => backend(`b${i}`, s));
          const b = new Balancer(
            { kind, activeRequestBias: 1, panicThreshold: 50, slowStart: NO_RAMP },
            mulberry32(seed),
          );
          const picked = b.pick(list, { now: 100 });
          if (picked) expect(canTake(picked)).toBe(true);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
