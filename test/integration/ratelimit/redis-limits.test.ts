/**
 * Request limits shared across replicas through a real redis-server started by the test:
 * several gateways enforce one tenant's limit as one gateway would.
 */
import OpenAI from "openai";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { startRedis, type TestRedis } from "../../helpers/redis.js";
import type { TestUpstream } from "../../helpers/upstream.js";
import { chat, count, hammer, startLlmUpstream } from "./fixtures.js";

const KEY = "sk-team-a-0123456789";
const RATE = 20; // per second
const BURST = 20;

let redis: TestRedis;
let upstream: TestUpstream;
let gateways: RunningGateway[] = [];

beforeAll(async () => {
  redis = await startRedis();
  upstream = await startLlmUpstream();
});
afterAll(async () => {
  await upstream.close();
  await redis.stop();
});
afterEach(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  gateways = [];
  await redis.cli("FLUSHALL");
});

/**
 * commandTimeout: short (50ms, as in production) only where Redis dies on purpose; elsewhere a
 * generous one, since a command timed out on a busy machine falls back to local limits, which
 * admit differently and count a store error.
 */
function yaml(
  extra = "",
  replicas = 3,
  commandTimeout = "10s",
  limit = { rate: RATE, burst: BURST },
): string {
  return `store: { type: redis, url: "${redis.url}", commandTimeout: ${commandTimeout}, replicas: ${replicas}, breaker: { failures: 2, resetTimeout: 500ms } }
auth: { keys: [{ key: "${KEY}", tenant: team-a }] }
tenants:
  team-a:
    limits:
      requests: { rate: ${limit.rate}, per: 1s, burst: ${limit.burst} }
pools: { p: { models: [m], backends: [{ url: "${upstream.url}" }], loadSignals: { enabled: false } } }
${extra}`;
}

async function three(
  options: { now?: () => number }[] = [{}, {}, {}],
  commandTimeout = "10s",
  limit = { rate: RATE, burst: BURST },
): Promise<string[]> {
  gateways = await Promise.all(options.map((o) => startGateway(yaml("", 3, commandTimeout, limit), {}, o)));
  return gateways.map((g) => g.url);
}

/**
 * The surge tests' limit: low, so that what 24 clients send is several times it even on a
 * loaded machine (a run there sent 94 requests in 1.5 s), and a stall shorter than burst / rate
 * (2 s) loses no token.
 */
const SURGE = { rate: 5, burst: 10 };

describe("one tenant, three gateways, one Redis", () => {
  it("a surge over three replicas admits burst + rate × elapsed, to 1%", async () => {
    const urls = await three(undefined, undefined, SURGE);
    // At least twice what the limit admits, on a slow machine too: it keeps sending until then.
    const run = await hammer(
      urls,
      KEY,
      24,
      1500,
      undefined,
      (answers, ms) => answers <= 2 * (SURGE.burst + 1 + (SURGE.rate * ms) / 1000) + 24,
    );
    const admitted = count(run.outcomes, 200);
    const limited = count(run.outcomes, 429);
    expect(admitted + limited).toBe(run.outcomes.length); // nothing else: no 5xx
    const upper = SURGE.burst + SURGE.rate * ((run.lastDone - run.firstSent) / 1000) + 1;
    const lower = 0.99 * (SURGE.burst + SURGE.rate * ((run.lastSent - run.firstDone) / 1000));
    // It was a surge: at least twice what the limit admits (more on a quiet machine).
    expect(run.outcomes.length).toBeGreaterThan(2 * upper);
    expect(admitted).toBeLessThanOrEqual(upper);
    expect(admitted).toBeGreaterThanOrEqual(Math.floor(lower));
  });

  it("gateway clocks skewed by minutes do not move the limit (time comes from Redis)", async () => {
    const base = () => performance.now();
    const urls = await three(
      [{ now: () => base() - 600_000 }, { now: base }, { now: () => base() + 900_000 }],
      undefined,
      SURGE,
    );
    const run = await hammer(urls, KEY, 24, 1000);
    const admitted = count(run.outcomes, 200);
    expect(admitted).toBeLessThanOrEqual(
      SURGE.burst + SURGE.rate * ((run.lastDone - run.firstSent) / 1000) + 1,
    );
    expect(admitted).toBeGreaterThanOrEqual(
      Math.floor(0.99 * (SURGE.burst + SURGE.rate * ((run.lastSent - run.firstDone) / 1000))),
    );
  });

  it("SCRIPT FLUSH mid-run: no request fails", async () => {
    const urls = await three();
    await redis.cli("CONFIG", "RESETSTAT");
    // Flushed once the run is well under way (a count, not a time); the second run makes sure
    // requests follow the flush however late it landed.
    let results = 0;
    let flush: Promise<string> | undefined;
    // At least 60 answers however slow the machine: the flush lands at the 30th, mid-run.
    const during = await hammer(
      urls,
      KEY,
      12,
      1200,
      () => {
        if (++results === 30) flush = redis.cli("SCRIPT", "FLUSH");
      },
      (answers) => answers < 60,
    );
    expect(flush).toBeDefined();
    await flush;
    const after = await hammer(urls, KEY, 12, 300);
    const outcomes = [...during.outcomes, ...after.outcomes];
    expect(outcomes.every((o) => o.status === 200 || o.status === 429)).toBe(true);
    // The flush was felt: calls met NOSCRIPT, reloaded the script, and none failed.
    expect(await redis.cli("INFO", "errorstats")).toMatch(/errorstat_NOSCRIPT:count=[1-9]/);
    for (const g of gateways) {
      expect(
        await g.gateway.metrics.registry.getSingleMetricAsString("floodgate_store_errors_total"),
      ).not.toMatch(/floodgate_store_errors_total\{[^}]*\} [1-9]/);
    }
  });

  it("concurrent requests on one replica: the limit holds to the request, in no more take calls than requests", async () => {
    // No jobs: their runner's polls would be script calls too.
    const gateway = await startGateway(yaml("jobs: { enabled: false }", 1, "10s", { rate: 1, burst: 100 }));
    gateways = [gateway];
    // Sixty connections opened and kept (the agent's), so the next sixty arrive together.
    const warmed = performance.now();
    const warm = await Promise.all(Array.from({ length: 60 }, () => chat(gateway.url, KEY)));
    expect(count(warm, 200)).toBe(60);
    const takes = async () => {
      const text = await gateway.gateway.metrics.registry.getSingleMetricAsString(
        "floodgate_store_calls_total",
      );
      return Number(/floodgate_store_calls_total\{operation="take"\} (\d+)/.exec(text)?.[1] ?? 0);
    };
    const scripts = async () => {
      const stats = await redis.cli("INFO", "commandstats");
      const calls = (name: string) =>
        Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
      return calls("evalsha") + calls("eval");
    };
    const [takesBefore, scriptsBefore] = [await takes(), await scripts()];
    const outcomes = await Promise.all(Array.from({ length: 60 }, () => chat(gateway.url, KEY)));
    const admitted = count(outcomes, 200);
    // 40 tokens left after the first sixty, plus what 1/s refilled since.
    expect(admitted).toBeGreaterThanOrEqual(40);
    expect(admitted).toBeLessThanOrEqual(40 + Math.ceil((performance.now() - warmed) / 1000));
    expect(count(outcomes, 429)).toBe(60 - admitted);
    const takeCalls = (await takes()) - takesBefore;
    // Each take call floodgate counts is one script call at Redis; requests of one turn share one.
    expect(takeCalls).toBe((await scripts()) - scriptsBefore);
    expect(takeCalls).toBeGreaterThanOrEqual(1);
    expect(takeCalls).toBeLessThanOrEqual(60);
  });

  it("the headers: IETF RateLimit-*, OpenAI x-ratelimit-*-requests, and a 429 with retry-after-ms", async () => {
    const [url] = await three();
    const ok = await chat(url as string, KEY);
    expect(ok.status).toBe(200);
    expect(ok.headers["ratelimit-limit"]).toBe(String(BURST));
    expect(Number(ok.headers["ratelimit-remaining"])).toBe(BURST - 1);
    expect(ok.headers["x-ratelimit-limit-requests"]).toBe(String(BURST));
    expect(ok.headers["x-ratelimit-remaining-requests"]).toBe(String(BURST - 1));
    expect(ok.headers["x-ratelimit-reset-requests"]).toMatch(/^\d+(\.\d+)?(ms|s)$/);
    // Drain the bucket at once: one by one, the 20/s refill would keep up.
    const drained = await Promise.all(Array.from({ length: BURST + 10 }, () => chat(url as string, KEY)));
    const limited = drained.find((o) => o.status === 429) ?? (await chat(url as string, KEY));
    expect(limited.status).toBe(429);
    expect(JSON.parse(limited.body)).toMatchObject({
      error: { type: "rate_limit_exceeded", code: "requests_limit_exceeded" },
    });
    expect(Number(limited.headers["retry-after-ms"])).toBeGreaterThan(0);
    expect(Number(limited.headers["retry-after-ms"])).toBeLessThanOrEqual(1000 / RATE + 5);
    expect(limited.headers["x-should-retry"]).toBe("true");
  });

  it("the official openai client hitting our 429 backs off by retry-after-ms and succeeds", async () => {
    gateways = [
      await startGateway(
        yaml().replace(
          `requests: { rate: ${RATE}, per: 1s, burst: ${BURST} }`,
          "requests: { rate: 1, per: 2s, burst: 1 }",
        ),
      ),
    ];
    // Every attempt the client makes, seen from its side of the wire.
    const attempts: { sentAt: number; doneAt: number; status: number; retryAfterMs: number }[] = [];
    const recording: typeof fetch = async (input, init) => {
      const sentAt = performance.now();
      const res = await fetch(input, init);
      const retryAfterMs = Number(res.headers.get("retry-after-ms"));
      attempts.push({ sentAt, doneAt: performance.now(), status: res.status, retryAfterMs });
      return res;
    };
    const sdk = new OpenAI({
      baseURL: `${gateways[0]?.url}/v1`,
      apiKey: KEY,
      maxRetries: 2,
      fetch: recording,
    });
    await sdk.chat.completions.create({ model: "m", messages: [{ role: "user", content: "a" }] });
    const res = await sdk.chat.completions.create({ model: "m", messages: [{ role: "user", content: "b" }] });
    expect(res.choices[0]?.message.content).toBe("ok");
    const statuses = attempts.map((a) => a.status);
    expect(statuses[0]).toBe(200);
    expect(statuses.at(-1)).toBe(200);
    expect(statuses.slice(1, -1)).toContain(429);
    for (const status of statuses.slice(1, -1)) expect(status).toBe(429);
    // Our retry-after-ms (about 2 s, one token in 2 s), not its own backoff of 0.5 s at most.
    expect(attempts[1]?.retryAfterMs).toBeGreaterThan(1000);
    for (let i = 1; i < attempts.length - 1; i++) {
      const refused = attempts[i];
      const retry = attempts[i + 1];
      if (refused === undefined || retry === undefined) throw new Error("no attempt");
      expect(retry.sentAt - refused.doneAt).toBeGreaterThanOrEqual(refused.retryAfterMs - 5);
    }
  });
});

describe("when Redis fails", () => {
  it("killed mid-load and restarted: no hang, local limits ≤ 1.1× while down, Redis again", async () => {
    const urls = await three(undefined, "50ms");
    await hammer(urls, KEY, 6, 300); // warm: Redis-backed
    await redis.kill();
    const downStart = performance.now();
    const down = await hammer(urls, KEY, 24, 1500);
    const downSeconds = (down.lastDone - downStart) / 1000;
    // No hang: a request waits at most about the 50 ms command timeout; a hang (a command queued
    // until Redis returns, or until the 1 s socket timeout) would hold most requests that long.
    // The median, so that a stall of the machine now and then does not count as a hang.
    const latencies = down.outcomes.map((o) => o.ms).sort((a, b) => a - b);
    expect(latencies[Math.floor(latencies.length / 2)]).toBeLessThan(1000);
    const others = down.outcomes.filter((o) => o.status !== 200 && o.status !== 429);
    expect(others.map((o) => `${o.status} ${JSON.stringify(o).slice(0, 300)}`)).toEqual([]);
    const admittedDown = count(down.outcomes, 200);
    expect(admittedDown).toBeLessThanOrEqual(1.1 * (BURST + RATE * downSeconds));
    expect(admittedDown).toBeGreaterThan(0.5 * (BURST + RATE * downSeconds));

    await redis.restart();
    // Reconnects back off by at most 2 s, the breaker half-opens after 500 ms: 10 s allows for
    // a loaded machine.
    await eventually(
      async () => {
        await Promise.all(urls.map((u) => chat(u, KEY)));
        return gateways.every((g) => !g.gateway.store.degraded) && (await redis.cli("DBSIZE")).trim() !== "0";
      },
      { timeout: 10_000, interval: 100, what: "every replica back on Redis" },
    );
  }, 30_000);

  it("onStoreError: open admits, closed refuses with a 503 that says to retry", async () => {
    gateways = [
      await startGateway(
        yaml("", 1, "50ms").replace(
          "requests: { rate: 20, per: 1s, burst: 20 }",
          "requests: { rate: 1, per: 1m, burst: 1 }\n      onStoreError: open",
        ),
      ),
    ];
    await redis.kill();
    for (let i = 0; i < 5; i++) expect((await chat(gateways[0]?.url ?? "", KEY)).status).toBe(200);
    await gateways[0]?.close();
    gateways = [
      await startGateway(
        yaml("", 1, "50ms").replace(
          "requests: { rate: 20, per: 1s, burst: 20 }",
          "requests: { rate: 100, per: 1s }\n      onStoreError: closed",
        ),
      ),
    ];
    const refused = await chat(gateways[0]?.url ?? "", KEY);
    expect(refused.status).toBe(503);
    expect(JSON.parse(refused.body)).toMatchObject({ error: { code: "rate_limiter_unavailable" } });
    expect(refused.headers["x-should-retry"]).toBe("true");
    await redis.restart();
  });
});

describe("at start-up", () => {
  it("a replica listens only once Redis answers, so its first requests are decided there", async () => {
    // A Redis that accepts the connection but does not answer yet (a slow start, a busy host).
    redis.pause();
    setTimeout(() => redis.resume(), 400);
    const started = performance.now();
    const gateway = await startGateway(
      yaml("", 1).replace("commandTimeout: 10s", "commandTimeout: 10s, connectTimeout: 5s"),
    );
    gateways = [gateway];
    expect(performance.now() - started).toBeGreaterThanOrEqual(350);
    expect((await chat(gateway.url, KEY)).status).toBe(200);
    const withoutStore = await gateway.gateway.metrics.registry.getSingleMetricAsString(
      "floodgate_ratelimit_without_store_total",
    );
    expect(withoutStore).not.toMatch(/\} [1-9]/);
    expect((await redis.cli("DBSIZE")).trim()).not.toBe("0");
  });

  it("a Redis that is down delays listening by connectTimeout at most, then onStoreError decides", async () => {
    await redis.kill();
    try {
      const started = performance.now();
      const gateway = await startGateway(
        yaml("", 1, "50ms").replace("commandTimeout: 50ms", "commandTimeout: 50ms, connectTimeout: 300ms"),
      );
      gateways = [gateway];
      const waited = performance.now() - started;
      expect(waited).toBeGreaterThanOrEqual(250);
      expect(waited).toBeLessThan(3000);
      expect((await chat(gateway.url, KEY)).status).toBe(200); // onStoreError: local
    } finally {
      await redis.restart();
    }
  });
});
