/** Hot reload: a new config applies while requests run, and a bad one changes nothing. */
import { mkdirSync, mkdtempSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway, type Gateway } from "../../../src/app.js";
import { loadConfigFile } from "../../../src/config/index.js";
import { eventually } from "../../helpers/eventually.js";
import {
  chunkEvent,
  completion,
  jsonResponse,
  sleep,
  startUpstream,
  type TestUpstream,
} from "../../helpers/upstream.js";

const TOKEN = "reload-test-admin-token-0123456789abcdef";
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Running {
  gateway: Gateway;
  url: string;
  adminUrl: string;
  file: string;
  write(yaml: string): void;
}

const HEAD = `listen: { host: 127.0.0.1, port: 0 }
admin: { host: 127.0.0.1, port: 0, token: ${TOKEN} }
log: { level: silent }
`;

/** A gateway run from a file, as `floodgate --config FILE` runs it. */
async function startFromFile(yaml: string, head = HEAD): Promise<Running> {
  const dir = mkdtempSync(join(tmpdir(), "floodgate-reload-"));
  const file = join(dir, "gateway.yaml");
  const write = (body: string) => writeFileSync(file, head + body);
  write(yaml);
  const gateway = buildGateway(loadConfigFile(file), { processMetrics: false, configFile: file });
  const { url, adminUrl } = await gateway.listen();
  cleanups.push(() => gateway.close());
  return { gateway, url, adminUrl: adminUrl ?? "", file, write };
}

async function answering(delayMs = 0, stream = false): Promise<TestUpstream> {
  const upstream = await startUpstream(async (req, res, record) => {
    if (req.url === "/health") return jsonResponse(res, 200, { ok: true });
    if (delayMs > 0) await sleep(delayMs);
    if (stream || record.body.includes('"stream":true')) {
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (let i = 0; i < 3; i++) res.write(chunkEvent(i, `t${i}`));
      res.end("data: [DONE]\n\n");
      return;
    }
    jsonResponse(res, 200, completion);
  });
  cleanups.push(() => upstream.close());
  return upstream;
}

async function chat(url: string, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  const res = await request(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], ...body }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

async function adminReload(gw: Running) {
  const res = await request(`${gw.adminUrl}/admin/reload`, {
    method: "POST",
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

async function status(gw: Running) {
  const res = await request(`${gw.adminUrl}/admin/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return (await res.body.json()) as {
    pools: {
      name: string;
      backends: { name: string; breaker: string; ejections: number; healthy: boolean }[];
    }[];
  };
}

async function metric(gw: Running, line: string): Promise<number> {
  const text = await (await request(`${gw.adminUrl}/metrics`)).body.text();
  const found = text.split("\n").find((l) => l.startsWith(line));
  return found ? Number(found.split(" ").pop()) : Number.NaN;
}

function pools(urls: string[], extra = ""): string {
  return `pools:
  main:
    models: [test-model]
    healthCheck: { enabled: false }
    backends:
${urls.map((u) => `      - { url: "${u}" }`).join("\n")}
${extra}`;
}

describe("hot reload", () => {
  it("50 reloads under load, streams included: no request fails, each reload applies", async () => {
    const a = await answering(5);
    const b = await answering(5);
    const c = await answering(5);
    const configs = [
      pools([a.url, b.url]),
      // A backend added, a weight changed, a tenant-less limit added.
      `${pools([a.url, b.url, c.url])}rateLimits:\n  - { name: per-ip, by: ip, rate: 100000 }\n`,
      // One removed while it has requests in flight: it drains.
      pools([a.url, c.url]),
    ];
    const gw = await startFromFile(configs[0] ?? "");
    let stop = false;
    const outcomes = { ok: 0, failed: [] as string[] };
    const worker = async (stream: boolean) => {
      while (!stop) {
        const res = await chat(gw.url, { model: "test-model", stream });
        const complete = !stream || res.text.includes("data: [DONE]");
        if (res.status === 200 && complete) outcomes.ok++;
        else outcomes.failed.push(`${res.status} ${res.text.slice(0, 200)}`);
      }
    };
    const load = [worker(false), worker(false), worker(true), worker(true)];
    const reports: Record<string, unknown>[] = [];
    for (let i = 1; i <= 50; i++) {
      gw.write(configs[i % configs.length] ?? "");
      const res = await adminReload(gw);
      expect(res.status).toBe(200);
      reports.push(res.body);
      // Some requests between reloads, whatever the machine's speed.
      const before = outcomes.ok + outcomes.failed.length;
      await eventually(() => outcomes.ok + outcomes.failed.length >= before + 4);
    }
    stop = true;
    await Promise.all(load);
    expect(outcomes.failed).toEqual([]);
    expect(outcomes.ok).toBeGreaterThanOrEqual(200);
    expect(reports.every((r) => r.ok === true)).toBe(true);
    expect(gw.gateway.generation).toBe(51);
    expect(await metric(gw, 'floodgate_config_reloads_total{result="success"}')).toBe(50);
    // The last config (50 % 3 = 2) has a and c: b drained and left.
    const backends = (await status(gw)).pools[0]?.backends.map((x) => x.name);
    expect(backends).toHaveLength(2);
    expect(backends).not.toContain(new URL(b.url).host);
  }, 120_000);

  it("an invalid config is refused with every error, and the running one keeps serving", async () => {
    const a = await answering();
    const gw = await startFromFile(pools([a.url]));
    gw.write(
      `pools:\n  main:\n    models: [test-model]\n    balancer: fastest\n    backends: [{ url: "${a.url}" }]\nrateLimits:\n  - { name: per-ip, by: ip, rate: five }\n`,
    );
    const res = await adminReload(gw);
    expect(res.status).toBe(422);
    expect(res.body.ok).toBe(false);
    const errors = (res.body.errors as string[]).join("\n");
    expect(errors).toContain("pools.main.balancer");
    expect(errors).toContain("rateLimits[0].rate");
    expect(res.body.generation).toBe(1);
    expect(gw.gateway.generation).toBe(1);
    expect((await chat(gw.url, { model: "test-model" })).status).toBe(200);
    expect(await metric(gw, 'floodgate_config_reloads_total{result="failure"}')).toBe(1);
    expect(await metric(gw, 'floodgate_config_reloads_total{result="success"}')).toBe(0);
  });

  it("an ejected backend stays ejected across a reload; its state is the backend's, not the config's", async () => {
    const good = await answering();
    const bad = await startUpstream((_req, res) => jsonResponse(res, 500, { error: { message: "boom" } }));
    cleanups.push(() => bad.close());
    const outlier =
      "    outlierDetection: { consecutive5xx: 2, baseEjectionTime: 5m }\n    retry: { attempts: 1 }\n";
    const gw = await startFromFile(pools([good.url, bad.url], outlier));
    const badName = new URL(bad.url).host;
    // Round robin puts requests on the bad one until it is ejected.
    for (let i = 0; i < 10; i++) await chat(gw.url, { model: "test-model" });
    const before = (await status(gw)).pools[0]?.backends.find((x) => x.name === badName);
    expect(before?.breaker).toBe("open");
    expect(before?.ejections).toBe(1);

    // A reload that changes the pool (a weight) keeps the backend and its ejection.
    gw.write(
      pools([good.url, bad.url], outlier).replace(
        `{ url: "${good.url}" }`,
        `{ url: "${good.url}", weight: 3 }`,
      ),
    );
    expect((await adminReload(gw)).body.ok).toBe(true);
    const after = (await status(gw)).pools[0]?.backends.find((x) => x.name === badName);
    expect(after?.breaker).toBe("open");
    expect(after?.ejections).toBe(1);
    const seen = bad.received.length;
    for (let i = 0; i < 10; i++) expect((await chat(gw.url, { model: "test-model" })).status).toBe(200);
    expect(bad.received.length).toBe(seen);
  });

  it("a new backend joins through its health check; keys, tenants and limits change", async () => {
    const a = await answering();
    const b = await answering();
    const auth = `auth:\n  keys:\n    - { key: key-one-0123456789, tenant: one }\ntenants:\n  one: {}\n`;
    const withHealth = (urls: string[]) =>
      `${auth}pools:\n  main:\n    models: [test-model]\n    healthCheck: { path: /health, interval: 200ms, healthyThreshold: 1, checkModels: false }\n    backends:\n${urls.map((u) => `      - { url: "${u}" }`).join("\n")}\n`;
    const gw = await startFromFile(withHealth([a.url]));
    const key = { authorization: "Bearer key-one-0123456789" };
    expect((await chat(gw.url, { model: "test-model" }, key)).status).toBe(200);

    // A second key, a limit for tenant one, and a new backend.
    gw.write(
      withHealth([a.url, b.url])
        .replace("tenant: one }", "tenant: one }\n    - { key: key-two-0123456789, tenant: two }")
        .replace("  one: {}", "  one: { limits: { requests: { rate: 1, per: 1m } } }\n  two: {}"),
    );
    const res = await adminReload(gw);
    expect(res.body.ok).toBe(true);
    expect(res.body.pools).toMatchObject({ backends: { main: { added: [new URL(b.url).host] } } });
    // Probed before it took a request.
    const probed = b.received.findIndex((r) => r.url === "/health");
    expect(probed).toBeGreaterThanOrEqual(0);
    await eventually(async () => {
      await chat(gw.url, { model: "test-model" }, { authorization: "Bearer key-two-0123456789" });
      return b.received.some((r) => r.url === "/v1/chat/completions");
    });
    expect(b.received.findIndex((r) => r.url === "/v1/chat/completions")).toBeGreaterThan(probed);
    // The new limit: one request a minute for tenant one.
    const first = await chat(gw.url, { model: "test-model" }, key);
    const second = await chat(gw.url, { model: "test-model" }, key);
    expect([first.status, second.status]).toContain(429);
  });

  it("a removed pool refuses its queue with retry headers; its request in flight finishes", async () => {
    const slow = await answering(400);
    const other = await answering();
    const gw = await startFromFile(
      `pools:\n  main:\n    models: [test-model]\n    healthCheck: { enabled: false }\n    backends: [{ url: "${slow.url}", maxConcurrency: 1 }]\n  other:\n    models: [other-model]\n    healthCheck: { enabled: false }\n    backends: [{ url: "${other.url}" }]\n`,
    );
    const inFlight = chat(gw.url, { model: "test-model" });
    await eventually(() => slow.received.length === 1);
    const queued = chat(gw.url, { model: "test-model" });
    await eventually(async () => (await status(gw)).pools.length === 2);
    await eventually(() => gw.gateway.upstreams.pools.get("main")?.admission.queue.total === 1);
    gw.write(
      `pools:\n  other:\n    models: [other-model]\n    healthCheck: { enabled: false }\n    backends: [{ url: "${other.url}" }]\n`,
    );
    const res = await adminReload(gw);
    expect(res.body).toMatchObject({ ok: true, pools: { removed: ["main"] } });
    const refused = await queued;
    expect(refused.status).toBe(503);
    expect(Number(refused.headers["retry-after"])).toBeGreaterThan(0);
    expect(refused.headers["retry-after-ms"]).toBeDefined();
    expect((await inFlight).status).toBe(200);
    // The model is gone with its pool; the other pool serves on.
    expect((await chat(gw.url, { model: "test-model" })).status).toBe(404);
    expect((await chat(gw.url, { model: "other-model" })).status).toBe(200);
  });

  it("a request under way finishes on the config it started with", async () => {
    const slow = await answering(600);
    const gw = await startFromFile(pools([slow.url], "    timeouts: { total: 30s }\n"));
    const started = chat(gw.url, { model: "test-model" });
    await eventually(() => slow.received.length === 1);
    gw.write(
      pools([slow.url], "    timeouts: { connect: 100ms, firstByte: 100ms, idle: 100ms, total: 200ms }\n"),
    );
    expect((await adminReload(gw)).body.ok).toBe(true);
    // The new total (200 ms) would cut it off; it keeps its own (30 s).
    expect((await started).status).toBe(200);
    // One that starts now runs on the new timeouts.
    expect((await chat(gw.url, { model: "test-model" })).status).toBe(504);
  });

  it("says which changed sections need a restart, and applies the rest", async () => {
    const a = await answering();
    const gw = await startFromFile(pools([a.url]));
    const moved = `listen: { host: 127.0.0.1, port: 1 }\nadmin: { host: 127.0.0.1, port: 0, token: ${TOKEN} }\nlog: { level: silent }\n`;
    writeFileSync(gw.file, `${moved}${pools([a.url], "    balancer: round_robin\n")}`);
    const res = await adminReload(gw);
    expect(res.body).toMatchObject({ ok: true, restartNeeded: ["listen"] });
    expect(gw.gateway.upstreams.pools.get("main")?.config.balancer).toBe("round_robin");
    // Still on the port it started on.
    expect((await chat(gw.url, { model: "test-model" })).status).toBe(200);
  });

  it("reload.watch: a write of the file and a ConfigMap-style symlink swap both reload", async () => {
    const a = await answering();
    const dir = mkdtempSync(join(tmpdir(), "floodgate-watch-"));
    // The ConfigMap layout: gateway.yaml -> ..data/gateway.yaml, ..data -> a timestamped folder.
    const version = (n: number, body: string) => {
      const folder = join(dir, `..v${n}`);
      mkdirSync(folder, { recursive: true });
      writeFileSync(join(folder, "gateway.yaml"), body);
      const link = join(dir, `..data_tmp${n}`);
      symlinkSync(`..v${n}`, link);
      renameSync(link, join(dir, "..data"));
    };
    const head = `${HEAD}reload: { watch: true, debounce: 50ms }\n`;
    version(1, head + pools([a.url]));
    symlinkSync(join("..data", "gateway.yaml"), join(dir, "gateway.yaml"));
    const file = join(dir, "gateway.yaml");
    const gateway = buildGateway(loadConfigFile(file), { processMetrics: false, configFile: file });
    await gateway.listen();
    cleanups.push(() => gateway.close());

    version(2, head + pools([a.url], "    balancer: round_robin\n"));
    await eventually(() => gateway.generation === 2, { timeout: 20_000 });
    expect(gateway.upstreams.pools.get("main")?.config.balancer).toBe("round_robin");
    version(3, head + pools([a.url], "    balancer: random\n"));
    await eventually(() => gateway.generation === 3, { timeout: 20_000 });
    expect(gateway.upstreams.pools.get("main")?.config.balancer).toBe("random");
  });
});
