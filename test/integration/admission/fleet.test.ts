/**
 * Replicas share backend slots through Redis (src/upstream/fleet.ts): three gateways, one
 * redis-server, backends that count the requests they hold at once.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { type AddressInfo, connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { eventually, sleep } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { startRedis, type TestRedis } from "../../helpers/redis.js";
import {
  chunkEvent,
  completion,
  jsonResponse,
  startUpstream,
  type TestUpstream,
} from "../../helpers/upstream.js";

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await redis.cli("FLUSHALL");
});

/** A backend that holds each request `holdMs` and records how many it held at once. */
interface CountingBackend extends TestUpstream {
  active: number;
  peak: number;
  /** Request bodies' `user` field, in the order they arrived. */
  order: string[];
}

async function countingBackend(holdMs: number, stream = false): Promise<CountingBackend> {
  const state = { active: 0, peak: 0, order: [] as string[] };
  const upstream = await startUpstream(async (_req, res, record) => {
    state.active++;
    state.peak = Math.max(state.peak, state.active);
    res.on("close", () => state.active--);
    let user = "";
    try {
      user = String((JSON.parse(record.body) as { user?: string }).user ?? "");
    } catch {}
    state.order.push(user);
    if (stream) {
      res.writeHead(200, { "content-type": "text/event-stream" });
      // The long streams are the killed replica's; the others' end soon.
      const steps = user === "child" ? Math.max(1, Math.round(holdMs / 50)) : 2;
      for (let i = 0; i < steps && !res.destroyed; i++) {
        res.write(chunkEvent(i, "x"));
        await sleep(50);
      }
      res.end("data: [DONE]\n\n");
      return;
    }
    await sleep(holdMs);
    jsonResponse(res, 200, completion);
  });
  cleanups.push(() => upstream.close());
  // Getters, not copies: the counts move while the test reads them.
  return Object.defineProperties(upstream, {
    active: { get: () => state.active },
    peak: { get: () => state.peak },
    order: { value: state.order },
  }) as CountingBackend;
}

const SYNC = 50;
const LEASE = 1000;

function fleetYaml(
  backends: { url: string; max: number | undefined }[],
  commandTimeout = 2000,
  lease = LEASE,
): string {
  return `store: { type: redis, url: "${redis.url}", commandTimeout: ${commandTimeout}ms, replicas: 3, breaker: { failures: 2, resetTimeout: 300ms }, slots: { sync: ${SYNC}ms, lease: ${lease}ms } }
pools:
  main:
    models: [test-model]
    balancer: least_request
    timeouts: { total: 60s }
    admission: { bands: { interactive: { maxWait: 30s }, batch: { maxWait: 30s } } }
    backends:
${backends.map((b) => `      - { url: "${b.url}"${b.max === undefined ? "" : `, maxConcurrency: ${b.max}`} }`).join("\n")}
`;
}

async function replicas(n: number, yaml: string): Promise<RunningGateway[]> {
  const out: RunningGateway[] = [];
  for (let i = 0; i < n; i++) {
    const gw = await startGateway(yaml);
    cleanups.push(() => gw.close());
    out.push(gw);
  }
  // Every replica has seen the others (their shares are split).
  await eventually(() => out.every((g) => g.gateway.fleet?.replicas === n));
  return out;
}

async function chat(url: string, body: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  const res = await request(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ model: "test-model", messages: [{ role: "user", content: "hi" }], ...body }),
  });
  const text = await res.body.text();
  return { status: res.statusCode, text };
}

describe("replicas share backend slots", () => {
  it("three replicas under load: the requests on a backend, summed over replicas, never exceed its slots", async () => {
    const a = await countingBackend(60);
    const b = await countingBackend(60);
    const gws = await replicas(
      3,
      fleetYaml([
        { url: a.url, max: 3 },
        { url: b.url, max: 2 },
      ]),
    );
    const statuses: number[] = [];
    const perReplica = gws.map(() => 0);
    await Promise.all(
      gws.flatMap((gw, i) =>
        Array.from({ length: 6 }, async () => {
          for (let k = 0; k < 6; k++) {
            const res = await chat(gw.url);
            statuses.push(res.status);
            if (res.status === 200) perReplica[i] = (perReplica[i] ?? 0) + 1;
          }
        }),
      ),
    );
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(statuses).toHaveLength(108);
    // One replica alone would have let 3 + 2 in per replica: 15 at once over the fleet.
    expect(a.peak).toBeLessThanOrEqual(3);
    expect(b.peak).toBeLessThanOrEqual(2);
    // The slots were really shared: each replica was served, and the fleet used them all.
    expect(perReplica.every((n) => n > 0)).toBe(true);
    expect(a.peak + b.peak).toBeGreaterThanOrEqual(4);
  }, 60_000);

  it("an idle fleet calls Redis at its heartbeat (lease / 3), not at every sync tick", async () => {
    const backend = await countingBackend(10);
    const gws = await replicas(2, fleetYaml([{ url: backend.url, max: 2 }]));
    // One request each, then quiet.
    for (const g of gws) expect((await chat(g.url)).status).toBe(200);
    await sleep(LEASE);
    const before = gws.map((g) => g.gateway.fleet?.calls ?? 0);
    await sleep(3 * LEASE);
    const calls = gws.map((g, i) => (g.gateway.fleet?.calls ?? 0) - (before[i] ?? 0));
    // Ticks every 50 ms would be 60 calls in 3 s; the heartbeat is one per 333 ms (9).
    for (const n of calls) {
      expect(n).toBeGreaterThan(0);
      expect(n).toBeLessThanOrEqual(12);
    }
  }, 60_000);

  it("a backend without maxConcurrency is not shared: its replicas make no fleet sync, Redis counts no call", async () => {
    /** Commands Redis ran for clients (scripts and plain commands alike), from INFO commandstats. */
    const commands = async (): Promise<number> => {
      const stats = await redis.cli("INFO", "commandstats");
      let n = 0;
      for (const m of stats.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)) {
        // The harness's own INFO, and what ioredis sends as a connection starts.
        if (!["info", "client|setname", "client|setinfo", "select"].includes(m[1] ?? "")) n += Number(m[2]);
      }
      return n;
    };
    const backend = await countingBackend(30);
    // Jobs off: their claims would be counted too.
    const yaml = `${fleetYaml([{ url: backend.url, max: undefined }])}jobs: { enabled: false }\n`;
    const gws: RunningGateway[] = [];
    for (let i = 0; i < 2; i++) {
      const gw = await startGateway(yaml);
      cleanups.push(() => gw.close());
      gws.push(gw);
    }
    const before = await commands();
    // Concurrent requests on both replicas (reports that would change every sync), then quiet
    // past a heartbeat (lease / 3).
    const statuses = await Promise.all(
      gws.flatMap((gw) => Array.from({ length: 8 }, () => chat(gw.url).then((r) => r.status))),
    );
    await sleep(LEASE);
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(gws.map((g) => g.gateway.fleet?.calls)).toEqual([0, 0]);
    expect((await commands()) - before).toBe(0);
    // Each replica's slots are its own connections, unclaimed by anyone.
    const b = gws[0]?.gateway.upstreams.pools.get("main")?.backends[0];
    expect(b?.sharedSlots).toBe(false);
    expect(b?.share).toBe(Number.POSITIVE_INFINITY);
    expect(await redis.cli("EXISTS", "floodgate:{fleet:main}")).toBe("0");
  }, 60_000);

  it("a pool with and without maxConcurrency: only the configured backend is shared", async () => {
    const shared = await countingBackend(10);
    const own = await countingBackend(10);
    const gws = await replicas(
      2,
      fleetYaml([
        { url: shared.url, max: 2 },
        { url: own.url, max: undefined },
      ]),
    );
    for (const g of gws) expect((await chat(g.url)).status).toBe(200);
    const reports = (await redis.cli("HVALS", "floodgate:{fleet:main}"))
      .split("\n")
      .map((line) => JSON.parse(line) as { b: Record<string, unknown> });
    expect(reports).toHaveLength(2);
    const ownName = gws[0]?.gateway.upstreams.pools.get("main")?.backends.find((b) => !b.sharedSlots)?.name;
    const sharedName = gws[0]?.gateway.upstreams.pools.get("main")?.backends.find((b) => b.sharedSlots)?.name;
    expect(ownName).toBeDefined();
    for (const r of reports) expect(Object.keys(r.b)).toEqual([sharedName]);
  }, 60_000);

  it("the next free slot of the fleet goes to an interactive request on one replica before a batch one on another", async () => {
    const backend = await countingBackend(400);
    const [holder, batch, interactive] = await replicas(3, fleetYaml([{ url: backend.url, max: 1 }]));
    if (!holder || !batch || !interactive) throw new Error("three replicas");
    const held = chat(holder.url, { user: "holder" });
    await eventually(() => backend.order.length === 1);
    const late = chat(batch.url, { user: "batch" }, { "x-floodgate-priority": "batch" });
    await eventually(() => batch.gateway.upstreams.pools.get("main")?.admission.queue.total === 1);
    const first = chat(interactive.url, { user: "interactive" });
    await eventually(() => interactive.gateway.upstreams.pools.get("main")?.admission.queue.total === 1);
    // Both waits reported to the fleet (a few syncs).
    await sleep(SYNC * 4);
    expect(backend.order).toEqual(["holder"]);
    const results = await Promise.all([held, first, late]);
    expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(backend.order).toEqual(["holder", "interactive", "batch"]);
    expect(backend.peak).toBe(1);
  }, 60_000);

  it("a replica killed with SIGKILL mid-stream gives its slots back within the lease", async () => {
    const backend = await countingBackend(20_000, true);
    const yaml = fleetYaml([{ url: backend.url, max: 2 }]);
    const survivor = await startGateway(yaml);
    cleanups.push(() => survivor.close());
    const child = await startReplicaProcess(yaml);
    cleanups.push(() => {
      child.kill("SIGKILL");
    });
    await eventually(() => survivor.gateway.fleet?.replicas === 2);
    // Two long streams through the child take both slots.
    const streams = [childStream(child), childStream(child)];
    await eventually(() => backend.active === 2, { timeout: 20_000 });
    const waiting = chat(survivor.url, { user: "after" });
    await eventually(() => survivor.gateway.upstreams.pools.get("main")?.admission.queue.total === 1);
    await sleep(SYNC * 4);
    expect(backend.order.filter((u) => u === "after")).toEqual([]);

    const killedAt = Date.now();
    child.kill("SIGKILL");
    await Promise.allSettled(streams);
    let servedAt = 0;
    await eventually(
      () => {
        if (backend.order.includes("after")) servedAt ||= Date.now();
        return servedAt;
      },
      { timeout: 20_000 },
    );
    // Within the lease (1 s) and a few syncs, with slack for a busy machine.
    expect(servedAt - killedAt).toBeLessThan(LEASE + 5_000);
    // Not before the lease: the dead replica's claims held until they lapsed (the streams'
    // slots were free at the backend at once, but the fleet only learns it from the lease).
    expect(servedAt - killedAt).toBeGreaterThanOrEqual(LEASE / 2);
    expect(backend.peak).toBeLessThanOrEqual(2);
    const served = await waiting;
    expect(served.status).toBe(200);
  }, 90_000);

  it("Redis killed and restarted mid-load: each replica falls back to its part, then shares again", async () => {
    const backend = await countingBackend(40);
    // The default commandTimeout: a short one timed out on a loaded machine while Redis was up,
    // and a replica cut off from a Redis the others reach is not what this test is about.
    const gws = await replicas(2, fleetYaml([{ url: backend.url, max: 4 }]));
    let stop = false;
    const statuses: number[] = [];
    const load = gws.flatMap((gw) =>
      Array.from({ length: 4 }, async () => {
        while (!stop) statuses.push((await chat(gw.url)).status);
      }),
    );
    await eventually(() => statuses.length >= 20);
    await redis.kill();
    await eventually(() => gws.every((g) => g.gateway.fleet?.storeDown === true), { timeout: 20_000 });
    // Down: floor(4 / 2) slots each (after one lease within the last claim).
    await eventually(() => gws.every((g) => g.gateway.upstreams.pools.get("main")?.backends[0]?.share === 2));
    const duringOutage = statuses.length;
    await eventually(() => statuses.length >= duringOutage + 20);
    await redis.restart();
    await eventually(() => gws.every((g) => g.gateway.fleet?.storeDown === false), { timeout: 20_000 });
    const afterReturn = statuses.length;
    await eventually(() => statuses.length >= afterReturn + 20);
    stop = true;
    await Promise.all(load);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(backend.peak).toBeLessThanOrEqual(4);
  }, 90_000);

  it("Redis back after an outage: a replica that syncs first keeps to the outage's part while another is still cut off", async () => {
    const backend = await countingBackend(40);
    const slots = [{ url: backend.url, max: 4 }];
    // The second replica reaches Redis through a proxy the test cuts, so that it is still cut off
    // when Redis returns. A 10 s lease: the first replica's warm-up outlasts any stall.
    const proxy = await cuttableProxy(redis.port);
    cleanups.push(() => proxy.close());
    const first = await startGateway(fleetYaml(slots, 2000, 10_000));
    cleanups.push(() => first.close());
    const second = await startGateway(fleetYaml(slots, 2000, 10_000).replace(redis.url, proxy.url));
    cleanups.push(() => second.close());
    const gws = [first, second];
    await eventually(() => gws.every((g) => g.gateway.fleet?.replicas === 2));
    await redis.kill();
    proxy.cut();
    await eventually(() => gws.every((g) => g.gateway.fleet?.storeDown === true), { timeout: 20_000 });
    await redis.restart();
    await eventually(() => first.gateway.fleet?.storeDown === false, { timeout: 20_000 });
    await sleep(SYNC * 4);
    const share = (g: RunningGateway) => g.gateway.upstreams.pools.get("main")?.backends[0]?.share;
    // The restarted Redis knows only the first replica, the second runs on its part (2 of 4):
    // the first keeps to its own part of the outage, not all 4 for a fleet of one.
    expect(second.gateway.fleet?.storeDown).toBe(true);
    expect(share(second)).toBeLessThanOrEqual(2);
    expect(first.gateway.fleet?.replicas).toBe(1);
    expect(share(first)).toBe(2);
  }, 60_000);
});

/** A TCP proxy to 127.0.0.1:port; cut() drops its connections and refuses new ones. */
async function cuttableProxy(port: number): Promise<{ url: string; cut(): void; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let refusing = false;
  const server: Server = createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = connect(port, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("error", () => undefined);
      socket.on("close", () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port: own } = server.address() as AddressInfo;
  const cut = () => {
    refusing = true;
    for (const socket of sockets) socket.destroy();
  };
  return {
    url: `redis://127.0.0.1:${own}`,
    cut,
    close: async () => {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A gateway replica in its own process, as a deployment runs it (so that it can be killed). */
async function startReplicaProcess(yaml: string): Promise<ChildProcess & { url: string }> {
  const file = join(mkdtempSync(join(tmpdir(), "floodgate-fleet-")), "gateway.yaml");
  writeFileSync(
    file,
    `listen: { host: 127.0.0.1, port: 0 }\nadmin: { enabled: false }\nlog: { level: info, accessLog: false }\n${yaml.replace(
      "balancer: least_request",
      "balancer: least_request\n    healthCheck: { enabled: false }",
    )}`,
  );
  const main = join(import.meta.dirname, "../../../src/main.ts");
  const child = spawn(process.execPath, ["--import", "tsx", main, "--config", file], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  const url: string = await eventually(() => /"url":"(http:[^"]+)"/.exec(out)?.[1] ?? "", {
    timeout: 30_000,
  });
  return Object.assign(child, { url });
}

function childStream(child: { url: string }): Promise<unknown> {
  return chat(child.url, { stream: true, user: "child" }).catch(() => undefined);
}
