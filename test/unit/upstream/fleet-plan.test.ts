/** What each replica asks for when replicas share slots (plan() in src/upstream/fleet.ts). */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { plan, type Report } from "../../../src/upstream/fleet.js";

/** A replica's report: waiting and in flight per band, and in flight per backend. */
function replica(
  r: string,
  waiting: number[],
  inFlight: number[],
  onBackends: Record<string, number>,
): Report {
  const b: Report["b"] = {};
  for (const [name, n] of Object.entries(onBackends)) b[name] = [n, n];
  return { r, d: waiting, f: inFlight, b };
}

const one = [{ name: "gpu", maxConcurrency: 4 }];

describe("shared slots: the plan", () => {
  it("an idle fleet splits the slots evenly, so every replica can start a request at once", () => {
    const backends = [{ name: "gpu", maxConcurrency: 8 }];
    const reps = ["a", "b", "c"].map((id) => replica(id, [0, 0, 0], [0, 0, 0], { gpu: 0 }));
    const wants = reps.map(
      (me) =>
        plan(
          me,
          reps.filter((x) => x !== me),
          backends,
        ).get("gpu") ?? 0,
    );
    expect(wants).toEqual([3, 3, 2]);
  });

  it("a replica with a higher band waiting gets the next free slot; the lower band takes none", () => {
    // b runs 4 batch requests on a 4-slot backend with more waiting; a has 2 interactive waiting.
    let a = replica("a", [2, 0, 0], [0, 0, 0], { gpu: 0 });
    let b = replica("b", [0, 5, 0], [0, 4, 0], { gpu: 4 });
    expect(plan(b, [a], one).get("gpu")).toBe(2); // keeps what runs, takes nothing new
    expect(plan(a, [b], one).get("gpu")).toBe(0); // no slot is free yet
    // One of b's requests ends: the free slot is a's.
    b = replica("b", [0, 5, 0], [0, 3, 0], { gpu: 3 });
    expect(plan(a, [b], one).get("gpu")).toBe(1);
    expect(plan(b, [a], one).get("gpu")).toBe(2);
    a = replica("a", [1, 0, 0], [1, 0, 0], { gpu: 1 });
    expect(plan(b, [a], one).get("gpu")).toBeLessThanOrEqual(3);
  });

  it("within a band, replicas share max-min fairly: a flooded replica gives way to another", () => {
    const a = replica("a", [10, 0, 0], [4, 0, 0], { gpu: 4 });
    let b = replica("b", [10, 0, 0], [0, 0, 0], { gpu: 0 });
    expect(plan(a, [b], one).get("gpu")).toBe(2);
    const a2 = replica("a", [10, 0, 0], [3, 0, 0], { gpu: 3 });
    expect(plan(b, [a2], one).get("gpu")).toBe(1);
    b = replica("b", [9, 0, 0], [1, 0, 0], { gpu: 1 });
    expect(plan(a2, [b], one).get("gpu")).toBe(2);
  });

  it("the replicas' wants from the same reports never sum above a backend's slots (property)", () => {
    const backends = [
      { name: "x", maxConcurrency: 8 },
      { name: "y", maxConcurrency: 3 },
    ];
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            waiting: fc.array(fc.nat(20), { minLength: 3, maxLength: 3 }),
            x: fc.nat(8),
            y: fc.nat(3),
            band: fc.nat(2),
          }),
          { minLength: 1, maxLength: 5 },
        ),
        (states) => {
          // Requests in flight that fit the slots, as the claims guarantee.
          let xLeft = 8;
          let yLeft = 3;
          const reps = states.map((s, i) => {
            const x = Math.min(s.x, xLeft);
            const y = Math.min(s.y, yLeft);
            xLeft -= x;
            yLeft -= y;
            const f = [0, 0, 0];
            f[s.band] = x + y;
            return replica(`r${i}`, s.waiting, f, { x, y });
          });
          for (const b of backends) {
            let sum = 0;
            for (const me of reps)
              sum +=
                plan(
                  me,
                  reps.filter((r) => r !== me),
                  backends,
                ).get(b.name) ?? 0;
            expect(sum).toBeLessThanOrEqual(b.maxConcurrency);
          }
        },
      ),
    );
  });
});
