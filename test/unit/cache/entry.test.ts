import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type CachedAnswer, decodeEntry, encodeEntry } from "../../../src/cache/entry.js";

const json: CachedAnswer = {
  v: 1,
  route: "/v1/chat/completions",
  model: "llama-3.1-8b",
  json: { id: "chatcmpl-1", object: "chat.completion", choices: [] },
  usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 },
  createdAt: 1_700_000_000_000,
  freshUntil: 1_700_000_060_000,
  staleUntil: 1_700_000_120_000,
};

const stream: CachedAnswer = {
  v: 1,
  route: "/v1/completions",
  model: "m",
  events: [
    { data: '{"choices":[{"text":"a"}]}', at: 0 },
    { data: '{"choices":[{"text":"b"}]}', at: 12.5 },
  ],
  createdAt: 1,
  freshUntil: 2,
  staleUntil: 2,
};

function enc(x: unknown): Buffer {
  return Buffer.from(JSON.stringify(x));
}

describe("encodeEntry / decodeEntry", () => {
  it.each([
    ["json", json],
    ["stream", stream],
  ])("round-trips a %s entry", (_name, entry) => {
    expect(decodeEntry(encodeEntry(entry))).toEqual(entry);
  });

  it("drops unknown fields on both sides", () => {
    const extra = { ...json, extra: 1, usage: { ...json.usage, cached: 9 } } as CachedAnswer;
    expect(decodeEntry(encodeEntry(extra))).toEqual(json);
    expect(decodeEntry(enc({ ...json, extra: 1 }))).toEqual(json);
  });

  const bad: [string, Buffer][] = [
    ["empty", Buffer.alloc(0)],
    ["not JSON", Buffer.from("{nope")],
    ["truncated", encodeEntry(json).subarray(0, 40)],
    ["invalid UTF-8", Buffer.from([0xff, 0xfe, 0x7b])],
    ["JSON null", enc(null)],
    ["an array", enc([json])],
    ["another version", enc({ ...json, v: 2 })],
    ["no version", enc({ ...json, v: undefined })],
    ["an unknown route", enc({ ...json, route: "/v1/models" })],
    ["no model", enc({ ...json, model: 5 })],
    ["a string timestamp", enc({ ...json, createdAt: "1" })],
    ["staleUntil before freshUntil", enc({ ...json, staleUntil: json.freshUntil - 1 })],
    ["neither json nor events", enc({ ...json, json: undefined })],
    ["json not an object", enc({ ...json, json: [1] })],
    ["events not an array", enc({ ...stream, events: "x" })],
    ["an event without data", enc({ ...stream, events: [{ at: 0 }] })],
    ["an event with a string offset", enc({ ...stream, events: [{ data: "x", at: "0" }] })],
    ["usage missing a count", enc({ ...json, usage: { prompt_tokens: 1, total_tokens: 1 } })],
    [
      "negative usage",
      enc({ ...json, usage: { prompt_tokens: -1, completion_tokens: 0, total_tokens: -1 } }),
    ],
  ];
  it.each(bad)("gives undefined for %s", (_name, buf) => {
    expect(decodeEntry(buf)).toBeUndefined();
  });

  it("never throws on random bytes or random JSON (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        expect(() => decodeEntry(Buffer.from(bytes))).not.toThrow();
      }),
    );
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        expect(() => decodeEntry(enc(value))).not.toThrow();
      }),
    );
  });

  it("keeps a __proto__ key in a stored body as data", () => {
    const buf = Buffer.from(
      `{"v":1,"route":"/v1/embeddings","model":"e","json":{"__proto__":{"x":1}},"createdAt":0,"freshUntil":0,"staleUntil":0}`,
    );
    const e = decodeEntry(buf);
    expect(e?.json !== undefined && Object.hasOwn(e.json, "__proto__")).toBe(true);
    expect(Object.getPrototypeOf(e?.json)).toBe(Object.prototype);
  });
});
