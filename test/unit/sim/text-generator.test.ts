import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type GenerationInput, generateAll, startGeneration } from "../../../src/sim/text-generator.js";
import { countTokens } from "../../../src/tokens/tokenizer.js";

const base: GenerationInput = {
  serverSeed: 1,
  model: "m",
  promptKey: '[{"role":"user","content":"hi"}]',
  maxTokens: undefined,
  requestSeed: undefined,
  deterministic: true,
  requestCounter: 0,
  outputTokensMin: 10,
  outputTokensMax: 40,
};

const text = (over: Partial<GenerationInput> = {}) => generateAll(startGeneration({ ...base, ...over }));

describe("startGeneration", () => {
  it("is a pure function of seed, model, prompt and max tokens when deterministic", () => {
    expect(text({ requestCounter: 1 })).toBe(text({ requestCounter: 99 }));
    expect(text()).not.toBe(text({ serverSeed: 2 }));
    expect(text()).not.toBe(text({ model: "other" }));
    expect(text()).not.toBe(text({ promptKey: "different" }));
    expect(text({ maxTokens: 20 })).not.toBe(text({ maxTokens: 21 }).slice(0, -1));
  });

  it("mixes in the request counter when sampling", () => {
    const sampled = (n: number) => text({ deterministic: false, requestCounter: n });
    expect(sampled(1)).not.toBe(sampled(2));
    expect(sampled(3)).toBe(sampled(3));
  });

  it("honours max_tokens exactly with finish_reason length, else draws a stop length in range", () => {
    const capped = startGeneration({ ...base, maxTokens: 7 });
    expect(capped.outputTokens).toBe(7);
    expect(capped.finishReason).toBe("length");
    for (let seed = 0; seed < 50; seed++) {
      const g = startGeneration({ ...base, serverSeed: seed });
      expect(g.finishReason).toBe("stop");
      expect(g.outputTokens).toBeGreaterThanOrEqual(10);
      expect(g.outputTokens).toBeLessThanOrEqual(40);
    }
  });

  it("produces text whose token count equals the reported completion tokens", () => {
    fc.assert(
      fc.property(
        fc.integer(),
        fc.string(),
        fc.option(fc.integer({ min: 1, max: 300 }), { nil: undefined }),
        (serverSeed, promptKey, maxTokens) => {
          const g = startGeneration({ ...base, serverSeed, promptKey, maxTokens });
          return countTokens(generateAll(g)) === g.outputTokens;
        },
      ),
    );
  });

  it("ends a natural stop with a full stop, and reads like words", () => {
    const out = text();
    expect(out.endsWith(".")).toBe(true);
    expect(out).toMatch(/^[A-Z][a-z]+/);
  });
});
