/**
 * Async requests on a fleet: replicas sharing a real redis-server's jobs queue. A replica that
 * dies while running a job loses no job (its lease lapses and another replica runs it again);
 * one that shuts down gives its jobs back at once; any replica answers a poll.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually, sleep } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { startRedis, type TestRedis } from "../../helpers/redis.js";
import { call, chatBody, metric, poll, submit } from "./helpers.js";

const KEY = "sk-tenant-a-0123456789";
const LEASE_MS = 2000;

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

async function sim(): Promise<SimServer> {
  // 20 ms a token: a 300-token job runs for about 6 s.
  const s = await startSim({
    models: ["sim-model"],
    prefillMsPerToken: 0,
    decodeMsPerSeq: 0,
    decodeStepMs: 20,
  });
  cleanups.push(() => s.close());
  return s;
}

/** The fleet's config; `lease` short so that a dead replica's jobs come back soon. */
function fleetYaml(simUrl: string, lease = `${LEASE_MS}ms`): string {
  return `store: { type: redis, url: "${redis.url}", commandTimeout: 2s, replicas: 2 }
auth: { keys: [{ key: "${KEY}", tenant: a }] }
tenants: { a: {} }
jobs: { lease: ${lease}, pollInterval: 50ms }
pools:
  sims:
    models: [sim-model]
    healthCheck: { enabled: false }
    loadSignals: { enabled: false }
    backends: [{ url: "${simUrl}", engine: vllm }]
`;
}

/** The fleet's config with its own jobs section (`jobs` a YAML flow map). */
function jobsYaml(simUrl: string, jobs: string): string {
  return fleetYaml(simUrl).replace(/^jobs: .*$/m, `jobs: ${jobs}`);
}

/** Script calls Redis ran (EVALSHA, and EVAL for a script's first call on a connection). */
async function scripts(): Promise<number> {
  const stats = await redis.cli("INFO", "commandstats");
  const calls = (name: string) => Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
  return calls("evalsha") + calls("eval");
}

const WAKE_CHANNEL = "floodgate:jobs:{jobs}:wake";

/** Subscribers of the jobs' wake channel, as Redis counts them. */
async function subscribers(): Promise<number> {
  return Number((await redis.cli("PUBSUB", "NUMSUB", WAKE_CHANNEL)).split("\n")[1]);
}

async function replica(yaml: string): Promise<RunningGateway> {
  const gw = await startGateway(yaml);
  cleanups.push(() => gw.close());
  return gw;
}

/** A replica in its own process, as a deployment runs it, so that it can be killed. */
async function replicaProcess(yaml: string): Promise<ChildProcess & { url: string }> {
  const file = join(mkdtempSync(join(tmpdir(), "floodgate-jobs-")), "gateway.yaml");
  writeFileSync(
    file,
    `listen: { host: 127.0.0.1, port: 0 }\nadmin: { enabled: false }\nlog: { level: info, accessLog: false }\n${yaml}`,
  );
  const main = join(import.meta.dirname, "../../../src/main.ts");
  const child = spawn(process.execPath, ["--import", "tsx", main, "--config", file], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  cleanups.push(() => {
    child.kill("SIGKILL");
  });
  let out = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  child.stderr?.on("data", (d) => {
    out += d;
  });
  const url: string = await eventually(() => /"url":"(http:[^"]+)"/.exec(out)?.[1] ?? "", {
    timeout: 30_000,
    what: "the replica process to listen",
  });
  return Object.assign(child, { url });
}

describe("async requests on several replicas (Redis)", () => {
  it("a job whose replica is SIGKILLed mid-run is run again by another after its lease lapses, and the client polling that one sees it complete once", async () => {
    const backend = await sim();
    const yaml = fleetYaml(backend.url);
    const a = await replicaProcess(yaml);
    const accepted = await submit(a.url, chatBody({ max_tokens: 300 }), { key: KEY });
    expect(accepted.status).toBe(202);
    const path = `/v1/jobs/${accepted.json.id}`;
    // A claimed it at once and runs it.
    await eventually(() => backend.stats().running === 1, { timeout: 20_000 });

    // B joins while A runs the job; A renews its lease, so B, polling every 50 ms, cannot take
    // it: over more than a lease, the job stays A's first and only run.
    const b = await replica(yaml);
    const pendingOnB = await call(`${b.url}${path}`, { key: KEY });
    expect(pendingOnB.status).toBe(202);
    expect(pendingOnB.json).toMatchObject({ status: "running" });
    await sleep(LEASE_MS * 1.5);
    expect(b.gateway.jobs.runner.running).toBe(0);
    expect(backend.stats()).toMatchObject({ received: 1, running: 1 });

    a.kill("SIGKILL");
    // The dead replica's connection closed: the backend stopped that run.
    await eventually(() => backend.stats().aborted === 1, { timeout: 20_000 });
    // Its lease lapses, B claims the job and runs it from the start.
    await eventually(() => b.gateway.jobs.runner.running === 1 && backend.stats().running === 1, {
      timeout: 20_000,
    });
    expect(backend.stats().received).toBe(2);
    const done = await poll(b.url, path, KEY, 60_000);
    expect(done.status).toBe(200);
    expect(done.headers["x-floodgate-job-status"]).toBe("succeeded");
    expect(done.json).toMatchObject({ object: "chat.completion", usage: { completion_tokens: 300 } });
    const record = await b.gateway.jobs.queue().get(accepted.json.id as string);
    expect(record).toMatchObject({ state: "succeeded", attempts: 2 });
    // Ended once: by B, and the backend completed one run of the two.
    expect(await metric(b, "floodgate_jobs_finished_total", { state: "succeeded" })).toBe(1);
    expect(backend.stats()).toMatchObject({ received: 2, completed: 1, aborted: 1 });
    // Read again, from the same replica, it is the same answer.
    expect((await call(`${b.url}${path}`, { key: KEY })).text).toBe(done.text);
  }, 120_000);

  it("a replica that shuts down gives its running jobs back at once: another runs them without waiting for the lease", async () => {
    const backend = await sim();
    // A 10-minute lease: the job can only move by being given back.
    const yaml = fleetYaml(backend.url, "10m");
    const a = await startGateway(yaml);
    let closed: Promise<void> | undefined;
    const closeA = () => {
      closed ??= a.close();
      return closed;
    };
    cleanups.push(closeA);
    const accepted = await submit(a.url, chatBody({ max_tokens: 20 }), { key: KEY });
    await eventually(() => a.gateway.jobs.runner.running === 1 && backend.stats().running === 1);
    const b = await replica(yaml);
    await closeA();
    expect(await metric(a, "floodgate_jobs_released_total", { reason: "stopping" })).toBe(1);
    const done = await poll(b.url, `/v1/jobs/${accepted.json.id}`, KEY);
    expect(done.status).toBe(200);
    expect(done.json).toMatchObject({ usage: { completion_tokens: 20 } });
    expect(await b.gateway.jobs.queue().get(accepted.json.id as string)).toMatchObject({ attempts: 2 });
    expect(backend.stats()).toMatchObject({ received: 2, aborted: 1, completed: 1 });
  }, 60_000);

  it("any replica answers a poll, and a job submitted to one is cancelled from another", async () => {
    const backend = await sim();
    const yaml = fleetYaml(backend.url);
    const [a, b] = [await replica(yaml), await replica(yaml)];
    const quick = await submit(a.url, chatBody(), { key: KEY });
    const onB = await poll(b.url, `/v1/jobs/${quick.json.id}`, KEY);
    expect(onB.status).toBe(200);
    expect((await call(`${a.url}/v1/jobs/${quick.json.id}`, { key: KEY })).text).toBe(onB.text);

    const long = await submit(a.url, chatBody({ max_tokens: 20_000 }), { key: KEY });
    await eventually(() => backend.stats().running === 1);
    const holder = a.gateway.jobs.runner.running === 1 ? a : b;
    const other = holder === a ? b : a;
    const cancelled = await call(`${other.url}/v1/jobs/${long.json.id}`, { key: KEY, method: "DELETE" });
    expect(cancelled.json).toMatchObject({ status: "cancelled" });
    // The holder learns it at its next renew (lease / 3) and stops the backend's work.
    await eventually(() => backend.stats().running === 0 && holder.gateway.jobs.runner.running === 0, {
      timeout: 10_000,
    });
    expect(backend.stats().aborted).toBe(1);
    expect(await metric(holder, "floodgate_jobs_lost_total")).toBe(1);
  }, 60_000);

  /**
   * Two replicas of one job each (concurrency 1), polling every 100 ms: an idle one looks every
   * 800 ms (8 polls) and is woken for what is submitted. The first job, long, takes one replica;
   * returns it and the other, idle.
   */
  async function busyAndIdle(backend: SimServer): Promise<[RunningGateway, RunningGateway]> {
    const yaml = jobsYaml(backend.url, "{ lease: 30s, pollInterval: 100ms, concurrency: 1 }");
    const [a, b] = [await replica(yaml), await replica(yaml)];
    await eventually(() => a.gateway.jobs.runner.subscribed && b.gateway.jobs.runner.subscribed);
    expect(await subscribers()).toBe(2);
    const long = await submit(a.url, chatBody({ max_tokens: 20_000 }), { key: KEY });
    expect(long.status).toBe(202);
    await eventually(() => backend.stats().running === 1);
    return a.gateway.jobs.runner.running === 1 ? [a, b] : [b, a];
  }

  const ownerOf = (id: unknown) => redis.cli("HGET", `floodgate:jobs:{jobs}:job:${String(id)}`, "owner");

  it("an idle replica is woken: it costs Redis a claim per 8 polls, and starts a job submitted on a busy replica", async () => {
    const backend = await sim();
    const [busy, idle] = await busyAndIdle(backend);
    // Idle over 4 s: polling every 100 ms would be 40 claims; the busy replica has no room
    // (no claim) and renews every 10 s.
    await sleep(1000);
    const before = await scripts();
    await sleep(4000);
    const idleCalls = (await scripts()) - before;
    expect(idleCalls).toBeLessThanOrEqual(4000 / 800 + 2);
    // A job submitted where there is no room: the idle replica, woken, runs it.
    const job = await submit(busy.url, chatBody({ max_tokens: 20_000 }), { key: KEY });
    await eventually(() => idle.gateway.jobs.runner.running === 1 && backend.stats().running === 2);
    expect(await ownerOf(job.json.id)).toBe(idle.gateway.jobs.runner.owner);
    expect(busy.gateway.jobs.runner.running).toBe(1);
  }, 60_000);

  it("a subscription that drops still lets jobs run: the replica polls until it is back", async () => {
    const backend = await sim();
    const [busy, idle] = await busyAndIdle(backend);
    // No channel for anyone: the subscribers are cut off and cannot subscribe again, and the
    // submit script's wake is refused (the submission is not).
    cleanups.push(async () => {
      await redis.cli("ACL", "SETUSER", "default", "allchannels");
    });
    await redis.cli("ACL", "SETUSER", "default", "resetchannels");
    await redis.cli("CLIENT", "KILL", "TYPE", "pubsub");
    await eventually(() => !idle.gateway.jobs.runner.subscribed && !busy.gateway.jobs.runner.subscribed);
    expect(await subscribers()).toBe(0);
    const job = await submit(busy.url, chatBody({ max_tokens: 20_000 }), { key: KEY });
    expect(job.status).toBe(202);
    await eventually(() => idle.gateway.jobs.runner.running === 1 && backend.stats().running === 2);
    expect(await ownerOf(job.json.id)).toBe(idle.gateway.jobs.runner.owner);
    // Channels allowed again: both subscribe again by themselves.
    await redis.cli("ACL", "SETUSER", "default", "allchannels");
    await eventually(() => idle.gateway.jobs.runner.subscribed && busy.gateway.jobs.runner.subscribed);
    expect(await subscribers()).toBe(2);
  }, 60_000);

  it("shutdown closes a replica's subscriber connection", async () => {
    const backend = await sim();
    const yaml = fleetYaml(backend.url);
    const a = await startGateway(yaml);
    const b = await replica(yaml);
    await eventually(() => a.gateway.jobs.runner.subscribed && b.gateway.jobs.runner.subscribed);
    expect(await subscribers()).toBe(2);
    await a.close();
    expect(a.gateway.jobs.runner.subscribed).toBe(false);
    await eventually(async () => (await subscribers()) === 1);
    // The other still hears a submission on the closed one's channel.
    const job = await submit(b.url, chatBody(), { key: KEY });
    expect((await poll(b.url, `/v1/jobs/${job.json.id}`, KEY)).status).toBe(200);
  }, 60_000);

  it("while the store is down, a submission or a poll is a 503 to retry; once it is back, jobs run again", async () => {
    const backend = await sim();
    const gw = await replica(fleetYaml(backend.url));
    await redis.kill();
    const refused = await submit(gw.url, chatBody(), { key: KEY });
    expect(refused.status).toBe(503);
    expect(refused.json).toMatchObject({ error: { code: "jobs_unavailable", type: "server_error" } });
    expect(refused.headers["x-should-retry"]).toBe("true");
    expect(Number(refused.headers["retry-after-ms"])).toBeGreaterThan(0);
    const poll503 = await call(`${gw.url}/v1/jobs/job_x`, { key: KEY });
    expect(poll503.status).toBe(503);
    await redis.restart();
    const accepted = await eventually(async () => {
      const answer = await submit(gw.url, chatBody(), { key: KEY });
      return answer.status === 202 ? answer : undefined;
    });
    const done = await poll(gw.url, `/v1/jobs/${accepted?.json.id}`, KEY);
    expect(done.status).toBe(200);
  }, 60_000);
});
