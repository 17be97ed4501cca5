/** Active health checks and DNS discovery, through the gateway, with real servers. */
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { startDnsServer, type TestDnsServer } from "../../helpers/dns-server.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";

let sims: SimServer[] = [];
let gw: RunningGateway | undefined;
let dns: TestDnsServer | undefined;
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
  await dns?.close();
  dns = undefined;
});

const fast = { prefillMsPerToken: 0, decodeStepMs: 1, decodeMsPerSeq: 0 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function chat(url: string): Promise<number> {
  const res = await request(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", max_tokens: 1, messages: [{ role: "user", content: "hi" }] }),
  });
  await res.body.dump();
  return res.statusCode;
}

const until = (predicate: () => boolean | Promise<boolean>) => eventually(predicate, { interval: 20 });

const received = (s: SimServer) => s.stats().received;

/**
 * Sims on 127.0.0.2 and 127.0.0.3 on one port (A records carry none): a listens on a port the
 * OS picks, b on the same; if something holds it on 127.0.0.3, both move to another.
 */
async function simPair(): Promise<[SimServer, SimServer]> {
  for (let attempt = 1; ; attempt++) {
    const a = await startSim({ models: ["m"], ...fast, host: "127.0.0.2", port: 0 });
    try {
      return [a, await startSim({ models: ["m"], ...fast, host: "127.0.0.3", port: a.port })];
    } catch (error) {
      await a.close();
      if (attempt === 5 || (error as NodeJS.ErrnoException).code !== "EADDRINUSE") throw error;
    }
  }
}

describe("active health checks", () => {
  it("a backend still loading its model gets no traffic until it is ready, then ramps in", async () => {
    // Loading for 8 s: the gateway's start and 20 requests fit in it on a heavily loaded machine
    // too (3 s did not, with two test suites and a benchmark on two cores).
    const ready = await startSim({ models: ["m"], ...fast });
    const loading = await startSim({ models: ["m"], ...fast, loadTimeMs: 8000 });
    sims = [ready, loading];
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${ready.url}", engine: vllm }, { url: "${loading.url}", engine: vllm }]
    healthCheck: { interval: 100ms, timeout: 200ms, healthyThreshold: 2, unhealthyThreshold: 2 }
    loadSignals: { enabled: false }
    slowStart: { window: 0s }
`);
    for (let i = 0; i < 20; i++) expect(await chat(gw.url)).toBe(200);
    expect(received(loading)).toBe(0);
    await eventually(
      async () => {
        await chat(gw?.url ?? "");
        return received(loading) > 0;
      },
      { interval: 20, timeout: 30_000 },
    );
    expect(received(ready)).toBeGreaterThanOrEqual(20);
  }, 40_000);

  it("a backend ejected for a refused connect is back on its first passed health check, not after the ejection time", async () => {
    const a = await startSim({ models: ["m"], ...fast });
    const b = await startSim({ models: ["m"], ...fast });
    sims = [a, b];
    // Active checks alone would take ~100 probes to call it unhealthy: what takes a out here is
    // outlier detection (one refused connect), for 30 s, unless a passed probe ends it.
    gw = await startGateway(`pools:
  p:
    models: [m]
    balancer: round_robin
    backends: [{ url: "${a.url}", name: a, engine: vllm }, { url: "${b.url}", name: b, engine: vllm }]
    healthCheck: { interval: 200ms, timeout: 200ms, healthyThreshold: 1, unhealthyThreshold: 100 }
    outlierDetection: { baseEjectionTime: 30s }
    loadSignals: { enabled: false }
    slowStart: { window: 0s }
`);
    const pool = gw.gateway.upstreams.pools.get("p");
    const backendA = pool?.backends.find((x) => x.name === "a");
    await a.setFaults({ refuseConnections: true });
    for (let i = 0; i < 4; i++) expect(await chat(gw.url)).toBe(200); // retried on b
    expect(backendA?.breaker.state).toBe("open");
    await a.setFaults({ refuseConnections: false });
    // Its next probes pass; the first of them ends the ejection (30 s early).
    await until(() => backendA?.breaker.state === "closed");
    const before = received(a);
    for (let i = 0; i < 10; i++) expect(await chat(gw.url)).toBe(200);
    expect(received(a) - before).toBeGreaterThanOrEqual(4);
  });

  it("a backend ejected for 5xx answers waits for its half-open probe even while /health passes", async () => {
    const a = await startSim({ models: ["m"], ...fast });
    const b = await startSim({ models: ["m"], ...fast });
    sims = [a, b];
    gw = await startGateway(`pools:
  p:
    models: [m]
    balancer: round_robin
    backends: [{ url: "${a.url}", name: a, engine: vllm }, { url: "${b.url}", name: b, engine: vllm }]
    healthCheck: { interval: 100ms, timeout: 200ms, healthyThreshold: 1 }
    outlierDetection: { consecutive5xx: 2, baseEjectionTime: 30s }
    retry: { attempts: 0 }
    loadSignals: { enabled: false }
`);
    const backendA = gw.gateway.upstreams.pools.get("p")?.backends.find((x) => x.name === "a");
    await a.setFaults({ errorRate: 1, errorStatus: 500 });
    for (let i = 0; i < 6 && backendA?.breaker.state !== "open"; i++) await chat(gw.url);
    expect(backendA?.breaker.state).toBe("open");
    // /health keeps passing (inference fails, health does not): several probes later, still out.
    const probesFrom = received(a);
    await sleep(600);
    expect(backendA?.breaker.state).toBe("open");
    expect(received(a)).toBe(probesFrom);
  });

  it("a backend whose /v1/models lacks the pool's model is never sent traffic", async () => {
    const right = await startSim({ models: ["m"], ...fast });
    const wrong = await startSim({ models: ["other-model"], ...fast });
    sims = [right, wrong];
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${right.url}", engine: vllm }, { url: "${wrong.url}", engine: vllm }]
    healthCheck: { interval: 100ms }
    loadSignals: { enabled: false }
`);
    const healthy = async () => {
      const status = await request(`${gw?.adminUrl}/admin/status`, {
        headers: { authorization: "Bearer test-admin-token-0123456789" },
      });
      const body = (await status.body.json()) as { pools: { backends: { healthy: boolean }[] }[] };
      return body.pools[0]?.backends.map((b) => b.healthy);
    };
    // Once the first probes have decided (not after a guessed time):
    await until(async () => JSON.stringify(await healthy()) === JSON.stringify([true, false]));
    for (let i = 0; i < 30; i++) expect(await chat(gw.url)).toBe(200);
    expect(received(wrong)).toBe(0);
    expect(await healthy()).toEqual([true, false]);
  });

  it("a backend that fails its checks is taken out, and a fast 503 says when to retry if none is left", async () => {
    const only = await startSim({ models: ["m"], ...fast });
    sims = [only];
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${only.url}", engine: vllm }]
    healthCheck: { interval: 100ms, unhealthyThreshold: 2, healthyThreshold: 1 }
    loadSignals: { enabled: false }
    panicThreshold: 0
`);
    expect(await chat(gw.url)).toBe(200);
    await only.setFaults({ unhealthy: true });
    await until(async () => (await chat(gw?.url ?? "")) === 503);
    await only.clearFaults();
    await until(async () => (await chat(gw?.url ?? "")) === 200);
  });
});

describe("operator drain", () => {
  it("a drained backend gets no new requests and finishes its in-flight ones; undrain brings it back", async () => {
    const a = await startSim({ models: ["m"], prefillMsPerToken: 0, decodeMsPerSeq: 0, decodeStepMs: 50 });
    const b = await startSim({ models: ["m"], ...fast });
    sims = [a, b];
    gw = await startGateway(`pools:
  p:
    models: [m]
    balancer: round_robin
    backends: [{ url: "${a.url}", name: a, engine: vllm }, { url: "${b.url}", name: b, engine: vllm }]
    healthCheck: { enabled: false }
    loadSignals: { enabled: false }
    slowStart: { window: 0s }
`);
    const admin = (action: string) =>
      request(`${gw?.adminUrl}/admin/pools/p/backends/a/${action}`, {
        method: "POST",
        headers: { authorization: "Bearer test-admin-token-0123456789" },
      }).then(async (r) => ({ status: r.statusCode, body: await r.body.json() }));
    // One long request on a, then drain a while it runs.
    const slow = (async () => {
      const first = chat(gw?.url ?? "");
      const second = chat(gw?.url ?? "");
      return Promise.all([first, second]);
    })();
    await until(() => a.stats().running === 1);
    expect(await admin("drain")).toEqual({ status: 200, body: { pool: "p", backend: "a", drained: true } });
    for (let i = 0; i < 10; i++) expect(await chat(gw.url)).toBe(200);
    expect(a.stats().received).toBe(1);
    expect(await slow).toEqual([200, 200]); // the in-flight one finished
    expect((await admin("undrain")).status).toBe(200);
    for (let i = 0; i < 10; i++) expect(await chat(gw.url)).toBe(200);
    expect(a.stats().received).toBeGreaterThan(1);
    const missing = await request(`${gw.adminUrl}/admin/pools/p/backends/nope/drain`, {
      method: "POST",
      headers: { authorization: "Bearer test-admin-token-0123456789" },
    });
    expect(missing.statusCode).toBe(404);
    await missing.body.dump();
  });
});

describe("DNS discovery", () => {
  it("A records: addresses added and removed at run time become backends; state of the others is kept", async () => {
    dns = await startDnsServer();
    const [a, b] = await simPair();
    const port = a.port;
    sims = [a, b];
    dns.set("llm.test", { a: ["127.0.0.2"] });
    gw = await startGateway(
      `dns: { servers: ["${dns.address}"], timeout: 500ms }
pools:
  p:
    models: [m]
    backends: [{ url: "http://llm.test:${port}", discovery: dns, engine: vllm }]
    dnsRefresh: 100ms
    slowStart: { window: 0s }
    loadSignals: { enabled: false }
`,
      {},
    );
    const pool = gw.gateway.upstreams.pools.get("p");
    expect(pool?.backends.map((x) => x.name)).toEqual([`llm.test/127.0.0.2:${port}`]);
    for (let i = 0; i < 5; i++) expect(await chat(gw.url)).toBe(200);
    expect(received(a)).toBe(5);
    const first = pool?.backends[0];
    if (first) first.ejections = 7; // state that must survive refreshes

    dns.set("llm.test", { a: ["127.0.0.2", "127.0.0.3"] });
    await until(() => pool?.backends.length === 2);
    expect(pool?.backends[0]).toBe(first);
    expect(first?.ejections).toBe(7);
    for (let i = 0; i < 20; i++) expect(await chat(gw.url)).toBe(200);
    expect(received(b)).toBeGreaterThan(0);

    dns.set("llm.test", { a: ["127.0.0.3"] });
    await until(() => pool?.backends.length === 1);
    const before = received(a);
    for (let i = 0; i < 10; i++) expect(await chat(gw.url)).toBe(200);
    expect(received(a)).toBe(before);

    // DNS failing keeps the last answer: no pool drained by a hiccup.
    dns.mode("servfail");
    await sleep(300);
    expect(pool?.backends.length).toBe(1);
    expect(await chat(gw.url)).toBe(200);
  });

  it("SRV records give each backend its port", async () => {
    dns = await startDnsServer();
    const a = await startSim({ models: ["m"], ...fast });
    const b = await startSim({ models: ["m"], ...fast });
    sims = [a, b];
    dns.set("_llm._tcp.svc.test", {
      srv: [
        { priority: 10, weight: 1, port: a.port, target: "node1.svc.test" },
        { priority: 10, weight: 1, port: b.port, target: "node1.svc.test" },
      ],
    });
    dns.set("node1.svc.test", { a: ["127.0.0.1"] });
    gw = await startGateway(`dns: { servers: ["${dns.address}"] }
pools:
  p:
    models: [m]
    backends: [{ url: "http://_llm._tcp.svc.test", discovery: srv, engine: vllm }]
    loadSignals: { enabled: false }
`);
    const pool = gw.gateway.upstreams.pools.get("p");
    expect(pool?.backends.map((x) => x.origin).sort()).toEqual([a.url, b.url].sort());
    for (let i = 0; i < 20; i++) expect(await chat(gw.url)).toBe(200);
    expect(received(a)).toBeGreaterThan(0);
    expect(received(b)).toBeGreaterThan(0);
  });
});
