import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ByteLru, type EvictReason } from "../../../src/cache/lru.js";

const NEVER = Number.POSITIVE_INFINITY;

function lru(maxBytes: number) {
  const evicted: [EvictReason, string][] = [];
  const cache = new ByteLru<string>(maxBytes, (reason, key) => evicted.push([reason, key]));
  return { cache, evicted };
}

describe("ByteLru", () => {
  it("stores, reads and counts bytes", () => {
    const { cache } = lru(100);
    expect(cache.set("a", "A", 10, NEVER)).toBe(true);
    expect(cache.set("b", "B", 20, NEVER)).toBe(true);
    expect(cache.get("a", 0)).toBe("A");
    expect(cache.get("zz", 0)).toBeUndefined();
    expect(cache.bytes).toBe(30);
    expect(cache.size).toBe(2);
  });

  it("replacing a key counts only the new size and is not an eviction", () => {
    const { cache, evicted } = lru(100);
    cache.set("a", "A1", 10, NEVER);
    cache.set("a", "A2", 25, NEVER);
    expect(cache.get("a", 0)).toBe("A2");
    expect(cache.bytes).toBe(25);
    expect(cache.size).toBe(1);
    expect(evicted).toEqual([]);
  });

  it("evicts the least recently used when over the bound, and a get counts as use", () => {
    const { cache, evicted } = lru(30);
    cache.set("a", "A", 10, NEVER);
    cache.set("b", "B", 10, NEVER);
    cache.set("c", "C", 10, NEVER);
    cache.get("a", 0); // order now b, c, a
    cache.set("d", "D", 15, NEVER); // 45 > 30: b and c go
    expect(cache.keys()).toEqual(["a", "d"]);
    expect(cache.bytes).toBe(25);
    expect(evicted).toEqual([
      ["capacity", "b"],
      ["capacity", "c"],
    ]);
  });

  it("a get of the most recent entry keeps the order exact after sets, deletes and evictions", () => {
    const { cache } = lru(30);
    cache.set("a", "A", 10, NEVER);
    cache.set("b", "B", 10, NEVER);
    cache.get("b", 0);
    cache.get("b", 0);
    expect(cache.keys()).toEqual(["a", "b"]);
    cache.get("a", 0);
    expect(cache.keys()).toEqual(["b", "a"]);
    cache.delete("a");
    cache.set("c", "C", 10, NEVER);
    cache.get("b", 0);
    expect(cache.keys()).toEqual(["c", "b"]);
    cache.set("c", "C2", 10, NEVER); // replaced: the most recent again
    cache.get("b", 0);
    expect(cache.keys()).toEqual(["c", "b"]);
    cache.set("d", "D", 20, NEVER); // 40 > 30: c goes
    cache.get("b", 0);
    cache.set("e", "E", 10, NEVER); // 40 > 30: d goes, b stays (the most recent but one)
    expect(cache.keys()).toEqual(["b", "e"]);
    cache.clear();
    cache.set("f", "F", 10, NEVER);
    cache.set("g", "G", 10, NEVER);
    cache.get("f", 0);
    expect(cache.keys()).toEqual(["g", "f"]);
  });

  it("does not store an entry larger than the bound, and drops the value it replaced", () => {
    const { cache, evicted } = lru(30);
    cache.set("a", "A", 10, NEVER);
    cache.set("b", "B", 10, NEVER);
    expect(cache.set("a", "huge", 31, NEVER)).toBe(false);
    expect(cache.get("a", 0)).toBeUndefined();
    expect(cache.keys()).toEqual(["b"]);
    expect(cache.bytes).toBe(10);
    expect(evicted).toEqual([]);
  });

  it("an entry exactly the bound's size fits, alone", () => {
    const { cache } = lru(30);
    cache.set("a", "A", 10, NEVER);
    expect(cache.set("b", "B", 30, NEVER)).toBe(true);
    expect(cache.keys()).toEqual(["b"]);
  });

  it("expires entries at expiresAt on the caller's clock", () => {
    const { cache, evicted } = lru(100);
    cache.set("a", "A", 10, 1000);
    expect(cache.get("a", 999)).toBe("A");
    expect(cache.has("a", 999)).toBe(true);
    expect(cache.has("a", 1000)).toBe(false);
    expect(cache.get("a", 1000)).toBeUndefined();
    expect(cache.size).toBe(0);
    expect(cache.bytes).toBe(0);
    expect(evicted).toEqual([["expired", "a"]]);
  });

  it("prune sweeps every expired entry", () => {
    const { cache, evicted } = lru(100);
    cache.set("a", "A", 10, 100);
    cache.set("b", "B", 10, 300);
    cache.set("c", "C", 10, 200);
    expect(cache.prune(200)).toBe(2);
    expect(cache.keys()).toEqual(["b"]);
    expect(cache.bytes).toBe(10);
    expect(evicted).toEqual([
      ["expired", "a"],
      ["expired", "c"],
    ]);
  });

  it("delete, deleteWhere and clear free bytes without reporting evictions", () => {
    const { cache, evicted } = lru(100);
    cache.set("pool1:a", "A", 10, NEVER);
    cache.set("pool2:b", "B", 10, NEVER);
    cache.set("pool1:c", "C", 10, NEVER);
    expect(cache.delete("nope")).toBe(false);
    expect(cache.delete("pool2:b")).toBe(true);
    expect(cache.deleteWhere((key) => key.startsWith("pool1:"))).toBe(2);
    expect(cache.size).toBe(0);
    expect(cache.bytes).toBe(0);
    cache.set("x", "X", 5, NEVER);
    cache.clear();
    expect(cache.bytes).toBe(0);
    expect(evicted).toEqual([]);
  });

  it("rejects nonsense sizes", () => {
    expect(() => new ByteLru(-1)).toThrow(RangeError);
    expect(() => new ByteLru(Number.NaN)).toThrow(RangeError);
    const { cache } = lru(10);
    expect(() => cache.set("a", "A", -1, NEVER)).toThrow(RangeError);
    expect(() => cache.set("a", "A", Number.POSITIVE_INFINITY, NEVER)).toThrow(RangeError);
  });

  it("keeps the bound and the most recently used entries (property, against a model)", () => {
    type Op =
      | { op: "set"; key: string; bytes: number }
      | { op: "get"; key: string }
      | { op: "delete"; key: string };
    const key = fc.constantFrom("a", "b", "c", "d", "e", "f", "g", "h");
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ op: fc.constant("set" as const), key, bytes: fc.integer({ min: 0, max: 60 }) }),
      fc.record({ op: fc.constant("get" as const), key }),
      fc.record({ op: fc.constant("delete" as const), key }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 100 }), fc.array(op, { maxLength: 80 }), (maxBytes, ops) => {
        const cache = new ByteLru<number>(maxBytes);
        // The model is LRU by definition: keys from least to most recently used; over the bound
        // the oldest go first. Matching its order after every step means the most recently used
        // entries are exactly the ones that survive.
        let model: { key: string; bytes: number; value: number }[] = [];
        ops.forEach((o, i) => {
          if (o.op === "set") {
            cache.set(o.key, i, o.bytes, NEVER);
            model = model.filter((e) => e.key !== o.key);
            if (o.bytes <= maxBytes) {
              model.push({ key: o.key, bytes: o.bytes, value: i });
              let total = model.reduce((s, e) => s + e.bytes, 0);
              while (total > maxBytes) total -= model.shift()?.bytes ?? 0;
            }
          } else if (o.op === "get") {
            const found = model.find((e) => e.key === o.key);
            expect(cache.get(o.key, 0)).toBe(found?.value);
            if (found) model = [...model.filter((e) => e !== found), found];
          } else {
            cache.delete(o.key);
            model = model.filter((e) => e.key !== o.key);
          }
          expect(cache.bytes).toBeLessThanOrEqual(maxBytes);
          expect(cache.bytes).toBe(model.reduce((s, e) => s + e.bytes, 0));
          expect(cache.keys()).toEqual(model.map((e) => e.key));
        });
      }),
    );
  });
});
