import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  countInputTokens,
  countPromptTokens,
  countTokens,
  IMAGE_PART_TOKENS,
  MESSAGE_OVERHEAD_TOKENS,
  NAME_OVERHEAD_TOKENS,
  REPLY_PRIMING_TOKENS,
  tokenize,
} from "../../../src/tokens/tokenizer.js";

describe("tokenize", () => {
  it.each([
    ["", []],
    ["   \n\t ", []],
    ["hello", ["hello"]],
    ["Hello, world!", ["Hello", ",", "world", "!"]],
    ["don't stop", ["don", "'", "t", "stop"]],
    ["snake_case 42x", ["snake_case", "42x"]],
    ["a+b=c", ["a", "+", "b", "=", "c"]],
    ["café naïve", ["café", "naïve"]],
    ["привет мир", ["привет", "мир"]],
    ["漢字かな", ["漢", "字", "か", "な"]],
    ["APIを使う", ["API", "を", "使", "う"]],
    ["ok 👍", ["ok", "👍"]],
  ])("%j -> %j", (text, tokens) => {
    expect(tokenize(text)).toEqual(tokens);
    expect(countTokens(text)).toBe(tokens.length);
  });

  it("countTokens always equals tokenize().length and is repeatable", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme" }), (text) => {
        const n = countTokens(text);
        return n === tokenize(text).length && n === countTokens(text);
      }),
    );
  });

  it("never counts more tokens than non-space code points", () => {
    fc.assert(fc.property(fc.string(), (text) => countTokens(text) <= [...text.replace(/\s/g, "")].length));
  });
});

describe("countPromptTokens", () => {
  const perMessage = MESSAGE_OVERHEAD_TOKENS;

  it("sums message contents plus per-message overhead and reply priming", () => {
    const body = {
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hi there" },
      ],
    };
    expect(countPromptTokens(body)).toBe(REPLY_PRIMING_TOKENS + 2 * perMessage + 3 + 2);
  });

  it("accepts content parts, names, images, tool calls and null content", () => {
    const body = {
      messages: [
        {
          role: "user",
          name: "ada",
          content: [
            { type: "text", text: "look at this" },
            { type: "image_url", image_url: { url: "data:..." } },
          ],
        },
        {
          role: "assistant",
          content: null,
          tool_calls: [{ id: "c1", type: "function", function: { name: "lookup", arguments: '{"q":"x"}' } }],
        },
      ],
    };
    const expected =
      REPLY_PRIMING_TOKENS +
      perMessage +
      NAME_OVERHEAD_TOKENS +
      1 + // "ada"
      3 + // look at this
      IMAGE_PART_TOKENS +
      perMessage +
      1 + // lookup
      countTokens('{"q":"x"}');
    expect(countPromptTokens(body)).toBe(expected);
  });

  it("counts tool definitions the model reads", () => {
    const tools = [{ type: "function", function: { name: "f", parameters: {} } }];
    const without = countPromptTokens({ messages: [{ role: "user", content: "x" }] });
    expect(countPromptTokens({ messages: [{ role: "user", content: "x" }], tools })).toBe(
      without + countTokens(JSON.stringify(tools)),
    );
  });

  it("handles completions prompts and embeddings inputs in all OpenAI shapes", () => {
    expect(countPromptTokens({ prompt: "one two" })).toBe(2);
    expect(countPromptTokens({ prompt: ["one two", "three"] })).toBe(3);
    expect(countPromptTokens({ prompt: [1, 2, 3] })).toBe(3);
    expect(countPromptTokens({ prompt: [[1, 2], [3]] })).toBe(3);
    expect(countPromptTokens({ input: "a b c" })).toBe(3);
    expect(countInputTokens(["x", [1, 2]])).toBe(3);
  });

  it("never throws on junk and counts it as zero or overhead only", () => {
    expect(countPromptTokens(null)).toBe(0);
    expect(countPromptTokens("text")).toBe(0);
    expect(countPromptTokens({})).toBe(0);
    expect(countPromptTokens({ messages: [42] })).toBe(REPLY_PRIMING_TOKENS + perMessage);
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const n = countPromptTokens({ messages: [value], prompt: value });
        return Number.isInteger(n) && n >= 0;
      }),
    );
  });
});
