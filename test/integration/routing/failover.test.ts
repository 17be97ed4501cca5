/**
 * Routing under faults, three simulated backends under steady load: a backend killed mid-run,
 * a fleet answering 503, a backend failing before its first SSE event.
 */
import { Agent, request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { postStream } from "../../helpers/sse.js";

let sims: SimServer[] = [];
let gw: RunningGateway | undefined;
const client = new Agent({ connections: 64 });
afterEach(async () => {
  await gw?.close();
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});

const fast = {
  models: ["m"],
  prefillMsPerToken: 0,
  decodeStepMs: 2,
  decodeMsPerSeq: 0,
  slots: 64,
  maxQueue: 256,
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A streamed chat request for `maxTokens` tokens. */
const askStream = (g: RunningGateway, maxTokens: number) =>
  postStream(`${g.url}/v1/chat/completions`, {
    model: "m",
    stream: true,
    max_tokens: maxTokens,
    messages: [{ role: "user", content: "hi" }],
  });

async function setup(poolExtra: string, n = 3, simOptions: Parameters<typeof startSim>[0] = {}) {
  sims = await Promise.all(Array.from({ length: n }, () => startSim({ ...fast, ...simOptions })));
  const backends = sims.map((s, i) => `      - { url: "${s.url}", name: sim${i}, engine: vllm }`).join("\n");
  gw = await startGateway(`pools:
  p:
    models: [m]
    backends:
${backends}
${poolExtra}`);
  return gw;
}

interface LoadResult {
  ok: number;
  failed: { status: number; body: string }[];
}

/** `workers` loops sending non-streamed requests until `stop()` resolves. */
function steadyLoad(
  url: string,
  workers: number,
): { stop: () => Promise<LoadResult>; answered: () => number } {
  const result: LoadResult = { ok: 0, failed: [] };
  let running = true;
  const loops = Array.from({ length: workers }, async () => {
    while (running) {
      const res = await request(`${url}/v1/chat/completions`, {
        method: "POST",
        dispatcher: client,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "m", max_tokens: 3, messages: [{ role: "user", content: "hi" }] }),
      });
      const text = await res.body.text();
      if (res.statusCode === 200) result.ok++;
      else result.failed.push({ status: res.statusCode, body: text });
      await sleep(5);
    }
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
      return result;
    },
    answered: () => result.ok + result.failed.length,
  };
}

async function counterValue(g: RunningGateway, name: string, match: Record<string, string>): Promise<number> {
  const metric = await g.gateway.metrics.registry.getSingleMetric(name)?.get();
  let sum = 0;
  for (const v of metric?.values ?? []) {
    if (Object.entries(match).every(([k, want]) => v.labels[k] === want)) sum += v.value;
  }
  return sum;
}

describe("failover", () => {
  it("a backend killed mid-run: zero client errors, taken out at once, re-admitted with a ramp", async () => {
    const g =
      await setup(`    healthCheck: { interval: 100ms, timeout: 200ms, unhealthyThreshold: 2, healthyThreshold: 2 }
    outlierDetection: { baseEjectionTime: 1s }
    slowStart: { window: 3s, minWeightPercent: 5 }
    loadSignals: { enabled: false }
    balancer: round_robin
`);
    const victim = sims[1] as SimServer;
    const backend = g.gateway.upstreams.pools.get("p")?.backends.find((b) => b.name === "sim1");
    const attempts = (outcome?: string) =>
      counterValue(g, "floodgate_upstream_attempts_total", {
        backend: "sim1",
        ...(outcome ? { outcome } : {}),
      });
    const load = steadyLoad(g.url, 12);
    await waitFor(async () => (await attempts()) > 3);

    // Kill: stop listening, then reset what is still connected.
    await victim.setFaults({ refuseConnections: true });
    await sleep(100);
    await victim.setFaults({ resetConnections: true });
    const failures = async () => (await attempts("connect_failure")) + (await attempts("gateway_failure"));
    await waitFor(async () => (await failures()) > 0);
    // Taken out at once, counted in requests rather than ms: the first failure ejects it, and
    // its health checks keep it out, so only requests already on their way to it fail there
    // (at most one per worker, with its retry on another backend).
    await waitFor(async () => backend?.healthy === false);
    const out = await attempts();
    expect(await failures()).toBeLessThanOrEqual(2 * 12);
    await sleep(800);
    const later = await attempts();
    expect(later - out).toBe(0); // no new requests while it is down

    // Recover: health checks readmit it, and it ramps up through slow start (3 s). The shares
    // are compared within the test: the first 300 ms (a weight of about 15%) against the
    // traffic once the ramp is over.
    const selections = () => counterValue(g, "floodgate_backend_selections_total", { backend: "sim1" });
    const allSelections = () => counterValue(g, "floodgate_backend_selections_total", {});
    await victim.clearFaults();
    await waitFor(async () => (await selections()) > later);
    const readmitted = performance.now();
    const [s0, t0] = [await selections(), await allSelections()];
    await sleep(300);
    const [s1, t1] = [await selections(), await allSelections()];
    await sleep(Math.max(0, readmitted + 3000 - performance.now()));
    const [s2, t2] = [await selections(), await allSelections()];
    await sleep(500);
    const [s3, t3] = [await selections(), await allSelections()];
    const rampShare = (s1 - s0) / (t1 - t0);
    const fullShare = (s3 - s2) / (t3 - t2);
    expect(rampShare).toBeLessThan(fullShare * 0.6);
    expect(fullShare).toBeGreaterThan(0.25);

    const result = await load.stop();
    expect(result.failed, JSON.stringify(result.failed)).toEqual([]);
    expect(result.ok).toBeGreaterThan(200);
  }, 30_000);

  it("all three answering 503 for a while: upstream attempts stay at most 1.2× client requests", async () => {
    const g = await setup("    loadSignals: { enabled: false }\n");
    for (const s of sims) await s.setFaults({ errorRate: 1, errorStatus: 503 });
    const load = steadyLoad(g.url, 30);
    // Enough requests for the ratio to mean something, however fast the machine is.
    await eventually(() => load.answered() > 150, { timeout: 30_000 });
    const result = await load.stop();
    const clientRequests = result.ok + result.failed.length;
    const attempts = sims.reduce((n, s) => n + s.stats().received, 0);
    expect(result.failed.every((f) => f.status === 503)).toBe(true);
    expect(clientRequests).toBeGreaterThan(100);
    expect(attempts / clientRequests).toBeLessThanOrEqual(1.2);
    expect(await counterValue(g, "floodgate_retry_budget_exhausted_total", {})).toBeGreaterThan(0);
  });

  it("a backend failing before its first SSE event: the stream comes from another backend, intact", async () => {
    const g = await setup("    balancer: round_robin\n    loadSignals: { enabled: false }\n", 2, {
      decodeStepMs: 5,
    });
    await (sims[0] as SimServer).setFaults({ dropMidStreamAfterTokens: 0 });
    for (let i = 0; i < 6; i++) {
      const { status, events } = await askStream(g, 5);
      expect(status).toBe(200);
      expect(events.some((e) => e.event === "error")).toBe(false);
      expect(events.at(-1)?.data).toBe("[DONE]");
      const text = events
        .filter((e) => e.data.startsWith("{"))
        .map((e) => JSON.parse(e.data).choices[0]?.delta?.content ?? "")
        .join("");
      expect(text.trim().length).toBeGreaterThan(0);
    }
    expect((sims[0] as SimServer).stats().droppedMidStream).toBeGreaterThan(0);
    expect(
      await counterValue(g, "floodgate_upstream_retries_total", { reason: "gateway_failure" }),
    ).toBeGreaterThan(0);
    // The retry ran on a live exchange: every slot and budget count came back, and the failure
    // was recorded once per try (it once settled the exchange before the retry, leaking both).
    const pool = g.gateway.upstreams.pools.get("p");
    expect(pool?.backends.map((b) => b.inFlight)).toEqual([0, 0]);
    expect(pool?.budget.active).toBe(0);
    expect(pool?.budget.retries).toBe(0);
  });

  it("a failure before the first SSE event still meets the total timeout on the retry", async () => {
    const g = await setup(
      "    balancer: round_robin\n    loadSignals: { enabled: false }\n    timeouts: { total: 700ms }\n",
      2,
      { decodeStepMs: 200 },
    );
    await (sims[0] as SimServer).setFaults({ dropMidStreamAfterTokens: 0 });
    for (let i = 0; i < 2; i++) {
      const { status, events } = await askStream(g, 20);
      expect(status).toBe(200);
      // 20 tokens at 200 ms a step would take 4 s: the total timeout ends it with an error event.
      const error = events.find((e) => e.event === "error");
      expect(JSON.parse(error?.data ?? "{}")).toMatchObject({ error: { code: "upstream_total_timeout" } });
      expect(events.filter((e) => e.data.includes('"content":"'))).not.toHaveLength(20);
    }
  });

  it("requests in flight on a backend that dies are retried even with no budget left; 503s are not", async () => {
    const g = await setup(
      "    balancer: round_robin\n    loadSignals: { enabled: false }\n    retry: { budgetPercent: 0, minRetryConcurrency: 0 }\n",
      3,
      { decodeStepMs: 60 },
    );
    const send = () =>
      request(`${g.url}/v1/chat/completions`, {
        method: "POST",
        dispatcher: client,
        headers: { "content-type": "application/json" },
        // 10 steps of 60 ms: still running when sim1 is seen busy, on a slow machine too.
        body: JSON.stringify({ model: "m", max_tokens: 10, messages: [{ role: "user", content: "hi" }] }),
      }).then(async (r) => ({ status: r.statusCode, body: await r.body.text() }));
    const inFlight = Array.from({ length: 12 }, send);
    await waitFor(async () => (sims[1] as SimServer).stats().running >= 3);
    await (sims[1] as SimServer).close(); // dies with its requests in flight
    const results = await Promise.all(inFlight);
    expect(results.filter((r) => r.status !== 200)).toEqual([]);
    expect(await counterValue(g, "floodgate_retry_budget_exhausted_total", {})).toBe(0);

    await (sims[0] as SimServer).setFaults({ errorRate: 1, errorStatus: 503 });
    await (sims[2] as SimServer).setFaults({ errorRate: 1, errorStatus: 503 });
    const busy = await send();
    expect(busy.status).toBe(503);
    expect(await counterValue(g, "floodgate_retry_budget_exhausted_total", {})).toBe(1);
  });

  it("a stream that already sent events is not retried: it ends with an error event", async () => {
    const g = await setup("    loadSignals: { enabled: false }\n", 1, { decodeStepMs: 5 });
    await (sims[0] as SimServer).setFaults({ dropMidStreamAfterTokens: 2 });
    const { events } = await postStream(`${g.url}/v1/chat/completions`, {
      model: "m",
      stream: true,
      max_tokens: 20,
      messages: [{ role: "user", content: "hi" }],
    });
    expect(events.at(-1)?.event).toBe("error");
    expect((sims[0] as SimServer).stats().received).toBe(1);
  });
});

const waitFor = (predicate: () => boolean | Promise<boolean>) => eventually(predicate);
