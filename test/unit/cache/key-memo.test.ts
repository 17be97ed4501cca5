import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { cacheKey } from "../../../src/cache/key.js";
import { KeyMemo } from "../../../src/cache/key-memo.js";

const ROUTE = "/v1/chat/completions";

/** A make() that counts its calls and keys the parsed bytes as the cache stage does. */
function keyer(raw: Buffer, scope = "t", pool = "p") {
  const counter = { calls: 0 };
  const make = () => {
    counter.calls++;
    const body = JSON.parse(raw.toString("utf8")) as Record<string, unknown>;
    return cacheKey({ scope, pool, model: "m", route: ROUTE, body });
  };
  return { counter, make };
}

describe("KeyMemo", () => {
  it("keys the same bytes once, and gives the key make() gave", () => {
    const memo = new KeyMemo(1 << 20);
    const raw = Buffer.from('{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}');
    const { counter, make } = keyer(raw);
    const first = memo.keyOf("t", "p", ROUTE, raw, make);
    const again = memo.keyOf("t", "p", ROUTE, Buffer.from(raw), make);
    expect(again).toBe(first);
    expect(counter.calls).toBe(1);
  });

  it("keys again for another scope, pool or route, and keeps each", () => {
    const memo = new KeyMemo(1 << 20);
    const raw = Buffer.from('{"model":"m","temperature":0}');
    let calls = 0;
    const make = (tag: string) => () => {
      calls++;
      return tag;
    };
    expect(memo.keyOf("a", "p", ROUTE, raw, make("a"))).toBe("a");
    expect(memo.keyOf("b", "p", ROUTE, raw, make("b"))).toBe("b");
    expect(memo.keyOf("a", "q", ROUTE, raw, make("q"))).toBe("q");
    expect(memo.keyOf("a", "p", "/v1/completions", raw, make("r"))).toBe("r");
    expect(calls).toBe(4);
    expect(memo.keyOf("a", "p", ROUTE, raw, make("x"))).toBe("a");
    expect(memo.keyOf("b", "p", ROUTE, raw, make("x"))).toBe("b");
    expect(memo.keyOf("a", "q", ROUTE, raw, make("x"))).toBe("q");
    expect(calls).toBe(4);
  });

  it("bytes that differ in any way are keyed on their own (same key when the question is the same)", () => {
    const memo = new KeyMemo(1 << 20);
    const a = Buffer.from('{"model":"m","temperature":0,"max_tokens":5}');
    const b = Buffer.from('{"max_tokens":5,"model":"m","temperature":0}');
    const ka = keyer(a);
    const kb = keyer(b);
    expect(memo.keyOf("t", "p", ROUTE, a, ka.make)).toBe(memo.keyOf("t", "p", ROUTE, b, kb.make));
    expect([ka.counter.calls, kb.counter.calls]).toEqual([1, 1]);
  });

  it("without the bytes, or with no room, it keys every time", () => {
    const raw = Buffer.from('{"model":"m"}');
    const { counter, make } = keyer(raw);
    const memo = new KeyMemo(1 << 20);
    memo.keyOf("t", "p", ROUTE, undefined, make);
    memo.keyOf("t", "p", ROUTE, undefined, make);
    const none = new KeyMemo(0);
    none.keyOf("t", "p", ROUTE, raw, make);
    none.keyOf("t", "p", ROUTE, raw, make);
    expect(counter.calls).toBe(4);
    expect(none.bytes).toBe(0);
  });

  it("stays within its bound; a body asked for again in time stays, one not asked for leaves", () => {
    const bound = 20_000;
    const memo = new KeyMemo(bound);
    const hot = Buffer.from('{"model":"m","hot":true}');
    const hotKeyer = keyer(hot);
    memo.keyOf("t", "p", ROUTE, hot, hotKeyer.make);
    const cold = Buffer.from('{"model":"m","cold":true}');
    const coldKeyer = keyer(cold);
    memo.keyOf("t", "p", ROUTE, cold, coldKeyer.make);
    for (let i = 0; i < 2_000; i++) {
      const raw = Buffer.from(`{"model":"m","n":${i}}`);
      memo.keyOf("t", "p", ROUTE, raw, keyer(raw).make);
      expect(memo.bytes).toBeLessThanOrEqual(bound);
      // The hot body is asked for often: within every generation.
      if (i % 10 === 0) memo.keyOf("t", "p", ROUTE, hot, hotKeyer.make);
    }
    expect(hotKeyer.counter.calls).toBe(1);
    memo.keyOf("t", "p", ROUTE, cold, coldKeyer.make);
    expect(coldKeyer.counter.calls).toBe(2);
    memo.clear();
    expect(memo.bytes).toBe(0);
  });

  it("gives what cacheKey gives for the parsed bytes (property)", () => {
    const memo = new KeyMemo(1 << 20);
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.jsonValue()), fc.constantFrom("a", "b"), (body, scope) => {
        const raw = Buffer.from(JSON.stringify(body));
        const { make } = keyer(raw, scope);
        const parsed = JSON.parse(raw.toString("utf8")) as Record<string, unknown>;
        const direct = cacheKey({ scope, pool: "p", model: "m", route: ROUTE, body: parsed });
        expect(memo.keyOf(scope, "p", ROUTE, raw, make)).toBe(direct);
        expect(memo.keyOf(scope, "p", ROUTE, raw, make)).toBe(direct);
      }),
    );
  });
});
