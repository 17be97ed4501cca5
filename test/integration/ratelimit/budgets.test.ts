/** Token budgets, concurrency leases, IP limits behind proxies, and a Redis Cluster. */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { startRedis, startRedisCluster, type TestRedis, type TestRedisCluster } from "../../helpers/redis.js";
import { postStream } from "../../helpers/sse.js";
import { completion, gate, jsonResponse, startUpstream, type TestUpstream } from "../../helpers/upstream.js";
import { chat, count, type Outcome, startLlmUpstream, USAGE } from "./fixtures.js";

const KEY = "sk-team-a-0123456789";
let redis: TestRedis;
let upstream: TestUpstream;
let slow: TestUpstream;
let gw: RunningGateway | undefined;

beforeAll(async () => {
  redis = await startRedis();
  upstream = await startLlmUpstream();
  slow = await startLlmUpstream(300);
});
afterAll(async () => {
  await upstream.close();
  await slow.close();
  await redis.stop();
});
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  await redis.cli("FLUSHALL");
});

// A generous commandTimeout: a command timed out on a busy machine falls back to local limits,
// which count differently. The store's own deadlines are tested in test/integration/store.
function yaml(limits: string, backend = upstream.url, extra = ""): string {
  return `store: { type: redis, url: "${redis.url}", commandTimeout: 10s }
auth: { keys: [{ key: "${KEY}", tenant: team-a }] }
tenants:
  team-a:
    limits: ${limits}
pools: { p: { models: [m], backends: [{ url: "${backend}" }], loadSignals: { enabled: false } } }
${extra}`;
}

async function tokensLeft(g: RunningGateway, ratePerSec: number, burst: number): Promise<number> {
  const r = await g.gateway.store.primary.take({ key: "tok:tenant:team-a", ratePerSec, burst }, 0);
  return r.remaining;
}

describe("LLM token budgets", () => {
  it("ten concurrent requests whose max_tokens exceed the budget: the excess is refused before the backend", async () => {
    // 1000 tokens a minute; each request reserves ~12 prompt + 200 completion tokens.
    // The answers wait until every request was decided: a settled answer refunds its unused
    // reservation, and on a slow machine that could let a late request in.
    const hold = gate();
    const held = await startLlmUpstream(0, hold.opened);
    gw = await startGateway(yaml("{ tokens: { rate: 1000, per: 1m } }", held.url));
    const started = performance.now();
    let refusedSoFar = 0;
    const pending = Array.from({ length: 10 }, () =>
      chat(gw?.url ?? "", KEY, { max_tokens: 200 }).then((o) => {
        if (o.status !== 200) refusedSoFar++;
        return o;
      }),
    );
    await eventually(() => refusedSoFar + held.received.length === 10, { timeout: 30_000 });
    hold.open();
    const outcomes = await Promise.all(pending);
    await held.close();
    const admitted = count(outcomes, 200);
    expect(admitted).toBe(4); // 4 × ~212 fit in 1000, a 5th does not
    expect(held.received.length).toBe(admitted); // refused ones never reached the GPU
    const refused = outcomes.find((o) => o.status === 429);
    expect(JSON.parse(refused?.body ?? "{}")).toMatchObject({ error: { code: "tokens_limit_exceeded" } });
    expect(Number(refused?.headers["retry-after-ms"])).toBeGreaterThan(0);
    // Settled to real usage (50 each): 1000 − 4 × 50, plus what refilled meanwhile.
    const left = await tokensLeft(gw, 1000 / 60, 1000);
    const seconds = (performance.now() - started) / 1000;
    expect(left).toBeGreaterThanOrEqual(800);
    expect(left).toBeLessThanOrEqual(800 + (1000 / 60) * seconds + 0.001);
    const ok = outcomes.find((o) => o.status === 200);
    expect(ok?.headers["x-ratelimit-limit-tokens"]).toBe("1000");
    expect(Number(ok?.headers["x-ratelimit-remaining-tokens"])).toBeLessThan(1000);
    expect(ok?.headers["x-ratelimit-reset-tokens"]).toMatch(/s$/);
  });

  it("a request larger than the whole budget is refused for good (no retry)", async () => {
    gw = await startGateway(yaml("{ tokens: { rate: 100, per: 1m } }"));
    const r = await chat(gw.url, KEY, { max_tokens: 500 });
    expect(r.status).toBe(429);
    expect(JSON.parse(r.body)).toMatchObject({ error: { code: "tokens_exceed_budget" } });
    expect(r.headers["x-should-retry"]).toBe("false");
  });

  it("a budget below tokens.defaultMaxTokens: the 429 says the default was reserved for a request without max_tokens", async () => {
    gw = await startGateway(yaml("{ tokens: { rate: 500, per: 1m } }"));
    const before = upstream.received.length;
    const r = await chat(gw.url, KEY, { max_tokens: undefined }); // dropped from the JSON body
    expect(r.status).toBe(429);
    const error = JSON.parse(r.body).error;
    expect(error.code).toBe("tokens_exceed_budget");
    expect(error.message).toContain("token budget of 500: it did not set max_tokens");
    expect(error.message).toContain("default max_tokens (tokens.defaultMaxTokens: 1024)");
    // With max_tokens the client knows the number: the plain message.
    const sized = await chat(gw.url, KEY, { max_tokens: 600 });
    expect(JSON.parse(sized.body).error.message).not.toContain("defaultMaxTokens");
    expect(upstream.received.length).toBe(before);
  });

  it("streams: usage is asked for upstream, settled, and stripped when the client did not ask", async () => {
    gw = await startGateway(yaml("{ tokens: { rate: 1000, per: 1m } }"));
    const plain = await postStream(
      `${gw.url}/v1/chat/completions`,
      { model: "m", stream: true, max_tokens: 100, messages: [{ role: "user", content: "hi" }] },
      { headers: { authorization: `Bearer ${KEY}` } },
    );
    expect(plain.events.at(-1)?.data).toBe("[DONE]");
    expect(plain.events.some((e) => e.data.includes('"usage"'))).toBe(false);
    const sent = JSON.parse(upstream.received.at(-1)?.body ?? "{}");
    expect(sent.stream_options).toEqual({ include_usage: true });
    // The reservation (~110) settled to 50.
    expect(await tokensLeft(gw, 1000 / 60, 1000)).toBeGreaterThanOrEqual(950);

    const asked = await postStream(
      `${gw.url}/v1/chat/completions`,
      {
        model: "m",
        stream: true,
        max_tokens: 100,
        stream_options: { include_usage: true },
        messages: [{ role: "user", content: "hi" }],
      },
      { headers: { authorization: `Bearer ${KEY}` } },
    );
    const usage = asked.events.find((e) => e.data.includes('"usage"'));
    expect(JSON.parse(usage?.data ?? "{}").usage).toEqual(USAGE);
  });
});

describe("request limits and the token reservation in one store call", () => {
  /** Script calls Redis ran (EVALSHA, and EVAL for a script's first call on a connection). */
  async function scripts(): Promise<number> {
    const stats = await redis.cli("INFO", "commandstats");
    const calls = (name: string) => Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
    return calls("evalsha") + calls("eval");
  }
  /** The script count once it holds still for 300 ms (a settle runs after its answer). */
  async function settledScripts(): Promise<number> {
    let last = await scripts();
    for (;;) {
      await new Promise((r) => setTimeout(r, 300));
      const now = await scripts();
      if (now === last) return now;
      last = now;
    }
  }
  const limitsAndTokens = (tokens: string) =>
    `{ requests: { rate: 1000, per: 1m }, tokens: ${tokens} }
rateLimits: [{ name: per-ip, by: ip, rate: 1000, per: 1m }]`;

  it("two limits: one script per request; with a budget, one more only to settle to the real usage", async () => {
    // Redis counts every script: the backend-slot syncs and the job runner's claims a Redis
    // store runs by default are off here, so that what is counted is the limits' and the
    // tokens' calls alone.
    const alone = (config: string) =>
      `${config.replace("commandTimeout: 10s }", "commandTimeout: 10s, slots: { shared: false } }")}\njobs: { enabled: false }\n`;
    gw = await startGateway(
      alone(
        yaml(
          "{ requests: { rate: 1000, per: 1m } }",
          upstream.url,
          "rateLimits: [{ name: per-ip, by: ip, rate: 1000, per: 1m }]\n",
        ),
      ),
    );
    await chat(gw.url, KEY); // the first call on a connection loads the script
    let before = await scripts();
    for (let i = 0; i < 5; i++) expect((await chat(gw.url, KEY)).status).toBe(200);
    expect((await scripts()) - before).toBe(5);
    await gw.close();

    gw = await startGateway(alone(yaml(limitsAndTokens("{ rate: 100000, per: 1m }"))));
    await chat(gw.url, KEY);
    // The first request's settle runs after its answer (and its script may be loaded first):
    // everything it sent is counted before the five are.
    before = await settledScripts();
    for (let i = 0; i < 5; i++) expect((await chat(gw.url, KEY)).status).toBe(200);
    // Each: the limits and the reservation in one call, then the settle (the answer used 50,
    // more than the prompt + 5 reserved).
    await eventually(async () => (await scripts()) - before === 10, { what: "5 takes and 5 settles" });
  });

  it("a cache hit spends no tokens, counts no token decision, and is answered with the budget spent", async () => {
    // 200 tokens a minute: each request reserves 40 + its prompt and uses 50.
    const cached = `${yaml(limitsAndTokens("{ rate: 200, per: 1m }")).replace("loadSignals: { enabled: false } }", "loadSignals: { enabled: false }, cache: { enabled: true } }")}`;
    gw = await startGateway(cached);
    const body = { temperature: 0, max_tokens: 40 };
    const miss = await chat(gw.url, KEY, body);
    expect(miss.status).toBe(200);
    expect(miss.headers["x-floodgate-cache"]).toBe("MISS");
    expect(miss.headers["x-ratelimit-limit-tokens"]).toBe("200");
    const afterMiss = await tokensLeft(gw, 200 / 60, 200);
    for (let i = 0; i < 3; i++) {
      const hit = await chat(gw.url, KEY, body);
      expect(hit.status).toBe(200);
      expect(hit.headers["x-floodgate-cache"]).toBe("HIT");
      expect(hit.headers["x-ratelimit-limit-requests"]).toBe("1000");
      expect(hit.headers["x-ratelimit-limit-tokens"]).toBeUndefined();
    }
    // Each hit's reservation went back on its way back (kept, three would leave < 20).
    await eventually(async () => (await tokensLeft(gw as RunningGateway, 200 / 60, 200)) >= afterMiss, {
      what: "the hits' reservations given back",
    });
    const metrics = gw.gateway.metrics.registry;
    const decisions = await metrics.getSingleMetricAsString("floodgate_ratelimit_decisions_total");
    expect(decisions).toMatch(/limit="tenant\.tokens",tenant="team-a",decision="allowed"\} 1$/m);
    expect(decisions).toMatch(/limit="per-ip",tenant="team-a",decision="allowed"\} 4$/m);
    const tokens = await metrics.getSingleMetricAsString("floodgate_ratelimit_tokens_total");
    const reserved = Number(/kind="reserved"\} (\d+)/.exec(tokens)?.[1]);
    expect(reserved).toBeLessThan(60); // one reservation counted: the miss's

    // Spend the budget with uncached requests: refused for tokens; the cached one still answers.
    let refused: Outcome | undefined;
    for (let i = 0; i < 10 && !refused; i++) {
      const o = await chat(gw.url, KEY, { max_tokens: 40 });
      if (o.status === 429) refused = o;
    }
    expect(JSON.parse(refused?.body ?? "{}")).toMatchObject({ error: { code: "tokens_limit_exceeded" } });
    const hit = await chat(gw.url, KEY, body);
    expect(hit.status).toBe(200);
    expect(hit.headers["x-floodgate-cache"]).toBe("HIT");
  });
});

describe("concurrency leases", () => {
  it("at most N in flight per tenant; slots free when requests end", async () => {
    // The backend holds every answer until released: the two admitted are in flight for as
    // long as the test needs, however slowly the others arrive.
    const answers = gate();
    const held = await startUpstream(async (_req, res) => {
      await answers.opened;
      jsonResponse(res, 200, { ...completion, usage: USAGE });
    });
    try {
      gw = await startGateway(yaml("{ concurrency: 2 }", held.url));
      const done: Outcome[] = [];
      const pending = Array.from({ length: 5 }, () => chat(gw?.url ?? "", KEY).then((o) => done.push(o)));
      await eventually(() => done.length === 3 && held.received.length === 2, { what: "3 refusals" });
      expect(count(done, 429)).toBe(3);
      expect(JSON.parse(done[0]?.body ?? "{}")).toMatchObject({
        error: { code: "concurrency_limit_exceeded" },
      });
      answers.open();
      await Promise.all(pending);
      expect(count(done, 200)).toBe(2);
      // The slots are given back once the answers end (a refusal meanwhile holds none).
      await eventually(async () => (await chat(gw?.url ?? "", KEY)).status === 200, { what: "a free slot" });
    } finally {
      answers.open();
      await held.close();
    }
  });

  it("a lease held by a replica that died expires, instead of leaking the slot", async () => {
    gw = await startGateway(`${yaml("{ concurrency: 1 }")}tokens: { leaseTtl: 400ms }\n`);
    // A lease held by another replica: long enough that no stall ends it before the check.
    const lease = gw.gateway.store.primary;
    await lease.acquireLease("cc:tenant:team-a", "dead-replica", 1, 60_000);
    expect((await chat(gw.url, KEY)).status).toBe(429);
    // Its last renewal, then the replica dies: never renewed again, never released.
    await lease.acquireLease("cc:tenant:team-a", "dead-replica", 1, 400);
    await new Promise((r) => setTimeout(r, 500));
    expect((await chat(gw.url, KEY)).status).toBe(200);
  });
});

describe("limits by client IP behind proxies", () => {
  const perIp = (trust: string) => `rateLimits: [{ name: per-ip, by: ip, rate: 2, per: 1m, burst: 2 }]
server: { trustProxy: [${trust}] }
`;

  it("a spoofed X-Forwarded-For from an untrusted peer changes nothing", async () => {
    gw = await startGateway(yaml("{}", upstream.url, perIp("")));
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      statuses.push((await chat(gw.url, KEY, {}, { "x-forwarded-for": `203.0.113.${i}` })).status);
    }
    expect(statuses).toEqual([200, 200, 429, 429]);
  });

  it("from a trusted proxy, each forwarded client has its own bucket", async () => {
    gw = await startGateway(yaml("{}", upstream.url, perIp("127.0.0.1")));
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      statuses.push((await chat(gw.url, KEY, {}, { "x-forwarded-for": `203.0.113.${i}` })).status);
    }
    expect(statuses).toEqual([200, 200, 200, 200]);
    expect((await chat(gw.url, KEY, {}, { "x-forwarded-for": "203.0.113.0" })).status).toBe(200);
    expect((await chat(gw.url, KEY, {}, { "x-forwarded-for": "203.0.113.0" })).status).toBe(429);
  });
});

describe("a Redis Cluster of three masters", () => {
  let cluster: TestRedisCluster;
  beforeAll(async () => {
    cluster = await startRedisCluster(3);
  }, 30_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  it("buckets, token budgets and leases for many tenants work, with no CROSSSLOT", async () => {
    const tenants = Array.from({ length: 12 }, (_, i) => `t${i}`);
    // This checks where keys go (a CROSSSLOT is an error reply, at once), not Redis latency: the
    // default commandTimeout (50 ms, a production budget) was missed on a loaded machine by the
    // first requests, sent while the cluster client was still connecting (80-260 ms with both
    // cores busy), and by the odd round trip. The store's own timeouts are in test/integration/store.
    const nodes = cluster.nodes.map((n) => `"${n}"`).join(", ");
    gw = await startGateway(`store: { type: redis, nodes: [${nodes}], commandTimeout: 10s }
auth: { keys: [${tenants.map((t) => `{ key: "sk-${t}-0123456789", tenant: ${t} }`).join(", ")}] }
tenants:
${tenants.map((t) => `  ${t}: { limits: { requests: { rate: 2, per: 1m }, tokens: { rate: 10000, per: 1m }, concurrency: 5 } }`).join("\n")}
pools: { p: { models: [m], backends: [{ url: "${upstream.url}" }], loadSignals: { enabled: false } } }
`);
    for (const t of tenants) {
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await chat(gw.url, `sk-${t}-0123456789`)).status);
      expect(statuses).toEqual([200, 200, 429]);
    }
    const errors = await gw.gateway.metrics.registry.getSingleMetricAsString("floodgate_store_errors_total");
    expect(errors).not.toMatch(/floodgate_store_errors_total\{[^}]*\} [1-9]/);
    const withoutStore = await gw.gateway.metrics.registry.getSingleMetricAsString(
      "floodgate_ratelimit_without_store_total",
    );
    expect(withoutStore).not.toMatch(/\} [1-9]/);
  }, 30_000);
});
