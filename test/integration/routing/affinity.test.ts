/**
 * Prefix affinity end to end: a real gateway in front of three simulators that cache prompt
 * prefixes. Requests that share a system prompt (or a session key) land on one backend, whose
 * engine then finds the prefix cached; a hot prefix spills past the load bound; the decisions
 * and the engines' hit ratios are in /metrics.
 */
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { boundFor } from "../../../src/upstream/affinity.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";

let sims: SimServer[] = [];
let gw: RunningGateway | undefined;
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});

/** About 3,000 characters of words that differ per application. */
function systemPrompt(app: string): string {
  const words: string[] = [];
  for (let i = 0; words.join(" ").length < 3000; i++) words.push(`${app}${(i * 7919) % 997}`);
  return `You are the assistant of ${app}. ${words.join(" ")}`;
}

async function startFleet(affinity: string, extra = ""): Promise<void> {
  const opts = {
    models: ["m"],
    prefillMsPerToken: 0,
    decodeStepMs: 1,
    decodeMsPerSeq: 0,
    prefixCacheBlocks: 400,
  };
  sims = await Promise.all([startSim(opts), startSim(opts), startSim(opts)]);
  const backends = sims.map((s, i) => `{ url: "${s.url}", name: s${i}, engine: vllm }`).join(", ");
  gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [${backends}]
    loadSignals: { interval: 50ms, staleAfter: 5s }
    affinity: ${affinity}
${extra}`);
}

async function chat(body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<void> {
  const res = await request(`${gw?.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ model: "m", max_tokens: 2, ...body }),
  });
  const text = await res.body.text();
  expect(res.statusCode, text).toBe(200);
}

/** Which simulators received requests while `run` ran (each index once per request). */
async function receivers(run: () => Promise<void>): Promise<number[]> {
  const before = sims.map((s) => s.stats().received);
  await run();
  const out: number[] = [];
  sims.forEach((s, i) => {
    for (let n = s.stats().received - (before[i] ?? 0); n > 0; n--) out.push(i);
  });
  return out;
}

function metricsText(): Promise<string> {
  const registry = gw?.gateway.metrics.registry;
  if (!registry) throw new Error("no gateway");
  return registry.metrics();
}

describe("prefix affinity", () => {
  it("keeps each system prompt on one backend, whose engine then finds it cached", async () => {
    await startFleet("{ by: prefix, prefixChars: 2048 }");
    const apps = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    const homes = new Set<number>();
    for (const app of apps) {
      const system = systemPrompt(app);
      const got = await receivers(async () => {
        for (let i = 0; i < 5; i++) {
          await chat({
            messages: [
              { role: "system", content: system },
              { role: "user", content: `question ${i} about ${app}` },
            ],
          });
        }
      });
      expect(got).toHaveLength(5);
      // All five on the same backend.
      expect(new Set(got).size).toBe(1);
      homes.add(got[0] as number);
    }
    // Six keys over three backends: more than one backend is somebody's home.
    expect(homes.size).toBeGreaterThan(1);
    // Each prompt missed once (its first request) and hit four times in its leading blocks.
    let hits = 0;
    let queries = 0;
    for (const s of sims) {
      hits += s.stats().prefixCache.hits;
      queries += s.stats().prefixCache.queries;
    }
    expect(hits / queries).toBeGreaterThan(0.7);

    const text = await metricsText();
    expect(text).toMatch(/floodgate_affinity_decisions_total\{pool="p",outcome="home"\} 30/);
    expect(text).toMatch(/floodgate_affinity_decisions_total\{pool="p",outcome="spilled"\} 0/);
    const status = await request(`${gw?.adminUrl}/admin/status`, {
      headers: { authorization: "Bearer test-admin-token-0123456789" },
    });
    const body = (await status.body.json()) as { pools: { affinity: unknown }[] };
    expect(body.pools[0]?.affinity).toEqual({
      by: "prefix",
      decisions: { home: 30, spilled: 0, home_unavailable: 0, placed: 0 },
    });
    // The engines' ratio between two readings: shown once a reading followed the traffic.
    await expect
      .poll(
        async () => {
          const m = (await metricsText()).match(
            /floodgate_backend_engine_prefix_cache_hit_ratio\{pool="p",backend="s\d"\} (\S+)/g,
          );
          return Math.max(0, ...(m ?? []).map((line) => Number(line.split(" ").pop())));
        },
        { timeout: 10_000 },
      )
      .toBeGreaterThan(0.5);
  });

  it("by header: a session stays on one backend; the body's user keys a request without the header", async () => {
    await startFleet("{ by: header, header: X-Conversation }");
    const homes = new Set<number>();
    for (let session = 0; session < 6; session++) {
      const got = await receivers(async () => {
        for (let i = 0; i < 4; i++) {
          await chat(
            { messages: [{ role: "user", content: `turn ${i} of ${session}, ${Math.random()}` }] },
            { "x-conversation": `conversation-${session}` },
          );
        }
      });
      expect(new Set(got).size).toBe(1);
      homes.add(got[0] as number);
    }
    expect(homes.size).toBeGreaterThan(1);
    const byUser = await receivers(async () => {
      for (let i = 0; i < 4; i++) {
        await chat({ user: "user-42", messages: [{ role: "user", content: `question ${Math.random()}` }] });
      }
    });
    expect(new Set(byUser).size).toBe(1);
  });

  it("a hot prefix spills past the load bound instead of piling onto its home", async () => {
    // Long streams that stay open until aborted, so every pick sees the ones before it in flight.
    const opts = { models: ["m"], prefillMsPerToken: 0, decodeStepMs: 200, decodeMsPerSeq: 0 };
    sims = await Promise.all([startSim(opts), startSim(opts), startSim(opts)]);
    const backends = sims.map((s, i) => `{ url: "${s.url}", name: s${i}, engine: vllm }`).join(", ");
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [${backends}]
    affinity: { by: prefix, loadFactor: 1.25 }
`);
    const system = systemPrompt("hot");
    const stop = new AbortController();
    const streams: Promise<unknown>[] = [];
    const gateway = gw.gateway;
    const inFlight = () => {
      const pool = gateway.upstreams.pools.get("p");
      return pool ? pool.backends.map((b) => b.inFlight) : [];
    };
    const peaks = [0, 0, 0];
    for (let i = 0; i < 12; i++) {
      streams.push(
        request(`${gw.url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            model: "m",
            stream: true,
            max_tokens: 1000,
            messages: [
              { role: "system", content: system },
              { role: "user", content: `user ${i}` },
            ],
          }),
          signal: stop.signal,
        }).then(
          (r) => r.body.dump().catch(() => undefined),
          () => undefined,
        ),
      );
      // Each request is in flight before the next is sent.
      await expect.poll(() => inFlight().reduce((a, b) => a + b, 0), { timeout: 10_000 }).toBe(i + 1);
      inFlight().forEach((n, j) => {
        peaks[j] = Math.max(peaks[j] ?? 0, n);
      });
    }
    // Twelve in flight: no backend holds more than the bound with 11 others in flight.
    expect(Math.max(...peaks)).toBeLessThanOrEqual(boundFor(11, 1, 3, 1.25));
    const text = await metricsText();
    const count = (outcome: string) =>
      Number(
        text.match(
          new RegExp(`floodgate_affinity_decisions_total\\{pool="p",outcome="${outcome}"\\} (\\d+)`),
        )?.[1],
      );
    expect(count("spilled")).toBeGreaterThan(0);
    expect(count("home") + count("spilled")).toBe(12);
    stop.abort();
    await Promise.all(streams);
  });
});

describe("prefix affinity with a model of the engines' caches", () => {
  /** Three simulators that each cache about three of the prompts below (12 blocks each). */
  async function fleetBehind(affinity: string): Promise<void> {
    const opts = {
      models: ["m"],
      prefillMsPerToken: 0,
      decodeStepMs: 1,
      decodeMsPerSeq: 0,
      prefixCacheBlocks: 36,
      prefixBlockChars: 256,
    };
    sims = await Promise.all([startSim(opts), startSim(opts), startSim(opts)]);
    const backends = sims.map((s, i) => `{ url: "${s.url}", name: s${i}, engine: vllm }`).join(", ");
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [${backends}]
    affinity: ${affinity}
`);
  }

  /** Eight applications in turn, five rounds: more prompts than any one server caches. */
  async function workload(): Promise<{ hits: number; queries: number }> {
    const apps = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
    for (let round = 0; round < 5; round++) {
      for (const app of apps) {
        await chat({
          messages: [
            { role: "system", content: systemPrompt(app) },
            { role: "user", content: `round ${round}` },
          ],
        });
      }
    }
    let hits = 0;
    let queries = 0;
    for (const s of sims) {
      hits += s.stats().prefixCache.hits;
      queries += s.stats().prefixCache.queries;
    }
    return { hits, queries };
  }

  async function stop(): Promise<void> {
    await gw?.close();
    gw = undefined;
    await Promise.all(sims.map((s) => s.close()));
    sims = [];
  }

  it("finds more prompt tokens cached than least_request on the same requests, and places each prompt once", async () => {
    await fleetBehind("{ by: off }");
    const plain = await workload();
    await stop();
    // 36 blocks of 256 characters, 4 characters a token: the simulators' caches.
    await fleetBehind("{ by: prefix, cacheTokens: 2304 }");
    const modelled = await workload();
    expect(modelled.queries).toBe(plain.queries);
    // Each prompt misses once, on its first request: 4 of 5 requests hit nearly all their prompt.
    expect(modelled.hits / modelled.queries).toBeGreaterThan(0.7);
    expect(modelled.hits).toBeGreaterThan(2 * plain.hits);
    const text = await metricsText();
    expect(text).toMatch(/floodgate_affinity_decisions_total\{pool="p",outcome="placed"\} 8/);
    expect(text).toMatch(/floodgate_affinity_decisions_total\{pool="p",outcome="home"\} 32/);
  });
});
