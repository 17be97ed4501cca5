/** The response cache through real gateways, the simulator, and a real redis-server. */
import { Agent, request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { startRedis, type TestRedis } from "../../helpers/redis.js";
import { postStream } from "../../helpers/sse.js";
import { startUpstream } from "../../helpers/upstream.js";

const agent = new Agent({ connections: 256 });
const KEY_A = "sk-team-a-0123456789";
const KEY_B = "sk-team-b-0123456789";
let redis: TestRedis;
let sim: SimServer;
let gateways: RunningGateway[] = [];

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});
afterEach(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  gateways = [];
  await sim?.close();
  await redis.cli("FLUSHALL");
});

async function setup(
  cache: string,
  options: { redis?: boolean; replicas?: number; tenantExtra?: string } = {},
) {
  sim = await startSim({
    models: ["m"],
    prefillMsPerToken: 0,
    decodeMsPerSeq: 0,
    decodeStepMs: 10,
    slots: 64,
  });
  // A generous commandTimeout: a lock call timed out on a busy machine would count as a lost lock.
  const yaml = `${options.redis ? `store: { type: redis, url: "${redis.url}", commandTimeout: 10s }\n` : ""}auth: { keys: [{ key: "${KEY_A}", tenant: team-a }, { key: "${KEY_B}", tenant: team-b }] }
tenants: { team-a: { ${options.tenantExtra ?? ""} }, team-b: {} }
pools:
  p:
    models: [m]
    backends: [{ url: "${sim.url}", engine: vllm }]
    loadSignals: { enabled: false }
    cache: ${cache}
`;
  gateways = await Promise.all(Array.from({ length: options.replicas ?? 1 }, () => startGateway(yaml)));
  return gateways;
}

const question = (extra: Record<string, unknown> = {}) => ({
  model: "m",
  temperature: 0,
  max_tokens: 6,
  messages: [{ role: "user", content: "What is a GPU?" }],
  ...extra,
});

async function ask(url: string, body: unknown, key = KEY_A, headers: Record<string, string> = {}) {
  const res = await request(`${url}/v1/chat/completions`, {
    method: "POST",
    dispatcher: agent,
    headers: { "content-type": "application/json", authorization: `Bearer ${key}`, ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.body.text();
  return {
    status: res.statusCode,
    cache: res.headers["x-floodgate-cache"],
    json: () => JSON.parse(text),
    text,
  };
}

const content = (r: { json: () => { choices: { message: { content: string } }[] } }) =>
  r.json().choices[0]?.message.content;

async function metric(g: RunningGateway, name: string): Promise<number> {
  const m = await g.gateway.metrics.registry.getSingleMetric(name)?.get();
  return (m?.values ?? []).reduce((n, v) => n + v.value, 0);
}

describe("stampede", () => {
  it("1,000 concurrent identical requests on a cold key through one replica: one upstream call", async () => {
    const [g] = await setup("{ enabled: true }");
    const results = await Promise.all(Array.from({ length: 1000 }, () => ask(g?.url ?? "", question())));
    expect(results.every((r) => r.status === 200)).toBe(true);
    expect(sim.stats().received).toBe(1);
    expect(results.filter((r) => r.cache === "MISS")).toHaveLength(1);
    expect(new Set(results.map(content)).size).toBe(1);
    expect(await metric(g as RunningGateway, "floodgate_cache_waiters_total")).toBeGreaterThan(0);
  });

  it("through three replicas sharing Redis: one upstream call in total (the lock held)", async () => {
    const gs = await setup("{ enabled: true, lockTimeout: 10s }", { redis: true, replicas: 3 });
    const results = await Promise.all(
      Array.from({ length: 1000 }, (_, i) => ask(gs[i % 3]?.url ?? "", question())),
    );
    expect(results.every((r) => r.status === 200)).toBe(true);
    const timeouts = (
      await Promise.all(gs.map((g) => metric(g, "floodgate_cache_lock_timeouts_total")))
    ).reduce((a, b) => a + b, 0);
    expect(timeouts).toBe(0); // so: one call across replicas, not one per replica
    expect(sim.stats().received).toBe(1);
    expect(new Set(results.map(content)).size).toBe(1);
  });

  it("when the lock is lost (it expires before the answer lands): at most one call per replica, and that is what happened", async () => {
    const gs = await setup("{ enabled: true, lockTimeout: 20ms }", { redis: true, replicas: 3 });
    const results = await Promise.all(
      Array.from({ length: 300 }, (_, i) => ask(gs[i % 3]?.url ?? "", question({ max_tokens: 20 }))),
    );
    expect(results.every((r) => r.status === 200)).toBe(true);
    const calls = sim.stats().received;
    const timeouts = (
      await Promise.all(gs.map((g) => metric(g, "floodgate_cache_lock_timeouts_total")))
    ).reduce((a, b) => a + b, 0);
    expect(calls).toBeLessThanOrEqual(3);
    // Each replica whose wait on the lock ran out made a call; on a busy machine another may
    // also have found the 20 ms lock lapsed and taken it, so at least, not exactly, that many.
    expect(calls).toBeGreaterThanOrEqual(1 + timeouts);
  });
});

describe("keys", () => {
  it("two tenants asking the same: no cross-tenant hit; the same body with keys in another order: a hit", async () => {
    const [g] = await setup("{ enabled: true }");
    const url = g?.url ?? "";
    expect((await ask(url, question(), KEY_A)).cache).toBe("MISS");
    expect((await ask(url, question(), KEY_B)).cache).toBe("MISS");
    expect(sim.stats().received).toBe(2);
    const reordered = {
      messages: question().messages,
      max_tokens: 6,
      temperature: 0,
      model: "m",
      user: "someone-else",
    };
    expect((await ask(url, reordered, KEY_A)).cache).toBe("HIT");
    // The same bytes again (their key remembered by their digest): each tenant its own entry.
    expect((await ask(url, question(), KEY_B)).cache).toBe("HIT");
    expect((await ask(url, question(), KEY_A)).cache).toBe("HIT");
    expect((await ask(url, question({ max_tokens: 7 }), KEY_A)).cache).toBe("MISS");
    expect(sim.stats().received).toBe(3);
  });

  it("a shared scope shares across tenants; non-deterministic requests and no-store bypass; no-cache revalidates", async () => {
    const [g] = await setup("{ enabled: true, scope: shared }");
    const url = g?.url ?? "";
    await ask(url, question(), KEY_A);
    expect((await ask(url, question(), KEY_B)).cache).toBe("HIT");
    expect((await ask(url, question({ temperature: 0.7 }))).cache).toBe("BYPASS");
    expect((await ask(url, question({ seed: 7, temperature: 0.7 }))).cache).toBe("MISS");
    expect((await ask(url, question(), KEY_A, { "cache-control": "no-store" })).cache).toBe("BYPASS");
    const before = sim.stats().received;
    expect((await ask(url, question(), KEY_A, { "cache-control": "no-cache" })).cache).toBe("MISS");
    expect(sim.stats().received).toBe(before + 1);
  });
});

describe("streams", () => {
  it("a cached stream replays the same events in the same order; the non-streamed form matches the backend's", async () => {
    const [g] = await setup("{ enabled: true }");
    const url = `${g?.url}/v1/chat/completions`;
    const headers = { authorization: `Bearer ${KEY_A}` };
    const first = await postStream(url, question({ stream: true }), { headers });
    const second = await postStream(url, question({ stream: true }), { headers });
    expect(first.headers["x-floodgate-cache"]).toBe("MISS");
    expect(second.headers["x-floodgate-cache"]).toBe("HIT");
    expect(second.events.map((e) => e.data)).toEqual(first.events.map((e) => e.data));
    // Usage was asked for upstream (to record it), not by the client: its usage chunk is hidden.
    const withUsage = first.events.filter((e) => e.data.startsWith("{") && JSON.parse(e.data).usage);
    expect(withUsage).toEqual([]);

    const cached = await ask(g?.url ?? "", question());
    expect(cached.cache).toBe("HIT");
    expect(sim.stats().received).toBe(1);
    const direct = await request(`${sim.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(question()),
    });
    const backend = (await direct.body.json()) as {
      choices: { message: { content: string }; finish_reason: string }[];
      usage: unknown;
    };
    const mine = cached.json();
    expect(mine.choices[0].message.content).toBe(backend.choices[0]?.message.content);
    expect(mine.choices[0].finish_reason).toBe(backend.choices[0]?.finish_reason);
    expect(mine.usage).toEqual(backend.usage);

    // And the other way: a streamed request answered from the non-streamed entry of another key.
    await ask(g?.url ?? "", question({ max_tokens: 4 }));
    const rendered = await postStream(
      url,
      question({ max_tokens: 4, stream: true, stream_options: { include_usage: true } }),
      { headers },
    );
    expect(rendered.headers["x-floodgate-cache"]).toBe("HIT");
    expect(rendered.events.at(-1)?.data).toBe("[DONE]");
    expect(JSON.parse(rendered.events.at(-2)?.data ?? "{}").usage.completion_tokens).toBe(4);
  });

  it("a short stream that arrives in one read is stored too (it ends before the handler has its result)", async () => {
    const chunk = (body: Record<string, unknown>) =>
      `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", created: 1, model: "m", ...body })}\n\n`;
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      // Every event in one write: the gateway reads headers, events and end in one go.
      res.end(
        chunk({ choices: [{ index: 0, delta: { role: "assistant", content: "Hi" }, finish_reason: null }] }) +
          chunk({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }) +
          chunk({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 } }) +
          "data: [DONE]\n\n",
      );
    });
    try {
      const g = await startGateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${upstream.url}" }]
    loadSignals: { enabled: false }
    cache: { enabled: true }
`);
      gateways.push(g);
      const url = `${g.url}/v1/chat/completions`;
      const statuses = [];
      for (let i = 0; i < 3; i++) {
        const r = await postStream(url, question({ stream: true }));
        expect(r.events.at(-1)?.data).toBe("[DONE]");
        statuses.push(r.headers["x-floodgate-cache"]);
      }
      expect(statuses).toEqual(["MISS", "HIT", "HIT"]);
      expect(upstream.received).toHaveLength(1);
    } finally {
      await upstream.close();
    }
  });

  it("a backend that dies mid-stream: nothing stored, and the next request goes upstream", async () => {
    const [g] = await setup("{ enabled: true }");
    const url = `${g?.url}/v1/chat/completions`;
    await sim.setFaults({ dropMidStreamAfterTokens: 2 });
    const broken = await postStream(url, question({ stream: true }), {
      headers: { authorization: `Bearer ${KEY_A}` },
    });
    expect(broken.events.at(-1)?.event).toBe("error");
    await sim.clearFaults();
    const next = await ask(g?.url ?? "", question());
    expect(next.cache).toBe("MISS");
    expect(next.status).toBe(200);
  });
});

describe("stale answers", () => {
  it("stale-if-error serves the old entry while every backend is down, saying STALE", async () => {
    const [g] = await setup("{ enabled: true, ttl: 200ms, jitterPercent: 0, staleIfError: 1m }");
    const url = g?.url ?? "";
    const fresh = await ask(url, question());
    await new Promise((r) => setTimeout(r, 300));
    await sim.setFaults({ errorRate: 1, errorStatus: 503 });
    const stale = await ask(url, question());
    expect(stale.status).toBe(200);
    expect(stale.cache).toBe("STALE");
    expect(content(stale)).toBe(content(fresh));
  });

  it("stale-while-revalidate answers at once from the old entry and refreshes it in the background", async () => {
    // Fresh for 1 s: the refreshed entry is still fresh when asked for, however slow the machine.
    const [g] = await setup("{ enabled: true, ttl: 1s, jitterPercent: 0, staleWhileRevalidate: 1m }");
    const url = g?.url ?? "";
    await ask(url, question());
    await new Promise((r) => setTimeout(r, 1100));
    expect((await ask(url, question())).cache).toBe("STALE");
    await eventually(() => sim.stats().received === 2, { what: "the background refresh" });
    await eventually(async () => (await ask(url, question())).cache === "HIT", {
      what: "the refreshed entry",
    });
    expect(sim.stats().received).toBe(2);
  });
});

describe("operations", () => {
  it("purge by tenant, by model, or all, through the admin API", async () => {
    const [g] = await setup("{ enabled: true }", { redis: true });
    const url = g?.url ?? "";
    await ask(url, question(), KEY_A);
    await ask(url, question(), KEY_B);
    const purge = (body: object) =>
      request(`${g?.adminUrl}/admin/cache/purge`, {
        method: "POST",
        headers: { authorization: "Bearer test-admin-token-0123456789", "content-type": "application/json" },
        body: JSON.stringify(body),
      }).then((r) => r.body.json() as Promise<{ removedFromStore: number }>);
    expect((await purge({ tenant: "team-a" })).removedFromStore).toBe(1);
    expect((await ask(url, question(), KEY_A)).cache).toBe("MISS");
    expect((await ask(url, question(), KEY_B)).cache).toBe("HIT");
    expect((await purge({ model: "m" })).removedFromStore).toBe(2);
    expect((await ask(url, question(), KEY_B)).cache).toBe("MISS");
    expect((await purge({})).removedFromStore).toBeGreaterThanOrEqual(1);
  });

  it("a hit costs no LLM tokens; the request limits still count it", async () => {
    const [g] = await setup("{ enabled: true }", {
      tenantExtra: "limits: { tokens: { rate: 1000, per: 1m }, requests: { rate: 3, per: 1m } }",
    });
    const url = g?.url ?? "";
    const first = await request(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY_A}` },
      body: JSON.stringify(question()),
    });
    await first.body.dump();
    const tokensAfterMiss = Number(first.headers["x-ratelimit-remaining-tokens"]);
    const hit = await request(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY_A}` },
      body: JSON.stringify(question()),
    });
    await hit.body.dump();
    expect(hit.headers["x-floodgate-cache"]).toBe("HIT");
    expect(hit.headers["x-ratelimit-remaining-tokens"]).toBeUndefined(); // nothing reserved
    expect(hit.headers["x-ratelimit-remaining-requests"]).toBe("1");
    expect(tokensAfterMiss).toBeLessThan(1000);
    expect((await ask(url, question())).status).toBe(200);
    expect((await ask(url, question())).status).toBe(429);
  });
});
