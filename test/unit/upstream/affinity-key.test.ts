import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  affinityKey,
  CHARS_PER_TOKEN_ID,
  DEFAULT_PREFIX_CHARS,
  hashString,
} from "../../../src/upstream/affinity.js";

const prefix = { by: "prefix" } as const;
const header = { by: "header" } as const;

/** An 8,000-character system prompt, as in the affinity bench, distinct per application. */
function systemPrompt(app: number): string {
  const line = `Application ${app}: you answer questions about product line ${app * 7919}. `;
  return line.repeat(Math.ceil(8_000 / line.length)).slice(0, 8_000);
}

function chat(system: string, user: string): unknown {
  return {
    model: "m",
    messages: [
      { role: "system", content: system },
      { role: "user", content: user },
    ],
  };
}

describe("affinityKey by prefix", () => {
  it("the same system prompt with different user parts gives the same key", () => {
    const a = affinityKey(chat(systemPrompt(1), "What is the warranty on model X-100, please?"), prefix);
    const b = affinityKey(chat(systemPrompt(1), "How do I reset my password for the portal?"), prefix);
    expect(a).toBeTypeOf("number");
    expect(a).toBe(b);
  });

  it("different system prompts give different keys", () => {
    const seen = new Set<number | undefined>();
    for (let app = 0; app < 200; app++) seen.add(affinityKey(chat(systemPrompt(app), "hi"), prefix));
    expect(seen.size).toBe(200);
    expect(seen.has(undefined)).toBe(false);
  });

  it("a prompt shorter than prefixChars is keyed whole: the user part then decides", () => {
    const options = { by: "prefix", prefixChars: 10_000 } as const;
    const a = affinityKey(chat(systemPrompt(1), "question one"), options);
    const b = affinityKey(chat(systemPrompt(1), "question two"), options);
    expect(a).not.toBe(b);
  });

  it("covers exactly prefixChars characters (completions prompt)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.string({ minLength: 301, maxLength: 400 }),
        (n, text) => {
          const options = { by: "prefix", prefixChars: n } as const;
          const key = affinityKey({ prompt: text }, options);
          const changedAt = (i: number) =>
            `${text.slice(0, i)}${text[i] === "x" ? "y" : "x"}${text.slice(i + 1)}`;
          expect(affinityKey({ prompt: changedAt(n) }, options)).toBe(key);
          expect(affinityKey({ prompt: changedAt(n - 1) }, options)).not.toBe(key);
        },
      ),
    );
  });

  it("defaults to DEFAULT_PREFIX_CHARS", () => {
    const text = "a".repeat(DEFAULT_PREFIX_CHARS);
    expect(affinityKey({ prompt: `${text}one` }, prefix)).toBe(affinityKey({ prompt: `${text}two` }, prefix));
    expect(affinityKey({ prompt: `${text.slice(1)}1` }, prefix)).not.toBe(
      affinityKey({ prompt: `${text.slice(1)}2` }, prefix),
    );
  });

  it("reads content given as an array of parts like a string content, skipping non-text parts", () => {
    const asString = affinityKey(chat("You are terse.", "hello there"), prefix);
    const asParts = affinityKey(
      {
        messages: [
          {
            role: "system",
            content: [
              { type: "text", text: "You are " },
              { type: "text", text: "terse." },
            ],
          },
          {
            role: "user",
            content: [
              { type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } },
              { type: "text", text: "hello there" },
            ],
          },
        ],
      },
      prefix,
    );
    expect(asParts).toBe(asString);
  });

  it("tells roles and message boundaries apart", () => {
    const base = affinityKey(chat("abc", "def"), prefix);
    expect(
      affinityKey(
        {
          messages: [
            { role: "user", content: "abc" },
            { role: "user", content: "def" },
          ],
        },
        prefix,
      ),
    ).not.toBe(base);
    expect(affinityKey({ messages: [{ role: "system", content: "abcdef" }] }, prefix)).not.toBe(base);
  });

  it("keys a completions prompt: a string, or the first element of an array", () => {
    const s = affinityKey({ prompt: "Once upon a time" }, prefix);
    expect(s).toBeTypeOf("number");
    expect(affinityKey({ prompt: ["Once upon a time", "something else"] }, prefix)).toBe(s);
    expect(affinityKey({ prompt: "Once upon a midnight" }, prefix)).not.toBe(s);
  });

  it("keys token-id prompts, each id counting CHARS_PER_TOKEN_ID characters", () => {
    const options = { by: "prefix", prefixChars: 3 * CHARS_PER_TOKEN_ID } as const;
    const ids = affinityKey({ prompt: [101, 2023, 2003, 9999] }, options);
    expect(ids).toBeTypeOf("number");
    expect(affinityKey({ prompt: [101, 2023, 2003, 1] }, options)).toBe(ids);
    expect(affinityKey({ prompt: [101, 2023, 2004, 9999] }, options)).not.toBe(ids);
    expect(affinityKey({ prompt: [[101, 2023, 2003, 5], [7]] }, options)).toBe(ids);
    expect(affinityKey({ prompt: [100_000, 1] }, options)).not.toBe(
      affinityKey({ prompt: [100_001, 1] }, options),
    );
  });

  it("has no key for bodies without a prompt", () => {
    for (const body of [
      undefined,
      null,
      "text",
      [1, 2],
      {},
      { messages: [] },
      { messages: [{ role: "user", content: "" }] },
      { messages: [{ role: "assistant", content: null }] },
      { prompt: "" },
      { prompt: [] },
      { input: "embeddings are not keyed" },
    ]) {
      expect(affinityKey(body, prefix), JSON.stringify(body)).toBeUndefined();
    }
  });

  it("never throws on odd bodies (property)", () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.jsonValue(), (messages, prompt) => {
        const k1 = affinityKey({ messages }, prefix);
        const k2 = affinityKey({ prompt }, prefix);
        for (const k of [k1, k2]) {
          if (k !== undefined) expect(Number.isInteger(k) && k >= 0 && k <= 0xffffffff).toBe(true);
        }
      }),
    );
  });
});

describe("affinityKey by header", () => {
  it("uses the session header, x-session-id by default", () => {
    const a = affinityKey({}, header, { "x-session-id": "conv-1" });
    expect(a).toBe(hashString("conv-1"));
    expect(affinityKey({ user: "someone" }, header, { "x-session-id": "conv-1" })).toBe(a);
    expect(affinityKey({}, header, { "x-session-id": "conv-2" })).not.toBe(a);
    expect(affinityKey({}, header, { "x-session-id": ["conv-1", "conv-9"] })).toBe(a);
  });

  it("takes a configured header name", () => {
    const options = { by: "header", header: "x-conversation" } as const;
    expect(affinityKey({}, options, { "x-conversation": "c" })).toBe(hashString("c"));
    expect(affinityKey({}, options, { "x-session-id": "c" })).toBeUndefined();
    expect(affinityKey({}, { by: "header", header: "X-Conversation" }, { "x-conversation": "c" })).toBe(
      hashString("c"),
    );
  });

  it("falls back to the body's prompt_cache_key, then its user", () => {
    expect(affinityKey({ user: "alice" }, header, {})).toBe(hashString("alice"));
    expect(affinityKey({ user: "alice" }, header)).toBe(hashString("alice"));
    expect(affinityKey({ user: "alice", prompt_cache_key: "pk" }, header, {})).toBe(hashString("pk"));
    expect(affinityKey({ user: "alice" }, header, { "x-session-id": "" })).toBe(hashString("alice"));
  });

  it("has no key without a header, prompt_cache_key or user", () => {
    expect(affinityKey({}, header, {})).toBeUndefined();
    expect(affinityKey({ user: "" }, header, {})).toBeUndefined();
    expect(affinityKey({ user: 42 }, header, {})).toBeUndefined();
    expect(affinityKey(undefined, header, {})).toBeUndefined();
  });

  it("by off gives no key", () => {
    expect(affinityKey(chat("a", "b"), { by: "off" }, { "x-session-id": "s" })).toBeUndefined();
  });
});
