/**
 * The prefix-affinity workload, as settled for the benchmark: 16 applications, each with its own
 * 8,000-character system prompt, chosen with Zipf popularity (exponent 1.0); each request adds a
 * user part of about 40 characters and asks for a 50-token streamed answer. Everything is seeded,
 * so every target is sent the same requests at the same times.
 *
 * The simulator counts one token per word (src/tokens/tokenizer.ts); the prompts are made of
 * three-letter words and spaces, so 4 characters make a token, as the workload says, and the
 * simulator's prefill rate can be set in real tokens.
 */
import { prng } from "../surge/load.mjs";

export const MODEL = "affinity-model";
export const APPS = 16;
export const SYSTEM_CHARS = 8000;
export const ZIPF_EXPONENT = 1.0;
export const MAX_TOKENS = 50;
export const BLOCK_CHARS = 256;
/** Each server's prefix cache holds about this many system prompts. */
export const CACHE_PROMPTS = 5;
export const CHARS_PER_TOKEN = 4;
export const PREFILL_TOKENS_PER_SECOND = 5000;
export const PREFILL_MS_PER_TOKEN = 1000 / PREFILL_TOKENS_PER_SECOND;

const LETTERS = "abcdefghijklmnopqrstuvwxyz";

function word(random) {
  let w = "";
  for (let i = 0; i < 3; i++) w += LETTERS[Math.floor(random() * 26)];
  return w;
}

/** Application `app`'s system prompt: SYSTEM_CHARS characters of seeded three-letter words. */
export function systemPrompt(app, seed = 1) {
  const random = prng(seed * 1000 + app + 1);
  let text = `You are the assistant of app ${String(app).padStart(2, "0")}.`;
  while (text.length + 4 <= SYSTEM_CHARS) text += ` ${word(random)}`;
  return text.padEnd(SYSTEM_CHARS, ".");
}

/** A user turn of about 40 characters. */
function userPart(random, n) {
  const words = Array.from({ length: 6 }, () => word(random)).join(" ");
  return `Question ${String(n).padStart(5, "0")}: ${words}?`;
}

/** Cumulative Zipf weights over the applications: P(app k) ∝ 1 / (k + 1)^s. */
function zipfCdf(n, s) {
  const w = Array.from({ length: n }, (_, k) => 1 / (k + 1) ** s);
  const total = w.reduce((a, b) => a + b, 0);
  let acc = 0;
  return w.map((x) => {
    acc += x / total;
    return acc;
  });
}

/** The share of requests each application gets. */
export function popularity() {
  const cdf = zipfCdf(APPS, ZIPF_EXPONENT);
  return cdf.map((c, i) => c - (cdf[i - 1] ?? 0));
}

/**
 * The request bodies of `count` arrivals: { app, body } each, the application drawn by Zipf.
 * `prompts` caches the system prompts (they are long and shared).
 */
export function bodies(count, seed = 1) {
  const random = prng(seed * 7919 + 17);
  const cdf = zipfCdf(APPS, ZIPF_EXPONENT);
  const prompts = Array.from({ length: APPS }, (_, app) => systemPrompt(app, seed));
  const out = [];
  for (let n = 0; n < count; n++) {
    const u = random();
    const app = Math.min(
      APPS - 1,
      cdf.findIndex((c) => u < c),
    );
    out.push({ app, body: chatBody(prompts[app], userPart(random, n)) });
  }
  return out;
}

/** A request whose system prompt no other request shares: nothing of it is ever cached. */
export function uncachedBody(random, n) {
  let text = `Unique prompt ${n} ${random()}.`;
  while (text.length + 4 <= SYSTEM_CHARS) text += ` ${word(random)}`;
  return chatBody(text.padEnd(SYSTEM_CHARS, "."), userPart(random, n));
}

function chatBody(system, user) {
  return JSON.stringify({
    model: MODEL,
    stream: true,
    max_tokens: MAX_TOKENS,
    messages: [
      { role: "system", content: system },
      { role: "user", content: user },
    ],
  });
}

/** Blocks of one request's canonical prompt text (the JSON of its messages, as the simulator cuts it). */
export function blocksPerPrompt() {
  const { messages } = JSON.parse(bodies(1)[0].body);
  return Math.ceil(JSON.stringify(messages).length / BLOCK_CHARS);
}
