import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type CacheKeyParts, cacheKey, canonicalJson, isCacheable } from "../../../src/cache/key.js";

const base: CacheKeyParts = {
  scope: "tenant-a",
  pool: "llama",
  model: "llama-3.1-8b",
  route: "/v1/chat/completions",
  body: {
    model: "llama-3.1-8b",
    messages: [
      { role: "system", content: "be brief" },
      { role: "user", content: "hi" },
    ],
    temperature: 0,
    max_tokens: 64,
  },
};

function withBody(body: Record<string, unknown>): CacheKeyParts {
  return { ...base, body };
}

describe("cacheKey: the same question gives the same key", () => {
  const same: [string, CacheKeyParts][] = [
    [
      "top-level keys in another order",
      withBody({
        max_tokens: 64,
        temperature: 0,
        messages: base.body.messages,
        model: "llama-3.1-8b",
      }),
    ],
    [
      "nested keys in another order",
      withBody({
        ...base.body,
        messages: [
          { content: "be brief", role: "system" },
          { content: "hi", role: "user" },
        ],
      }),
    ],
    ["a user id", withBody({ ...base.body, user: "alice" })],
    ["a safety identifier", withBody({ ...base.body, safety_identifier: "u-1" })],
    ["stream: true", withBody({ ...base.body, stream: true })],
    ["stream_options", withBody({ ...base.body, stream: true, stream_options: { include_usage: true } })],
    ["metadata and store", withBody({ ...base.body, metadata: { run: "7" }, store: true })],
    ["service tier and priority", withBody({ ...base.body, service_tier: "flex", priority: 3 })],
    ["prompt_cache_key and request_id", withBody({ ...base.body, prompt_cache_key: "p", request_id: "r-9" })],
    [
      "1.0 parsed from JSON",
      withBody(
        JSON.parse(
          '{"model":"llama-3.1-8b","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"temperature":0.0,"max_tokens":64.0}',
        ),
      ),
    ],
    ["an undefined property (JSON drops it)", withBody({ ...base.body, top_p: undefined })],
  ];
  it.each(same)("%s", (_name, parts) => {
    expect(cacheKey(parts)).toBe(cacheKey(base));
  });

  it("is a hex sha256", () => {
    expect(cacheKey(base)).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe("cacheKey: a different question or owner gives a different key", () => {
  const different: [string, CacheKeyParts][] = [
    ["another tenant scope", { ...base, scope: "tenant-b" }],
    ["another pool", { ...base, pool: "mistral" }],
    ["another model", { ...base, model: "llama-3.1-70b" }],
    ["another route", { ...base, route: "/v1/completions" }],
    ["another temperature", withBody({ ...base.body, temperature: 0.7 })],
    ["a seed", withBody({ ...base.body, seed: 1 })],
    ["another max_tokens", withBody({ ...base.body, max_tokens: 65 })],
    [
      "messages in another order",
      withBody({ ...base.body, messages: [...(base.body.messages as unknown[])].reverse() }),
    ],
    [
      "a nested user field (only top-level user is ignored)",
      withBody({ ...base.body, messages: [{ role: "user", content: "hi", user: "x" }] }),
    ],
    ["tools", withBody({ ...base.body, tools: [{ type: "function", function: { name: "f" } }] })],
    ["logprobs", withBody({ ...base.body, logprobs: true })],
    ["a string number", withBody({ ...base.body, max_tokens: "64" })],
    ["null instead of absent", withBody({ ...base.body, top_p: null })],
  ];
  it.each(different)("%s", (_name, parts) => {
    expect(cacheKey(parts)).not.toBe(cacheKey(base));
  });

  it("cannot be forged by moving text between scope, pool and model", () => {
    expect(cacheKey({ ...base, scope: "a", pool: "b,c" })).not.toBe(
      cacheKey({ ...base, scope: "a,b", pool: "c" }),
    );
    expect(cacheKey({ ...base, scope: 'a","b' })).not.toBe(
      cacheKey({ ...base, scope: "a", pool: `b",${base.pool}` }),
    );
  });
});

describe("canonicalJson", () => {
  it("sorts keys recursively and keeps array order", () => {
    expect(canonicalJson({ b: 1, a: { d: [3, { z: 1, y: 2 }], c: null } })).toBe(
      '{"a":{"c":null,"d":[3,{"y":2,"z":1}]},"b":1}',
    );
  });

  it("renders numbers as JSON does", () => {
    expect(canonicalJson([1.0, -0, 1e21, 0.1, Number.NaN, Number.POSITIVE_INFINITY])).toBe(
      "[1,0,1e+21,0.1,null,null]",
    );
  });

  it("writes undefined in arrays as null and drops it in objects", () => {
    expect(canonicalJson({ a: undefined, b: [undefined] })).toBe('{"b":[null]}');
  });

  it("treats __proto__ as data and does not touch Object.prototype", () => {
    const parsed = JSON.parse('{"__proto__":{"polluted":true},"a":1}') as Record<string, unknown>;
    expect(canonicalJson(parsed)).toBe('{"__proto__":{"polluted":true},"a":1}');
    expect(cacheKey(withBody(parsed))).not.toBe(cacheKey(withBody({ a: 1 })));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it("throws a TypeError on a cycle instead of overflowing the stack", () => {
    const body: Record<string, unknown> = { a: 1 };
    body.self = body;
    expect(() => cacheKey(withBody(body))).toThrow(TypeError);
  });

  it("is the same for any key order and agrees with JSON.parse (property)", () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const text = canonicalJson(value);
        // Same value after a JSON round trip with shuffled keys (reverse order here).
        const reversed = JSON.parse(JSON.stringify(value), (_k, v: unknown) =>
          v !== null && typeof v === "object" && !Array.isArray(v)
            ? Object.fromEntries(Object.entries(v).reverse())
            : v,
        ) as unknown;
        expect(canonicalJson(reversed)).toBe(text);
        // Canonical text is valid JSON for the same value.
        expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(value)));
      }),
    );
  });
});

describe("isCacheable", () => {
  const table: [string, Record<string, unknown>, "deterministic" | "always", boolean][] = [
    ["temperature 0", { temperature: 0 }, "deterministic", true],
    ["integer seed", { temperature: 0.8, seed: 42 }, "deterministic", true],
    ["negative integer seed", { seed: -1 }, "deterministic", true],
    ["no temperature, no seed", {}, "deterministic", false],
    ["temperature 0.2", { temperature: 0.2 }, "deterministic", false],
    ["a fractional seed", { seed: 1.5 }, "deterministic", false],
    ["a string seed", { seed: "42" }, "deterministic", false],
    ["a string temperature", { temperature: "0" }, "deterministic", false],
    ["n 1", { temperature: 0, n: 1 }, "deterministic", true],
    ["n null (the default)", { temperature: 0, n: null }, "deterministic", true],
    ["n 2", { temperature: 0, n: 2 }, "deterministic", false],
    ["n 2 under always", { n: 2 }, "always", false],
    ["random sampling under always", { temperature: 1 }, "always", true],
    ["logprobs and top_logprobs", { temperature: 0, logprobs: true, top_logprobs: 5 }, "deterministic", true],
    ["tools", { temperature: 0, tools: [{ type: "function" }] }, "deterministic", true],
  ];
  it.each(table)("%s (%s)", (_name, body, rule, ok) => {
    const result = isCacheable(body, rule);
    expect(result.ok).toBe(ok);
    if (!result.ok) expect(result.reason).toMatch(/\S/);
  });

  it("says why", () => {
    expect(isCacheable({ n: 3 }, "always")).toEqual({ ok: false, reason: "n is 3; only n = 1 is cached" });
    expect(isCacheable({}, "deterministic")).toEqual({
      ok: false,
      reason: "sampling is random: neither temperature 0 nor an integer seed",
    });
  });

  it("treats embeddings as deterministic", () => {
    expect(isCacheable({ input: "x" }, "deterministic", "/v1/embeddings")).toEqual({ ok: true });
  });

  it("does not read temperature through the prototype", () => {
    const body = Object.create({ temperature: 0 }) as Record<string, unknown>;
    expect(isCacheable(body, "deterministic").ok).toBe(false);
  });
});
