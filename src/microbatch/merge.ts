/**
 * Embeddings micro-batching, the pure part: which requests may share one upstream call, the
 * merged request body, and the merged answer split back into each request's own answer. No I/O,
 * no clock (the batcher and the stage are src/microbatch/batcher.ts and src/stages/micro-batch.ts).
 *
 * Inputs. OpenAI's /v1/embeddings takes four forms of `input`: a string, an array of strings, an
 * array of token ids (one input), or an array of arrays of token ids. A request contributes its
 * inputs as a list of items, strings or token arrays; the merged call's `input` is the items of
 * its requests in order. Strings and token arrays never share a call (no engine takes a mixed
 * array: it is none of the four forms), so the input's kind is part of the key. Anything else
 * (an empty array, a mixed array, a token that is not an integer, an empty token array) cannot be
 * merged: the request goes alone, and the backend answers it as it would have.
 *
 * Key. Requests share a call only when everything but their input is the same: the canonical JSON
 * (src/cache/key.ts) of the body without `input` (model, encoding_format, dimensions, user and any
 * field the engine reads), so the merged body is every member's own body with the inputs joined,
 * and each member's answer is the one it would have got alone. The stage adds what the body does
 * not say (the pool, the query, the admission band, the credentials that reach the backend).
 *
 * Split. The answer's `data` is sorted by `index` and must hold exactly one entry per input sent
 * (else it is a bad response for every member). Each member gets its own slice with indices
 * renumbered from 0, the answer's other fields as they are, and its share of `usage`: every
 * whole-number field apportioned by the largest-remainder method over the members' estimated
 * input tokens (by input count when no member has any), so that the shares add up exactly to
 * what the backend reported, ties going to the earlier member.
 */
import { canonicalJson } from "../cache/key.js";
import type { Json } from "../context.js";
import { countInputTokens } from "../tokens/tokenizer.js";

export type InputKind = "text" | "tokens";

/** One request's inputs, as items of the merged call's `input`. */
export interface MemberInput {
  kind: InputKind;
  items: readonly (string | readonly number[])[];
  /** Estimated tokens (src/tokens/tokenizer.ts, as the token budget counts them). */
  tokens: number;
}

function isTokenArray(value: unknown): value is number[] {
  return Array.isArray(value) && value.length > 0 && value.every((t) => Number.isInteger(t));
}

/** The request's inputs if they can be merged with others; undefined when it must go alone. */
export function mergeableInput(input: unknown): MemberInput | undefined {
  if (typeof input === "string") return { kind: "text", items: [input], tokens: countInputTokens(input) };
  if (!Array.isArray(input) || input.length === 0) return undefined;
  const tokens = countInputTokens(input);
  if (input.every((item) => typeof item === "string")) return { kind: "text", items: input, tokens };
  if (isTokenArray(input)) return { kind: "tokens", items: [input], tokens };
  if (input.every(isTokenArray)) return { kind: "tokens", items: input, tokens };
  return undefined;
}

/** What the body says about which requests may share a call: all of it but the input. */
export function bodyKey(body: Json): string {
  const { input: _input, ...rest } = body;
  return canonicalJson(rest);
}

/** The merged call's body: the first member's body (the others' are the same) with every input. */
export function mergedBody(body: Json, inputs: readonly MemberInput[]): Json {
  const items: (string | readonly number[])[] = [];
  for (const input of inputs) for (const item of input.items) items.push(item);
  return { ...body, input: items };
}

/**
 * Splits `total` into whole shares proportional to `weights` that add up to exactly `total`:
 * each gets the floor of its exact share, and what is left goes one by one to the largest
 * remainders (the earlier on a tie). All-zero weights share equally.
 */
export function apportion(total: number, weights: readonly number[]): number[] {
  const n = weights.length;
  if (n === 0) return [];
  let sum = 0;
  for (const w of weights) sum += w;
  const fair = sum > 0 ? weights : weights.map(() => 1);
  const whole = sum > 0 ? sum : n;
  const shares: number[] = [];
  const remainders: { at: number; rest: number }[] = [];
  let given = 0;
  fair.forEach((w, at) => {
    // Integer arithmetic: total * w fits a double exactly for any real token count.
    const exact = total * w;
    const share = Math.floor(exact / whole);
    shares.push(share);
    given += share;
    remainders.push({ at, rest: exact - share * whole });
  });
  remainders.sort((a, b) => b.rest - a.rest || a.at - b.at);
  for (let i = 0; i < total - given; i++) {
    const r = remainders[i % n] as { at: number };
    shares[r.at] = (shares[r.at] ?? 0) + 1;
  }
  return shares;
}

/** Each member's `usage`: whole-number fields apportioned (nested objects too), others as they are. */
export function splitUsage(usage: unknown, weights: readonly number[]): unknown[] {
  if (usage === null || typeof usage !== "object" || Array.isArray(usage)) return weights.map(() => usage);
  // Built as entries: fromEntries defines properties, so an own `__proto__` stays plain data.
  const parts: [string, unknown][][] = weights.map(() => []);
  for (const [key, value] of Object.entries(usage as Json)) {
    let shares: unknown[];
    if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) {
      shares = apportion(value, weights);
    } else if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      shares = splitUsage(value, weights);
    } else {
      shares = weights.map(() => value);
    }
    parts.forEach((part, i) => {
      part.push([key, shares[i]]);
    });
  }
  return parts.map((entries) => Object.fromEntries(entries));
}

/** The share of each member in the usage: its estimated tokens, or its input count if none has any. */
export function usageWeights(inputs: readonly MemberInput[]): number[] {
  const byTokens = inputs.map((m) => m.tokens);
  return byTokens.some((t) => t > 0) ? byTokens : inputs.map((m) => m.items.length);
}

/**
 * The merged answer as each member's own answer, in the members' order; undefined when it does
 * not hold exactly one embedding per input sent (indices 0 to n-1, once each).
 */
export function splitAnswer(answer: Json, inputs: readonly MemberInput[]): Json[] | undefined {
  const data = answer.data;
  let expected = 0;
  for (const m of inputs) expected += m.items.length;
  if (!Array.isArray(data) || data.length !== expected) return undefined;
  const byIndex: Json[] = new Array(expected);
  for (const entry of data) {
    if (entry === null || typeof entry !== "object" || Array.isArray(entry)) return undefined;
    const index = (entry as Json).index;
    if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= expected) {
      return undefined;
    }
    if (byIndex[index] !== undefined) return undefined;
    byIndex[index] = entry as Json;
  }
  const usages = "usage" in answer ? splitUsage(answer.usage, usageWeights(inputs)) : undefined;
  const out: Json[] = [];
  let offset = 0;
  inputs.forEach((m, i) => {
    const own = byIndex
      .slice(offset, offset + m.items.length)
      .map((entry, j) =>
        Object.fromEntries(Object.entries(entry).map(([k, v]) => [k, k === "index" ? j : v])),
      );
    offset += m.items.length;
    // The answer's fields in their order, with this member's data and usage in their place.
    const entries = Object.entries(answer).map(([key, value]): [string, unknown] => [
      key,
      key === "data" ? own : key === "usage" && usages ? usages[i] : value,
    ]);
    out.push(Object.fromEntries(entries));
  });
  return out;
}
