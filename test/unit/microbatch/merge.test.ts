import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  apportion,
  bodyKey,
  type MemberInput,
  mergeableInput,
  mergedBody,
  splitAnswer,
  splitUsage,
} from "../../../src/microbatch/merge.js";

/** An OpenAI-shaped answer to `n` inputs, as an engine sends it. */
function answer(n: number, promptTokens: number, extra: Record<string, unknown> = {}) {
  return {
    object: "list",
    data: Array.from({ length: n }, (_, index) => ({ object: "embedding", index, embedding: [index, 0.5] })),
    model: "m",
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
    ...extra,
  };
}

function member(items: (string | number[])[], tokens: number): MemberInput {
  return { kind: typeof items[0] === "string" ? "text" : "tokens", items, tokens };
}

describe("mergeableInput", () => {
  it("takes the four forms OpenAI accepts, strings and token arrays apart", () => {
    expect(mergeableInput("hello world")).toEqual({ kind: "text", items: ["hello world"], tokens: 2 });
    expect(mergeableInput(["a b", "c"])).toEqual({ kind: "text", items: ["a b", "c"], tokens: 3 });
    expect(mergeableInput([1, 2, 3])).toEqual({ kind: "tokens", items: [[1, 2, 3]], tokens: 3 });
    expect(mergeableInput([[1, 2], [3]])).toEqual({ kind: "tokens", items: [[1, 2], [3]], tokens: 3 });
    expect(mergeableInput("")).toEqual({ kind: "text", items: [""], tokens: 0 });
  });

  it.each([
    ["an empty array", []],
    ["a mixed array", ["a", [1, 2]]],
    ["strings and ids", ["a", 1]],
    ["a token that is no integer", [1.5, 2]],
    ["an empty token array", [[1], []]],
    ["an object", { text: "a" }],
    ["nothing", undefined],
    ["a number", 7],
    ["null inside", ["a", null]],
  ])("leaves %s to go alone", (_what, input) => {
    expect(mergeableInput(input)).toBeUndefined();
  });
});

describe("bodyKey", () => {
  it("is the body without its input, whatever the key order", () => {
    const a = bodyKey({ model: "m", input: "x", encoding_format: "float", dimensions: 64 });
    const b = bodyKey({ dimensions: 64, encoding_format: "float", model: "m", input: ["y", "z"] });
    expect(a).toBe(b);
    expect(a).toBe('{"dimensions":64,"encoding_format":"float","model":"m"}');
  });

  it.each([
    ["encoding_format", { encoding_format: "base64" }],
    ["dimensions", { dimensions: 32 }],
    ["user", { user: "u-1" }],
    ["a field only the engine reads", { truncate_prompt_tokens: 8 }],
    ["the model", { model: "other" }],
  ])("tells apart requests that differ in %s", (_what, change) => {
    const base = { model: "m", input: "x" };
    expect(bodyKey({ ...base, ...change })).not.toBe(bodyKey(base));
  });
});

describe("mergedBody", () => {
  it("is the first body with every member's inputs, in order", () => {
    const body = { model: "m", input: "first", dimensions: 8 };
    const merged = mergedBody(body, [member(["first"], 1), member(["a", "b"], 2), member(["c"], 1)]);
    expect(merged).toEqual({ model: "m", input: ["first", "a", "b", "c"], dimensions: 8 });
    expect(
      mergedBody({ model: "m", input: [1, 2] }, [member([[1, 2]], 2), member([[3], [4, 5]], 3)]).input,
    ).toEqual([[1, 2], [3], [4, 5]]);
  });
});

describe("apportion", () => {
  it.each([
    [10, [1, 1, 1], [4, 3, 3]],
    [10, [2, 1, 1], [5, 3, 2]],
    [7, [0, 0], [4, 3]],
    [0, [5, 3], [0, 0]],
    [9, [3, 0, 6], [3, 0, 6]],
    [1, [1, 1, 1], [1, 0, 0]],
  ])("%d over %j -> %j", (total, weights, expected) => {
    expect(apportion(total, weights)).toEqual(expected);
  });

  it("always adds up to the total, each share within one of its exact part", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 1_000_000 }),
        fc.array(fc.integer({ min: 0, max: 100_000 }), { minLength: 1, maxLength: 100 }),
        (total, weights) => {
          const shares = apportion(total, weights);
          expect(shares.reduce((a, b) => a + b, 0)).toBe(total);
          const sum = weights.reduce((a, b) => a + b, 0);
          shares.forEach((share, i) => {
            const exact = sum > 0 ? (total * (weights[i] ?? 0)) / sum : total / weights.length;
            expect(Number.isInteger(share)).toBe(true);
            expect(Math.abs(share - exact)).toBeLessThan(1);
          });
        },
      ),
    );
  });
});

describe("splitUsage", () => {
  it("apportions whole numbers, nested ones too, and copies the rest", () => {
    const parts = splitUsage(
      { prompt_tokens: 10, total_tokens: 10, prompt_tokens_details: { cached_tokens: 3 }, note: "x", f: 0.5 },
      [1, 1, 2],
    );
    expect(parts).toEqual([
      { prompt_tokens: 3, total_tokens: 3, prompt_tokens_details: { cached_tokens: 1 }, note: "x", f: 0.5 },
      { prompt_tokens: 2, total_tokens: 2, prompt_tokens_details: { cached_tokens: 1 }, note: "x", f: 0.5 },
      { prompt_tokens: 5, total_tokens: 5, prompt_tokens_details: { cached_tokens: 1 }, note: "x", f: 0.5 },
    ]);
  });

  it("keeps an own __proto__ field as data", () => {
    const usage = JSON.parse('{"__proto__": {"polluted": 1}, "prompt_tokens": 2}') as unknown;
    const [a] = splitUsage(usage, [1]) as Record<string, unknown>[];
    expect(Object.getPrototypeOf(a)).toBe(Object.prototype);
    expect(Object.hasOwn(a as object, "__proto__")).toBe(true);
  });
});

describe("splitAnswer", () => {
  const members = [member(["a"], 1), member(["b c", "d"], 3), member(["e f g h"], 4)];

  it("gives each member its own data, indices from 0, in order, and the answer's other fields", () => {
    const parts = splitAnswer(answer(4, 8, { id: "embd-1", created: 5 }), members);
    expect(parts).toHaveLength(3);
    expect(
      parts?.map((p) =>
        (p.data as { index: number; embedding: number[] }[]).map((d) => [d.index, d.embedding[0]]),
      ),
    ).toEqual([
      [[0, 0]],
      [
        [0, 1],
        [1, 2],
      ],
      [[0, 3]],
    ]);
    expect(parts?.[1]).toMatchObject({ object: "list", model: "m", id: "embd-1", created: 5 });
    expect(Object.keys(parts?.[1] ?? {})).toEqual(["object", "data", "model", "usage", "id", "created"]);
  });

  it("shares usage by estimated tokens, adding up exactly to what the backend said", () => {
    const parts = splitAnswer(answer(4, 11), members);
    const prompts = parts?.map((p) => (p.usage as { prompt_tokens: number }).prompt_tokens);
    // 11 over 1:3:4 = 1.375, 4.125, 5.5: floors 1, 4, 5, the one left to the largest remainder.
    expect(prompts).toEqual([1, 4, 6]);
    expect(parts?.map((p) => (p.usage as { total_tokens: number }).total_tokens)).toEqual(prompts);
  });

  it("shares by input count when no member has a token", () => {
    const empty = [member([""], 0), member(["", ""], 0)];
    const parts = splitAnswer(answer(3, 3), empty);
    expect(parts?.map((p) => (p.usage as { prompt_tokens: number }).prompt_tokens)).toEqual([1, 2]);
  });

  it("puts the data in index order, whatever order the backend sent it in", () => {
    const shuffled = answer(4, 8);
    shuffled.data.reverse();
    const parts = splitAnswer(shuffled, members);
    const data = parts?.[2]?.data as { embedding: number[] }[];
    expect(data[0]?.embedding[0]).toBe(3);
  });

  it("leaves out usage when the backend sent none", () => {
    const { usage: _u, ...bare } = answer(4, 8);
    expect(splitAnswer(bare, members)?.[0]).toEqual({
      object: "list",
      data: [{ object: "embedding", index: 0, embedding: [0, 0.5] }],
      model: "m",
    });
  });

  it.each([
    ["too few embeddings", { data: answer(3, 1).data }],
    ["too many", { data: answer(5, 1).data }],
    ["no data", { data: undefined }],
    ["an index twice", { data: answer(4, 1).data.map((d) => ({ ...d, index: 0 })) }],
    ["an index out of range", { data: answer(4, 1).data.map((d) => ({ ...d, index: d.index + 1 })) }],
    ["a missing index", { data: answer(4, 1).data.map(({ index: _i, ...d }) => d) }],
    ["an entry that is no object", { data: [1, 2, 3, 4] }],
  ])("refuses an answer with %s", (_what, change) => {
    expect(splitAnswer({ ...answer(4, 8), ...change }, members)).toBeUndefined();
  });

  it("for any members and usage: shares sum exactly, every input's embedding lands with its member", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({ inputs: fc.integer({ min: 1, max: 5 }), tokens: fc.integer({ min: 0, max: 50 }) }),
          {
            minLength: 1,
            maxLength: 20,
          },
        ),
        fc.integer({ min: 0, max: 10_000 }),
        (shape, promptTokens) => {
          const ms = shape.map((s) =>
            member(
              Array.from({ length: s.inputs }, () => "x"),
              s.tokens,
            ),
          );
          const n = shape.reduce((a, s) => a + s.inputs, 0);
          const parts = splitAnswer(answer(n, promptTokens), ms);
          expect(parts).toHaveLength(ms.length);
          let sum = 0;
          let next = 0;
          parts?.forEach((p, i) => {
            const data = p.data as { index: number; embedding: number[] }[];
            expect(data.map((d) => d.index)).toEqual(
              Array.from({ length: shape[i]?.inputs ?? 0 }, (_, j) => j),
            );
            for (const d of data) expect(d.embedding[0]).toBe(next++);
            sum += (p.usage as { prompt_tokens: number }).prompt_tokens;
          });
          expect(sum).toBe(promptTokens);
        },
      ),
    );
  });
});
