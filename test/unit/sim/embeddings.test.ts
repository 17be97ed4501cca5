import { describe, expect, it } from "vitest";
import { embed, embeddingToBase64 } from "../../../src/sim/embeddings.js";

function cosine(a: Float32Array, b: Float32Array): number {
  let dot = 0;
  for (let i = 0; i < a.length; i++) dot += (a[i] ?? 0) * (b[i] ?? 0);
  return dot;
}

describe("embed", () => {
  it("is deterministic, unit length and of the asked dimension", () => {
    const v = embed("The cat sat on the mat", 64, "m");
    expect(v).toHaveLength(64);
    expect(Array.from(v)).toEqual(Array.from(embed("The cat sat on the mat", 64, "m")));
    expect(cosine(v, v)).toBeCloseTo(1, 5);
    expect(cosine(embed("", 8, "m"), embed("", 8, "m"))).toBeCloseTo(1, 5);
  });

  it("puts texts that share words closer than unrelated ones", () => {
    const a = embed("the cat sat on the mat", 256, "m");
    const b = embed("a cat sat on a mat", 256, "m");
    const c = embed("quantum chromodynamics lecture notes", 256, "m");
    expect(cosine(a, b)).toBeGreaterThan(cosine(a, c) + 0.3);
  });

  it("depends on the model", () => {
    expect(Array.from(embed("x", 8, "m1"))).not.toEqual(Array.from(embed("x", 8, "m2")));
  });

  it("encodes base64 as little-endian float32, as OpenAI does", () => {
    const v = embed("hello", 16, "m");
    const bytes = Buffer.from(embeddingToBase64(v), "base64");
    const back = Array.from({ length: 16 }, (_, i) => bytes.readFloatLE(i * 4));
    expect(back).toEqual(Array.from(v));
  });
});
