/**
 * Deterministic embeddings: a hashed bag of words. Each token (lower-cased) maps to a fixed
 * pseudo-random vector; a text's embedding is the normalised sum over its tokens. Texts that share
 * words therefore get a high cosine similarity, so semantic-cache style logic can be tested, and
 * the same text always gets the same vector.
 */

import { tokenize } from "../tokens/tokenizer.js";
import { createRng, hashString } from "./rng.js";

export function embed(text: string, dimensions: number, model: string): Float32Array {
  const modelSeed = hashString(model);
  const sum = new Float64Array(dimensions);
  const tokens = tokenize(text.toLowerCase());
  // An empty text still gets a unit vector of its own rather than NaNs.
  if (tokens.length === 0) tokens.push("");
  for (const token of tokens) {
    const rng = createRng(hashString(token, modelSeed));
    for (let i = 0; i < dimensions; i++) sum[i] = (sum[i] ?? 0) + (rng.next() * 2 - 1);
  }
  let norm = 0;
  for (const value of sum) norm += value * value;
  norm = Math.sqrt(norm) || 1;
  const out = new Float32Array(dimensions);
  for (let i = 0; i < dimensions; i++) out[i] = (sum[i] ?? 0) / norm;
  return out;
}

/** OpenAI's base64 encoding: the little-endian float32 bytes of the vector. */
export function embeddingToBase64(vector: Float32Array): string {
  const bytes = Buffer.alloc(vector.length * 4);
  for (let i = 0; i < vector.length; i++) bytes.writeFloatLE(vector[i] ?? 0, i * 4);
  return bytes.toString("base64");
}
