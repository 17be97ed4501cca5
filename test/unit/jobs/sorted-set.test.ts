/** SortedSet against a plain model: Redis's order (score, then member), through many random edits. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { SortedSet } from "../../../src/jobs/sorted-set.js";

type Op = { add: [string, number] } | { delete: string };

function modelOrder(model: Map<string, number>): string[] {
  return [...model.entries()]
    .sort(([a, x], [b, y]) => x - y || (a < b ? -1 : a > b ? 1 : 0))
    .map(([member]) => member);
}

describe("SortedSet", () => {
  it("orders by score then member, as Redis does, through adds, moves and deletes", () => {
    const member = fc.integer({ min: 0, max: 3000 }).map((n) => `m${n}`);
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ add: fc.tuple(member, fc.integer({ min: -50, max: 50 })) }),
      fc.record({ delete: member }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 4000 }), fc.integer({ min: -60, max: 60 }), (ops, cut) => {
        const set = new SortedSet();
        const model = new Map<string, number>();
        for (const o of ops) {
          if ("add" in o) {
            set.add(...o.add);
            model.set(...o.add);
          } else {
            expect(set.delete(o.delete)).toBe(model.delete(o.delete));
          }
        }
        const order = modelOrder(model);
        expect(set.size).toBe(model.size);
        expect(set.range(-Infinity, Infinity)).toEqual(order);
        expect(set.range(cut, Infinity, 7)).toEqual(
          order.filter((m) => (model.get(m) ?? 0) >= cut).slice(0, 7),
        );
        expect(set.countUpTo(cut)).toBe(order.filter((m) => (model.get(m) ?? 0) <= cut).length);
      }),
      { numRuns: 60 },
    );
  });
});
