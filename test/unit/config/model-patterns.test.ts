import { describe, expect, it } from "vitest";
import { modelMatcher } from "../../../src/config/index.js";

describe("modelMatcher", () => {
  it("no list: every model", () => {
    const all = modelMatcher(undefined);
    expect(["llama-70b", "", "x*y"].every(all)).toBe(true);
  });

  it("names match themselves only; `*` matches any run; nothing else is special", () => {
    const may = modelMatcher(["llama-3.1-8b", "mistral-*", "*-instruct", "qwen2.5-[7b]"]);
    const allowed = ["llama-3.1-8b", "mistral-", "mistral-7b-v0.3", "phi-3-instruct", "qwen2.5-[7b]"];
    const refused = ["llama-3.1-70b", "llama-3.1-8", "xmistral-7b", "phi-3-instruct-v2", "qwen2.5-7b"];
    expect(allowed.filter(may)).toEqual(allowed);
    expect(refused.filter(may)).toEqual([]);
    // A dot is a dot, not any character.
    expect(modelMatcher(["llama-3.1-*"])("llama-301-8b")).toBe(false);
  });
});
