import { describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { call, chunks, stream } from "./sim-http.js";

const BLOCK = 256;

/** About 8,000 characters of varied words: a long system prompt shared by several requests. */
function systemPrompt(seed: string): string {
  const words: string[] = [];
  for (let i = 0; words.join(" ").length < 8000; i++) words.push(`${seed}${(i * 7919) % 1000}`);
  return `You are the assistant of ${seed}. ${words.join(" ")}`;
}

const messages = (system: string, user: string) => [
  { role: "system", content: system },
  { role: "user", content: user },
];

interface Answer {
  promptTokens: number;
  /** ms from sending to the first content event. */
  ttftMs: number;
}

async function ask(sim: SimServer, msgs: unknown): Promise<Answer> {
  const sent = performance.now();
  const s = await stream(`${sim.url}/v1/chat/completions`, {
    model: "sim-model",
    messages: msgs,
    max_tokens: 2,
    stream: true,
    stream_options: { include_usage: true },
  });
  expect(s.status).toBe(200);
  const first = s.events.find((e) => e.data.includes('"content":"') && !e.data.includes('"role"'));
  const usage = chunks(s).find((c) => c.usage !== null && c.usage !== undefined)?.usage as
    | { prompt_tokens: number }
    | undefined;
  if (first === undefined || usage === undefined) throw new Error("stream without content or usage");
  return { promptTokens: usage.prompt_tokens, ttftMs: first.at - sent };
}

/** Tokens the sim must find cached: whole leading blocks of the canonical text two prompts share. */
function expectedHits(cached: unknown, next: unknown, promptTokens: number): number {
  const a = JSON.stringify(cached);
  const b = JSON.stringify(next);
  let common = 0;
  while (common < a.length && common < b.length && a[common] === b[common]) common++;
  const blocks = Math.min(Math.floor(common / BLOCK), Math.floor((b.length - 1) / BLOCK));
  return Math.floor((promptTokens * blocks * BLOCK) / b.length);
}

async function scrape(sim: SimServer): Promise<{ queries: number; hits: number; text: string }> {
  const res = await call(`${sim.url}/metrics`);
  expect(res.status).toBe(200);
  const read = (name: string) => {
    const match = res.text.match(new RegExp(`^${name}\\{model_name="sim-model"\\} (\\S+)$`, "m"));
    if (match === null) throw new Error(`${name} missing from /metrics`);
    return Number(match[1]);
  };
  return {
    queries: read("vllm:prefix_cache_queries_total"),
    hits: read("vllm:prefix_cache_hits_total"),
    text: res.text,
  };
}

describe("sim prefix caching", () => {
  it("skips the prefill of a shared system prompt and counts queries and hits as vLLM does", async () => {
    // ~1,300 prompt tokens at 0.5 ms: a cold prefill of well over half a second, a warm one of a few ms.
    const sim = await startSim({
      prefixCacheBlocks: 200,
      prefixBlockChars: BLOCK,
      prefillMsPerToken: 0.5,
      decodeStepMs: 2,
      decodeMsPerSeq: 0,
    });
    try {
      const system = systemPrompt("acme");
      const m1 = messages(system, "What are your opening hours?");
      const m2 = messages(system, "Where is the nearest shop?");
      const first = await ask(sim, m1);
      expect(sim.stats().prefixCache).toEqual({
        queries: first.promptTokens,
        hits: 0,
        blocks: Math.floor(JSON.stringify(m1).length / BLOCK),
      });

      const second = await ask(sim, m2);
      const hits = expectedHits(m1, m2, second.promptTokens);
      // Nearly all of the prompt: everything but the user part and the block it starts in.
      expect(hits).toBeGreaterThan(0.9 * second.promptTokens);
      expect(sim.stats().prefixCache).toMatchObject({
        queries: first.promptTokens + second.promptTokens,
        hits,
      });
      // The counters decide; the clock only confirms, with wide slack: the warm prefill is ~1/20th.
      expect(second.ttftMs).toBeLessThan(first.ttftMs / 2);

      // Another application's system prompt differs in its first block: no hit at all.
      const other = await ask(sim, messages(systemPrompt("zeta"), "What are your opening hours?"));
      const metrics = await scrape(sim);
      expect(metrics.queries).toBe(first.promptTokens + second.promptTokens + other.promptTokens);
      expect(metrics.hits).toBe(hits);
      expect(metrics.text).toContain("# TYPE vllm:prefix_cache_queries_total counter");
      expect(metrics.text).toContain("# TYPE vllm:prefix_cache_hits_total counter");
      expect(await call(`${sim.url}/sim/stats`)).toMatchObject({
        body: { prefixCache: { queries: metrics.queries, hits: metrics.hits } },
      });
    } finally {
      await sim.close();
    }
  });

  it("evicts least recently used prefixes when the cache is full", async () => {
    const one = messages(systemPrompt("one"), "hi");
    const blocksOfOne = Math.floor(JSON.stringify(one).length / BLOCK);
    // Room for one system prompt and a bit: a second one evicts the first.
    const sim = await startSim({ prefixCacheBlocks: blocksOfOne + 2, timeScale: 0 });
    try {
      await ask(sim, one);
      await ask(sim, messages(systemPrompt("two"), "hi"));
      expect(sim.stats().prefixCache.blocks).toBe(blocksOfOne + 2);
      const again = await ask(sim, one);
      // "two" (as long as "one") evicted one's blocks tail first: its first two blocks still hit.
      expect(sim.stats().prefixCache.hits).toBe(
        Math.floor((again.promptTokens * 2 * BLOCK) / JSON.stringify(one).length),
      );
    } finally {
      await sim.close();
    }
  });

  it("counts completions prompts, answers instantly under timeScale 0, and forgets the cache after a restart", async () => {
    const sim = await startSim({ prefixCacheBlocks: 100, prefixBlockChars: 64, timeScale: 0 });
    try {
      const prompt = `${systemPrompt("docs").slice(0, 2000)} Summarise:`;
      const post = () =>
        call(`${sim.url}/v1/completions`, { body: { model: "sim-model", prompt, max_tokens: 1 } });
      const a = await post();
      const b = await post();
      const tokens = (a.body as { usage: { prompt_tokens: number } }).usage.prompt_tokens;
      expect(b.status).toBe(200);
      const blocks = Math.floor((prompt.length - 1) / 64);
      expect(sim.stats().prefixCache).toEqual({
        queries: 2 * tokens,
        hits: Math.floor((tokens * blocks * 64) / prompt.length),
        blocks: Math.floor(prompt.length / 64),
      });

      // Down and back up, as a restarted engine: the counters stay, the cached blocks do not.
      await sim.setFaults({ refuseConnections: true });
      // Refused while down; this also retires the pooled connection the server closed.
      expect(await call(`${sim.url}/health`).catch((err: unknown) => err)).toBeInstanceOf(Error);
      await sim.clearFaults();
      expect(sim.stats().prefixCache.blocks).toBe(0);
      const hitsBefore = sim.stats().prefixCache.hits;
      await post();
      expect(sim.stats().prefixCache.hits).toBe(hitsBefore);
    } finally {
      await sim.close();
    }
  });

  it("is off by default: no lookups, zero counters, embeddings never counted", async () => {
    const sim = await startSim({ timeScale: 0 });
    try {
      const system = systemPrompt("acme");
      await ask(sim, messages(system, "a"));
      await ask(sim, messages(system, "b"));
      expect(sim.stats().prefixCache).toEqual({ queries: 0, hits: 0, blocks: 0 });
      expect(await scrape(sim)).toMatchObject({ queries: 0, hits: 0 });
    } finally {
      await sim.close();
    }

    const on = await startSim({ timeScale: 0, prefixCacheBlocks: 100 });
    try {
      const input = systemPrompt("embed");
      for (let i = 0; i < 2; i++) {
        const res = await call(`${on.url}/v1/embeddings`, { body: { model: "sim-model", input } });
        expect(res.status).toBe(200);
      }
      expect(on.stats().prefixCache).toEqual({ queries: 0, hits: 0, blocks: 0 });
    } finally {
      await on.close();
    }
  });
});
