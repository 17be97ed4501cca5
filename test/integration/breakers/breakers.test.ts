/** Circuit breakers, fallback pools and honest 503s, with simulated backends. */
import OpenAI from "openai";
import { Agent, request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { postStream } from "../../helpers/sse.js";

let sims: SimServer[] = [];
let gw: RunningGateway | undefined;
const client = new Agent({ connections: 32 });
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});

const fast = { prefillMsPerToken: 0, decodeStepMs: 2, decodeMsPerSeq: 0, slots: 64, maxQueue: 256 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function chat(url: string, model = "m", headers: Record<string, string> = {}) {
  const res = await request(`${url}/v1/chat/completions`, {
    method: "POST",
    dispatcher: client,
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ model, max_tokens: 2, messages: [{ role: "user", content: "hi" }] }),
  });
  return {
    status: res.statusCode,
    headers: res.headers,
    body: (await res.body.json()) as Record<string, unknown>,
  };
}

async function metricValue(g: RunningGateway, name: string, match: Record<string, string>): Promise<number> {
  const metric = await g.gateway.metrics.registry.getSingleMetric(name)?.get();
  let sum = 0;
  for (const v of metric?.values ?? []) {
    if (Object.entries(match).every(([k, want]) => v.labels[k] === want)) sum += v.value;
  }
  return sum;
}

const until = (predicate: () => boolean | Promise<boolean>) => eventually(predicate, { interval: 5 });

/** The client's attempts as it made them, through a fetch that records each one. */
function recordingFetch() {
  const attempts: { sentAt: number; doneAt: number; status: number; retryAfterMs: number }[] = [];
  const recording: typeof fetch = async (input, init) => {
    const sentAt = performance.now();
    const res = await fetch(input, init);
    const retryAfterMs = Number(res.headers.get("retry-after-ms"));
    attempts.push({ sentAt, doneAt: performance.now(), status: res.status, retryAfterMs });
    return res;
  };
  return { attempts, fetch: recording };
}

describe("circuit breaker per backend", () => {
  it("opens after the volume threshold, lets exactly one probe through per reset, closes on recovery", async () => {
    sims = await Promise.all([0, 1, 2].map(() => startSim({ models: ["m"], ...fast })));
    const bad = sims[0] as SimServer;
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends:
${sims.map((s, i) => `      - { url: "${s.url}", name: s${i}, engine: vllm }`).join("\n")}
    circuitBreaker: { volumeThreshold: 10, errorThresholdPercentage: 50, resetTimeout: 600ms, rollingWindow: 10s }
    outlierDetection: { consecutive5xx: 1000, consecutiveGatewayFailure: 1000 }
    loadSignals: { enabled: false }
    slowStart: { window: 1s }
    balancer: round_robin
`);
    const g = gw;
    const state = async () =>
      (await g.gateway.metrics.registry.getSingleMetric("floodgate_breaker_state")?.get())?.values.find(
        (v) => v.labels.backend === "s0" && v.value === 1,
      )?.labels.state;
    await bad.setFaults({ errorRate: 1, errorStatus: 503 });
    const failures: number[] = [];
    let running = true;
    const workers = Array.from({ length: 3 }, async () => {
      while (running) {
        const r = await chat(g.url);
        if (r.status !== 200) failures.push(r.status);
        await sleep(3);
      }
    });
    // Open, and the requests sent to s0 before it opened are over: from now on only probes reach it.
    const s0 = g.gateway.upstreams.pools.get("p")?.backends.find((b) => b.name === "s0");
    await until(async () => (await state()) === "open" && s0?.inFlight === 0);
    const atOpen = bad.stats().received;
    expect(atOpen).toBeGreaterThanOrEqual(10); // not before the volume threshold
    const opens = () =>
      metricValue(g, "floodgate_breaker_transitions_total", { backend: "s0", state: "open" });
    // Past resetTimeout: half-open, one probe, which fails and re-opens it. Counted per opening,
    // not per time slept: each opening lets exactly one probe through once its reset is over,
    // so the probes are the openings so far less one, or the openings while a probe is out.
    await until(async () => (await opens()) >= 2);
    const opened = await opens();
    expect(bad.stats().received - atOpen).toBeGreaterThanOrEqual(opened - 1);
    expect(bad.stats().received - atOpen).toBeLessThanOrEqual(opened);
    await bad.clearFaults();
    await until(async () => (await state()) === "closed"); // the next probe succeeds: closed
    // One probe per opening, the last one passed; then the traffic comes back.
    const probes = await opens();
    await until(() => bad.stats().received > atOpen + probes + 10); // ramped back in
    running = false;
    await Promise.all(workers);
    expect(failures).toEqual([]); // every request that failed on s0 was served by the others
    expect(await opens()).toBe(probes); // and it did not open again
    expect(
      await metricValue(g, "floodgate_breaker_transitions_total", { backend: "s0", state: "closed" }),
    ).toBe(1);
  });

  it("a generation streaming far longer than the first-byte timeout trips nothing", async () => {
    sims = [await startSim({ models: ["m"], prefillMsPerToken: 0, decodeMsPerSeq: 0, decodeStepMs: 25 })];
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${sims[0]?.url}", name: s0, engine: vllm }]
    timeouts: { firstByte: 500ms, idle: 1s }
    circuitBreaker: { volumeThreshold: 1, errorThresholdPercentage: 1, resetTimeout: 30s }
    loadSignals: { enabled: false }
`);
    const started = performance.now();
    const { events } = await postStream(`${gw.url}/v1/chat/completions`, {
      model: "m",
      stream: true,
      max_tokens: 100,
      messages: [{ role: "user", content: "tell me a long story" }],
    });
    expect(performance.now() - started).toBeGreaterThan(2000);
    expect(events.at(-1)?.data).toBe("[DONE]");
    expect(events.some((e) => e.event === "error")).toBe(false);
    expect(await metricValue(gw, "floodgate_breaker_transitions_total", {})).toBe(0);
    expect((await chat(gw.url)).status).toBe(200);
  });
});

describe("fallback pools and honest 503s", () => {
  const keyA = "sk-team-a-0123456789";
  const keyB = "sk-team-b-0123456789";

  async function setupFallback(resetTimeout: string) {
    const big = await startSim({ models: ["llama-70b"], ...fast });
    const small = await startSim({ models: ["llama-8b"], ...fast });
    sims = [big, small];
    gw = await startGateway(
      `auth: { keys: [{ key: "${keyA}", tenant: team-a }, { key: "${keyB}", tenant: team-b }] }
tenants: { team-a: {}, team-b: { fallback: false } }
pools:
  big:
    models: [llama-70b]
    backends: [{ url: "${big.url}", name: big0, engine: vllm }]
    circuitBreaker: { volumeThreshold: 3, errorThresholdPercentage: 50, resetTimeout: ${resetTimeout} }
    outlierDetection: { enabled: false }
    retry: { attempts: 0 }
    loadSignals: { enabled: false }
    fallback: [{ pool: small, model: llama-8b }]
  small:
    models: [llama-8b]
    backends: [{ url: "${small.url}", name: small0, engine: vllm }]
    loadSignals: { enabled: false }
`,
    );
    return { big, small, g: gw };
  }

  it("the primary pool unavailable: served by the fallback pool, header set, model rewritten", async () => {
    const { big, small, g } = await setupFallback("5s");
    await big.setFaults({ errorRate: 1, errorStatus: 503 });
    for (let i = 0; i < 6; i++) {
      const r = await chat(g.url, "llama-70b", { authorization: `Bearer ${keyA}` });
      expect(r.status).toBe(200);
      expect(r.headers["x-floodgate-fallback"]).toBe("small");
      expect(r.body.model).toBe("llama-8b");
    }
    expect(small.stats().received).toBe(6);
    expect(big.stats().received).toBe(3); // then its breaker opened: no more attempts
    expect(await metricValue(g, "floodgate_fallbacks_total", { from: "big", to: "small" })).toBe(6);
    // A healthy primary serves directly, without the header.
    const direct = await chat(g.url, "llama-8b", { authorization: `Bearer ${keyA}` });
    expect(direct.headers["x-floodgate-fallback"]).toBeUndefined();
  });

  it("fallback forbidden: a fast 503 whose retry-after is the time left of the breaker's reset", async () => {
    const { big, small, g } = await setupFallback("6s");
    await big.setFaults({ errorRate: 1, errorStatus: 503 });
    let lastSent = 0;
    for (let i = 0; i < 3; i++) {
      lastSent = performance.now();
      expect((await chat(g.url, "llama-70b", { authorization: `Bearer ${keyB}` })).status).toBe(503);
    }
    // The breaker opened on the third failure: after lastSent, before openedAt.
    const openedAt = performance.now();
    await sleep(1000);
    const started = performance.now();
    const r = await chat(g.url, "llama-70b", { authorization: `Bearer ${keyB}` });
    const answeredAt = performance.now();
    // Fast, no hang (a hang would wait for the 6 s reset or a timeout); slack for a busy machine.
    expect(answeredAt - started).toBeLessThan(2000);
    expect(r.status).toBe(503);
    expect(r.body).toMatchObject({ error: { code: "no_backend_available", type: "server_error" } });
    expect(r.headers["x-should-retry"]).toBe("true");
    // The reset time left when the answer was made, somewhere between those readings.
    const retryAfterMs = Number(r.headers["retry-after-ms"]);
    expect(retryAfterMs).toBeGreaterThanOrEqual(6000 - (answeredAt - lastSent) - 1);
    expect(retryAfterMs).toBeLessThanOrEqual(6000 - (started - openedAt) + 1);
    expect(Number(r.headers["retry-after"])).toBe(Math.ceil(Number(r.headers["retry-after-ms"]) / 1000));
    expect(small.stats().received).toBe(0);
  });

  it("a pass-through GET falls back too; a tenant that forbids fallback does not", async () => {
    const big = await startSim({ models: ["llama-70b"], ...fast });
    const small = await startSim({ models: ["llama-8b"], ...fast });
    sims = [big, small];
    gw =
      await startGateway(`auth: { keys: [{ key: "${keyA}", tenant: team-a }, { key: "${keyB}", tenant: team-b }] }
tenants: { team-a: {}, team-b: { fallback: false } }
routes: [{ prefix: /v1/models-extra, pool: big }, { prefix: /health, pool: big }]
pools:
  big: { models: [llama-70b], backends: [{ url: "${big.url}", engine: vllm }], fallback: [small], retry: { attempts: 0 }, loadSignals: { enabled: false } }
  small: { models: [llama-8b], backends: [{ url: "${small.url}", engine: vllm }], loadSignals: { enabled: false } }
`);
    await big.close(); // refuses connections from now on
    const a = await request(`${gw.url}/health`, { headers: { authorization: `Bearer ${keyA}` } });
    expect(a.statusCode).toBe(200);
    expect(a.headers["x-floodgate-fallback"]).toBe("small");
    await a.body.dump();
    const b = await request(`${gw.url}/health`, { headers: { authorization: `Bearer ${keyB}` } });
    expect(b.statusCode).toBe(503);
    await b.body.dump();
  });

  it("the openai client, with the only pool down and then back, ends in success paced by retry-after-ms", async () => {
    const only = await startSim({ models: ["m"], ...fast });
    sims = [only];
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${only.url}", engine: vllm }]
    circuitBreaker: { volumeThreshold: 3, resetTimeout: 1500ms }
    outlierDetection: { enabled: false }
    retry: { attempts: 0 }
    loadSignals: { enabled: false }
`);
    await only.setFaults({ errorRate: 1, errorStatus: 503 });
    let lastSent = 0;
    for (let i = 0; i < 3; i++) {
      lastSent = performance.now();
      await chat(gw.url);
    }
    await only.clearFaults(); // back, but the breaker does not know yet
    const { attempts, fetch } = recordingFetch();
    const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "unused", maxRetries: 3, fetch });
    const res = await sdk.chat.completions.create({
      model: "m",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 2,
    });
    expect(res.choices[0]?.finish_reason).toBe("length");
    // Refused while open, then let through: each retry waited what the 503 said.
    expect(attempts.map((a) => a.status).slice(0, -1)).toContain(503);
    expect(attempts.at(-1)?.status).toBe(200);
    for (let i = 0; i + 1 < attempts.length; i++) {
      const refused = attempts[i];
      const retry = attempts[i + 1];
      if (refused === undefined || retry === undefined) throw new Error("no attempt");
      expect(refused.status).toBe(503);
      expect(retry.sentAt - refused.doneAt).toBeGreaterThanOrEqual(refused.retryAfterMs - 5);
    }
    // The success came once the breaker's probe time (1.5 s after it opened) had come.
    expect(attempts.at(-1)?.sentAt).toBeGreaterThanOrEqual(lastSent + 1500 - 5);
  });
});
