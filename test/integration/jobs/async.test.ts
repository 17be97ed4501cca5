/**
 * Async requests (Prefer: respond-async) end to end: real gateways in front of simulated GPU
 * backends on port 0, the jobs queue in memory (one replica). Each test waits for states
 * (slots held, queues full, jobs ended), never for a length of time.
 */
import { afterEach, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/index.js";
import { type SimOptions, type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { completion, jsonResponse, startUpstream } from "../../helpers/upstream.js";
import { call, chatBody, metric, poll, stableHeaders, submit } from "./helpers.js";

const KEY_A = "sk-tenant-a-0123456789";
const KEY_B = "sk-tenant-b-0123456789";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function sim(options: Partial<SimOptions> = {}): Promise<SimServer> {
  const s = await startSim({
    models: ["sim-model"],
    prefillMsPerToken: 0,
    decodeMsPerSeq: 0,
    decodeStepMs: 1,
    ...options,
  });
  cleanups.push(() => s.close());
  return s;
}

function poolYaml(url: string, extra = "", backend = ""): string {
  return `pools:
  sims:
    models: [sim-model]
    loadSignals: { enabled: false }
    backends: [{ url: "${url}", engine: vllm${backend} }]
${extra}`;
}

const AUTH = `auth: { keys: [{ key: "${KEY_A}", tenant: a }, { key: "${KEY_B}", tenant: b }] }
tenants: { a: {}, b: {} }`;

async function gateway(yaml: string): Promise<RunningGateway> {
  const gw = await startGateway(yaml);
  cleanups.push(() => gw.close());
  return gw;
}

/** Requests held open at a backend until the test lets them go (aborted by the client). */
function holders(url: string, n: number, key?: string) {
  const controller = new AbortController();
  const pending = Array.from({ length: n }, () =>
    call(`${url}/v1/chat/completions`, {
      body: chatBody({ max_tokens: 20_000, stream: true }),
      key,
      signal: controller.signal,
    }).catch(() => undefined),
  );
  cleanups.push(() => controller.abort());
  return {
    release: async () => {
      controller.abort();
      await Promise.all(pending);
    },
  };
}

describe("async requests", () => {
  it("accepted with 202 at once while every slot is held and the queue is full, then completed with a synchronous call's answer", async () => {
    const backend = await sim({ slots: 2, decodeStepMs: 20 });
    const gw = await gateway(
      poolYaml(
        backend.url,
        "    admission: { bands: { interactive: { maxWait: 60s, maxQueue: 1 } } }",
        ", maxConcurrency: 2",
      ),
    );
    const pool = gw.gateway.upstreams.pools.get("sims");
    if (!pool) throw new Error("no pool");
    const held = holders(gw.url, 2);
    await eventually(() => backend.stats().running === 2);
    // The interactive queue's one place taken: the next synchronous request is refused.
    const queued = call(`${gw.url}/v1/chat/completions`, { body: chatBody() });
    await eventually(() => pool.admission.waiting(0) === 1);
    const refused = await call(`${gw.url}/v1/chat/completions`, { body: chatBody() });
    expect(refused.status).toBe(503);
    expect(refused.json).toMatchObject({ error: { code: "queue_full" } });

    const accepted = await submit(gw.url, chatBody());
    expect(accepted.status).toBe(202);
    // Answered while the fleet was still saturated.
    expect(backend.stats().running).toBe(2);
    expect(pool.admission.waiting(0)).toBe(1);
    expect(accepted.headers["preference-applied"]).toBe("respond-async");
    const id = accepted.json.id as string;
    expect(id).toMatch(/^job_[A-Za-z0-9_-]{22,}$/);
    expect(accepted.headers.location).toBe(`/v1/jobs/${id}`);
    expect(accepted.json).toEqual({ id, object: "job", status: "queued" });
    expect(Number(accepted.headers["retry-after-ms"])).toBeGreaterThanOrEqual(250);
    expect(Number(accepted.headers["retry-after"])).toBeGreaterThanOrEqual(1);

    // Pending: 202 with a fresh retry-after; its run waits in the batch band, behind the
    // interactive request.
    await eventually(() => pool.admission.waiting(1) === 1);
    const pending = await call(`${gw.url}/v1/jobs/${id}`);
    expect(pending.status).toBe(202);
    expect(pending.json).toEqual({ id, object: "job", status: "running" });
    expect(Number(pending.headers["retry-after-ms"])).toBeGreaterThanOrEqual(250);

    await held.release();
    const done = await poll(gw.url, `/v1/jobs/${id}`);
    expect((await queued).status).toBe(200);
    const sync = await call(`${gw.url}/v1/chat/completions`, { body: chatBody() });
    expect(done.status).toBe(200);
    expect(done.headers["x-floodgate-job-status"]).toBe("succeeded");
    expect(done.headers["content-type"]).toBe(sync.headers["content-type"]);
    expect(Object.keys(done.json)).toEqual(Object.keys(sync.json));
    expect(done.json).toMatchObject({
      object: "chat.completion",
      choices: [{ message: { role: "assistant" } }],
    });
    expect(done.json.usage).toMatchObject({ completion_tokens: 5 });
    // The answer is the run's: its request id is the job's.
    expect(done.headers["x-request-id"]).toBe(id);
  }, 60_000);

  it("a finished job's answer is kept for jobs.ttl, then the job is gone", async () => {
    const backend = await sim();
    const gw = await gateway(`${poolYaml(backend.url)}\njobs: { ttl: 1s }`);
    const { json } = await submit(gw.url, chatBody());
    expect((await poll(gw.url, `/v1/jobs/${json.id}`)).status).toBe(200);
    const gone = await eventually(async () => {
      const answer = await call(`${gw.url}/v1/jobs/${json.id}`);
      return answer.status === 404 ? answer : undefined;
    });
    expect(gone?.json).toMatchObject({ error: { code: "job_not_found" } });
  });

  it("replays a job's answer exactly, as often as it is read", async () => {
    const backend = await sim();
    const gw = await gateway(poolYaml(backend.url));
    const { json } = await submit(gw.url, chatBody());
    const first = await poll(gw.url, `/v1/jobs/${json.id}`);
    const second = await call(`${gw.url}/v1/jobs/${json.id}`);
    expect(second.status).toBe(first.status);
    expect(stableHeaders(second.headers)).toEqual(stableHeaders(first.headers));
    expect(second.text).toBe(first.text);
    expect(backend.stats().received).toBe(1);
  });

  it("stores a stream request's answer as its final JSON, usage and finish_reason included", async () => {
    const backend = await sim();
    const gw = await gateway(poolYaml(backend.url));
    const { json } = await submit(gw.url, chatBody({ stream: true, max_tokens: 7 }));
    const done = await poll(gw.url, `/v1/jobs/${json.id}`);
    const sync = await call(`${gw.url}/v1/chat/completions`, { body: chatBody({ max_tokens: 7 }) });
    expect(done.status).toBe(200);
    expect(done.headers["content-type"]).toMatch(/^application\/json/);
    expect(Object.keys(done.json).sort()).toEqual(Object.keys(sync.json).sort());
    expect(done.json).toMatchObject({
      object: "chat.completion",
      choices: [{ index: 0, message: { role: "assistant" }, finish_reason: "length" }],
      usage: { completion_tokens: 7 },
    });
    const content = (done.json.choices as { message: { content: string } }[])[0]?.message.content;
    expect(content?.split(" ").length).toBeGreaterThan(1);

    const text = await submit(
      gw.url,
      { model: "sim-model", prompt: "hi", max_tokens: 3, stream: true },
      { route: "/v1/completions" },
    );
    const completion = await poll(gw.url, `/v1/jobs/${text.json.id}`);
    expect(completion.json).toMatchObject({
      object: "text_completion",
      choices: [{ index: 0, finish_reason: "length" }],
      usage: { completion_tokens: 3 },
    });
  });

  it("a job is its tenant's: another tenant reads and deletes nothing (404 as for no job)", async () => {
    const backend = await sim();
    const gw = await gateway(`${AUTH}\n${poolYaml(backend.url)}`);
    const { json, status } = await submit(gw.url, chatBody(), { key: KEY_A });
    expect(status).toBe(202);
    const path = `/v1/jobs/${json.id}`;
    await poll(gw.url, path, KEY_A);
    const other = await call(`${gw.url}${path}`, { key: KEY_B });
    const absent = await call(`${gw.url}/v1/jobs/job_doesnotexist0000000000`, { key: KEY_B });
    expect(other.status).toBe(404);
    expect(other.json).toMatchObject({ error: { code: "job_not_found", type: "invalid_request_error" } });
    expect(absent.status).toBe(404);
    expect(absent.json).toMatchObject({ error: { code: "job_not_found" } });
    expect((await call(`${gw.url}${path}`, { key: KEY_B, method: "DELETE" })).status).toBe(404);
    expect((await call(`${gw.url}${path}`)).status).toBe(401);
    expect((await call(`${gw.url}${path}`, { key: KEY_A })).status).toBe(200);
  });

  it("DELETE while running cancels it and aborts the backend's work", async () => {
    const backend = await sim({ decodeStepMs: 20 });
    const gw = await gateway(poolYaml(backend.url));
    const { json } = await submit(gw.url, chatBody({ max_tokens: 20_000 }));
    const path = `/v1/jobs/${json.id}`;
    await eventually(() => backend.stats().running === 1);
    const deleted = await call(`${gw.url}${path}`, { method: "DELETE" });
    expect(deleted.status).toBe(200);
    expect(deleted.json).toEqual({ id: json.id, object: "job", status: "cancelled" });
    await eventually(() => backend.stats().aborted === 1 && backend.stats().running === 0);
    await eventually(() => gw.gateway.jobs.runner.running === 0);
    const read = await call(`${gw.url}${path}`);
    expect(read.status).toBe(200);
    expect(read.json).toEqual({ id: json.id, object: "job", status: "cancelled" });
    expect(backend.stats()).toMatchObject({ received: 1, completed: 0 });
    expect(await metric(gw, "floodgate_jobs_finished_total", { state: "cancelled" })).toBe(1);
    // Deleting a job that ended says how it ended.
    const again = await call(`${gw.url}${path}`, { method: "DELETE" });
    expect(again.json).toEqual({ id: json.id, object: "job", status: "cancelled" });
  });

  it("a run refused for load goes back to the queue and completes later", async () => {
    const backend = await sim({ decodeStepMs: 20 });
    // 300 tokens at once, refilled at 100 a second: a request holding ~260 of them leaves no
    // room for the job's ~110 until the bucket has refilled.
    const gw =
      await gateway(`${AUTH.replace("a: {}", "a: { limits: { tokens: { rate: 6000, per: 1m, burst: 300 } } }")}
${poolYaml(backend.url)}
jobs: { pollInterval: 20ms }`);
    const hog = call(`${gw.url}/v1/chat/completions`, { body: chatBody({ max_tokens: 250 }), key: KEY_A });
    await eventually(() => backend.stats().running === 1);
    const { json, status } = await submit(gw.url, chatBody({ max_tokens: 100 }), { key: KEY_A });
    expect(status).toBe(202);
    await eventually(
      async () => (await metric(gw, "floodgate_jobs_released_total", { reason: "load" })) >= 1,
    );
    const done = await poll(gw.url, `/v1/jobs/${json.id}`, KEY_A);
    expect(done.status).toBe(200);
    expect(done.json).toMatchObject({ object: "chat.completion", usage: { completion_tokens: 100 } });
    const record = await gw.gateway.jobs.queue().get(json.id as string);
    expect(record?.attempts).toBeGreaterThanOrEqual(2);
    expect((await hog).status).toBe(200);
    expect(await metric(gw, "floodgate_jobs_finished_total", { state: "succeeded" })).toBe(1);
  }, 60_000);

  it("a submission is checked as its synchronous call is: a bad body is a 400, a model off the tenant's list a 404, and nothing is queued", async () => {
    const backend = await sim();
    const gw = await gateway(
      `${AUTH.replace("a: {}", "a: { models: [sim-model] }")}\n${poolYaml(backend.url)}`,
    );
    const noModel = await submit(gw.url, { messages: [] }, { key: KEY_A });
    expect(noModel.status).toBe(400);
    expect(noModel.json).toMatchObject({ error: { code: "invalid_request", param: "model" } });
    const notJson = await call(`${gw.url}/v1/chat/completions`, {
      key: KEY_A,
      headers: { prefer: "respond-async", "content-type": "application/json" },
      method: "POST",
      body: undefined,
    });
    expect(notJson.status).toBe(400);
    const unknown = await submit(gw.url, chatBody({ model: "gpt-none" }), { key: KEY_A });
    expect(unknown.status).toBe(404);
    expect(unknown.json).toMatchObject({ error: { code: "model_not_found" } });
    const noKey = await submit(gw.url, chatBody());
    expect(noKey.status).toBe(401);
    expect(await metric(gw, "floodgate_jobs_submitted_total", { tenant: "a" })).toBe(0);
    expect(await gw.gateway.jobs.queue().depth()).toBe(0);
    expect(backend.stats().received).toBe(0);
  });

  it("the submission counts against the request limits, the run does not", async () => {
    const backend = await sim();
    const gw = await gateway(
      `${AUTH.replace("a: {}", "a: { limits: { requests: { rate: 2, per: 1h } } }")}\n${poolYaml(backend.url)}`,
    );
    const first = await submit(gw.url, chatBody(), { key: KEY_A });
    const second = await submit(gw.url, chatBody(), { key: KEY_A });
    expect([first.status, second.status]).toEqual([202, 202]);
    const third = await submit(gw.url, chatBody(), { key: KEY_A });
    expect(third.status).toBe(429);
    expect(third.json).toMatchObject({ error: { code: "requests_limit_exceeded" } });
    expect(Number(third.headers["retry-after-ms"])).toBeGreaterThan(0);
    // Both runs went through although the tenant's limit was spent.
    for (const job of [first, second]) {
      expect((await poll(gw.url, `/v1/jobs/${job.json.id}`, KEY_A)).status).toBe(200);
    }
    expect(backend.stats().completed).toBe(2);
  });

  it("past jobs.maxPerTenant unfinished jobs, a submission is 429 too_many_jobs with retry-after; another tenant is not held back", async () => {
    const backend = await sim({ decodeStepMs: 20 });
    const gw = await gateway(`${AUTH}\n${poolYaml(backend.url)}\njobs: { maxPerTenant: 2, concurrency: 1 }`);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const { status, json } = await submit(gw.url, chatBody({ max_tokens: 20_000 }), { key: KEY_A });
      expect(status).toBe(202);
      ids.push(json.id as string);
    }
    const refused = await submit(gw.url, chatBody(), { key: KEY_A });
    expect(refused.status).toBe(429);
    expect(refused.json).toMatchObject({ error: { code: "too_many_jobs", type: "rate_limit_exceeded" } });
    expect(Number(refused.headers["retry-after-ms"])).toBeGreaterThan(0);
    expect(Number(refused.headers["retry-after"])).toBeGreaterThanOrEqual(1);
    expect(refused.headers["x-should-retry"]).toBe("true");
    const other = await submit(gw.url, chatBody(), { key: KEY_B });
    expect(other.status).toBe(202);
    ids.push(other.json.id as string);
    // One runs (concurrency 1), the others wait: the gauges say so.
    await eventually(() => backend.stats().running === 1);
    expect(await metric(gw, "floodgate_jobs_running")).toBe(1);
    expect(await metric(gw, "floodgate_jobs_queue_depth")).toBe(2);
    // A cancelled job is no longer unfinished: the tenant may submit again.
    await call(`${gw.url}/v1/jobs/${ids[0]}`, { key: KEY_A, method: "DELETE" });
    const again = await submit(gw.url, chatBody(), { key: KEY_A });
    expect(again.status).toBe(202);
    expect(await metric(gw, "floodgate_jobs_submitted_total", { tenant: "a" })).toBe(3);
    expect(await metric(gw, "floodgate_jobs_submitted_total", { tenant: "b" })).toBe(1);
  });

  it("the run reserves the tenant's tokens and settles them to the real usage", async () => {
    // No max_tokens: tokens.defaultMaxTokens (1024) is reserved, 5 to 10 are generated.
    const backend = await sim({ outputTokensMin: 5, outputTokensMax: 10 });
    const gw = await gateway(
      `${AUTH.replace("a: {}", "a: { limits: { tokens: { rate: 2000, per: 1h } } }")}\n${poolYaml(backend.url)}`,
    );
    const started = performance.now();
    const { json } = await submit(gw.url, chatBody({ max_tokens: undefined }), { key: KEY_A });
    const done = await poll(gw.url, `/v1/jobs/${json.id}`, KEY_A);
    const used = (done.json.usage as { total_tokens: number }).total_tokens;
    expect(used).toBeLessThan(100);
    const tokens = (kind: string) => metric(gw, "floodgate_ratelimit_tokens_total", { tenant: "a", kind });
    await eventually(async () => (await tokens("settled")) > 0);
    expect(await tokens("reserved")).toBeGreaterThan(1024);
    const bucket = await gw.gateway.store.primary.take(
      { key: "tok:tenant:a", ratePerSec: 2000 / 3600, burst: 2000 },
      0,
    );
    const refilled = ((performance.now() - started) / 1000) * (2000 / 3600);
    expect(bucket.remaining).toBeGreaterThanOrEqual(2000 - used - 0.001);
    expect(bucket.remaining).toBeLessThanOrEqual(2000 - used + refilled + 0.001);
  });

  it("with jobs off, Prefer: respond-async is served synchronously and /v1/jobs is not there", async () => {
    const backend = await sim();
    const gw = await gateway(`${poolYaml(backend.url)}\njobs: { enabled: false }`);
    const answer = await submit(gw.url, chatBody());
    expect(answer.status).toBe(200);
    expect(answer.headers["preference-applied"]).toBeUndefined();
    expect(answer.json).toMatchObject({ object: "chat.completion" });
    const jobs = await call(`${gw.url}/v1/jobs/job_x`);
    expect(jobs.status).toBe(404);
    expect(jobs.json).toMatchObject({ error: { code: "unknown_url" } });
  });

  it("honours respond-async among other preferences, in any case, and nothing that only quotes it", async () => {
    const backend = await sim();
    const gw = await gateway(poolYaml(backend.url));
    expect((await submit(gw.url, chatBody(), { prefer: "wait=10, Respond-Async" })).status).toBe(202);
    expect(
      (await submit(gw.url, chatBody(), { prefer: "return=minimal; x=1,RESPOND-ASYNC ; y" })).status,
    ).toBe(202);
    const quoted = await submit(gw.url, chatBody(), { prefer: 'handling=lenient; note="respond-async"' });
    expect(quoted.status).toBe(200);
    expect((await submit(gw.url, chatBody(), { prefer: "respond-asynchronously" })).status).toBe(200);
  });

  it("a job that failed answers its error, marked so that an SDK does not retry the poll", async () => {
    const backend = await sim();
    const gw = await gateway(poolYaml(backend.url));
    // The backend's own 400, which the gateway passes on.
    const { json } = await submit(gw.url, chatBody({ temperature: "hot" }));
    const sync = await call(`${gw.url}/v1/chat/completions`, { body: chatBody({ temperature: "hot" }) });
    const failed = await poll(gw.url, `/v1/jobs/${json.id}`);
    expect(sync.status).toBe(400);
    expect(failed.status).toBe(400);
    expect(failed.json).toEqual(sync.json);
    expect(failed.headers["x-floodgate-job-status"]).toBe("failed");
    expect(failed.headers["x-should-retry"]).toBe("false");
    expect(await metric(gw, "floodgate_jobs_finished_total", { state: "failed" })).toBe(1);
  });

  it("the run's credential never reaches a backend, and a header a client sends is never one", async () => {
    const upstream = await startUpstream((_req, res) => jsonResponse(res, 200, completion));
    cleanups.push(() => upstream.close());
    const gw = await gateway(`${AUTH}\n${poolYaml(upstream.url).replace("sim-model", "test-model")}`);
    const body = chatBody({ model: "test-model" });
    const { json } = await submit(gw.url, body, { key: KEY_A });
    expect((await poll(gw.url, `/v1/jobs/${json.id}`, KEY_A)).json).toEqual(completion);
    expect(upstream.received).toHaveLength(1);
    expect(upstream.received[0]?.headers["x-floodgate-job"]).toBeUndefined();
    expect(upstream.received[0]?.headers["x-floodgate-priority"]).toBe("batch");
    const forged = { "x-floodgate-job": `forged:${json.id}` };
    const noKey = await call(`${gw.url}/v1/chat/completions`, { body, headers: forged });
    expect(noKey.status).toBe(401);
    expect(noKey.json).toMatchObject({ error: { code: "missing_api_key" } });
    const keyed = await call(`${gw.url}/v1/chat/completions`, { body, key: KEY_B, headers: forged });
    expect(keyed.status).toBe(200);
    expect(upstream.received[1]?.headers["x-floodgate-job"]).toBeUndefined();
  });

  it("a reload keeps the jobs running, and its concurrency applies to the next claims", async () => {
    const backend = await sim({ decodeStepMs: 20 });
    const yaml = (concurrency: number) =>
      `listen: { host: 127.0.0.1, port: 0 }\nlog: { level: silent }\n${poolYaml(backend.url)}\njobs: { concurrency: ${concurrency}, pollInterval: 20ms }`;
    const gw = await gateway(poolYaml(backend.url).concat("\njobs: { concurrency: 1, pollInterval: 20ms }"));
    const first = await submit(gw.url, chatBody({ max_tokens: 150 }));
    await eventually(() => backend.stats().running === 1);
    const rest = [
      await submit(gw.url, chatBody({ max_tokens: 20_000 })),
      await submit(gw.url, chatBody({ max_tokens: 20_000 })),
    ];
    expect((await call(`${gw.url}/v1/jobs/${rest[0]?.json.id}`)).json).toMatchObject({ status: "queued" });
    const config = parseConfig(yaml(3), "reload", {});
    for (const pool of Object.values(config.pools)) pool.healthCheck.enabled = false;
    const report = await gw.gateway.apply(config);
    expect(report.ok).toBe(true);
    await eventually(() => backend.stats().running === 3);
    const done = await poll(gw.url, `/v1/jobs/${first.json.id}`);
    expect(done.status).toBe(200);
    expect(done.json).toMatchObject({ usage: { completion_tokens: 150 } });
    expect((await gw.gateway.jobs.queue().get(first.json.id as string))?.attempts).toBe(1);
    for (const job of rest) await call(`${gw.url}/v1/jobs/${job.json.id}`, { method: "DELETE" });
  }, 60_000);
});
