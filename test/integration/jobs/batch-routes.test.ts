/**
 * /v1/files and /v1/batches through a real gateway, called with the official openai SDK (and
 * raw fetch where the SDK cannot say it): limits, bad lines, tenants, cancel, paging, and the
 * byte-exact round trip of a multi-chunk file, on the memory store and on a real Redis. The
 * gateway's own job runner runs the lines; where a test needs lines to wait, its backend holds
 * them until the test opens a gate.
 */
import { createHash } from "node:crypto";
import OpenAI, { toFile } from "openai";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { startRedis, type TestRedis } from "../../helpers/redis.js";
import { completion, gate, jsonResponse, startUpstream, type TestUpstream } from "../../helpers/upstream.js";

const KEY_A = "sk-tenant-a-0123456789";
const KEY_B = "sk-tenant-b-0123456789";

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.stop();
});

let sims: SimServer[] = [];
let upstreams: TestUpstream[] = [];
let gateways: RunningGateway[] = [];
afterEach(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await Promise.all([...sims, ...upstreams].map((s) => s.close()));
  gateways = [];
  sims = [];
  upstreams = [];
});

/** A backend that answers its first `free` requests at once and holds the others until opened. */
async function heldBackend(free: number) {
  const held = gate();
  const upstream = await startUpstream(async (_req, res) => {
    if (upstream.received.length > free) await held.opened;
    jsonResponse(res, 200, completion);
  });
  upstreams.push(upstream);
  return { upstream, open: held.open };
}

const line = (i: number, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    custom_id: `req-${i}`,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model: "sim-model", messages: [{ role: "user", content: `line ${i}` }], max_tokens: 2 },
    ...extra,
  });
const jsonl = (lines: string[]) => toFile(Buffer.from(lines.join("\n")), "batch.jsonl");

interface SetupOptions {
  /** Replaces the batches section's maxPerTenant (and anything after it). */
  batches?: string;
  jobs?: string;
  /** The backend's URL; a simulator by default. */
  backend?: string;
}

async function setup(store: "memory" | "redis", options: SetupOptions = {}) {
  let backend = options.backend;
  if (backend === undefined) {
    const sim = await startSim({
      models: ["sim-model"],
      decodeStepMs: 1,
      decodeMsPerSeq: 0,
      prefillMsPerToken: 0,
    });
    sims.push(sim);
    backend = sim.url;
  }
  const prefix = `t${Date.now()}:`;
  const storeYaml =
    store === "redis" ? `store: { type: redis, url: "${redis.url}", keyPrefix: "${prefix}" }` : "";
  const gw = await startGateway(
    `${storeYaml}
auth: { keys: [{ key: "${KEY_A}", tenant: a }, { key: "${KEY_B}", tenant: b }] }
tenants: { a: {}, b: {} }
batches: { maxFileBytes: 3mb, maxLines: 1000, ${options.batches ?? "maxPerTenant: 3"} }
jobs: { ${options.jobs ?? ""} }
pools: { sims: { models: [sim-model], backends: [{ url: "${backend}" }] } }`,
  );
  gateways.push(gw);
  const client = (key: string) => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });
  const a = client(KEY_A);
  /** The batch once it has ended, read as its tenant reads it. */
  const ended = (id: string, by: OpenAI = a) =>
    eventually(
      async () => {
        const batch = await by.batches.retrieve(id);
        return ["completed", "failed", "expired", "cancelled"].includes(batch.status) ? batch : undefined;
      },
      { timeout: 30_000, what: `batch ${id} to end` },
    ) as Promise<OpenAI.Batch>;
  return { gw, a, b: client(KEY_B), ended, prefix };
}

async function contentOf(client: OpenAI, id: string): Promise<Buffer> {
  return Buffer.from(await (await client.files.content(id)).arrayBuffer());
}
async function linesOf(client: OpenAI, id: string | null | undefined) {
  const text = (await contentOf(client, id ?? "")).toString("utf8");
  return text
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}

describe.each(["memory", "redis"] as const)("batch routes, store %s", (store) => {
  it("a multi-chunk file comes back byte-exact, then is deleted", async () => {
    const { a } = await setup(store);
    // 2.5 MiB of JSONL-like text with multi-byte characters (under maxLines: long lines): three
    // chunks, the last one short.
    const row = `{"custom_id":"x","note":"añ€😀 ${"z".repeat(4000)}"}\n`;
    const data = Buffer.from(row.repeat(Math.ceil((2.5 * 1024 * 1024) / Buffer.byteLength(row))));
    const file = await a.files.create({ file: await toFile(data, "big.jsonl"), purpose: "batch" });
    expect(file).toMatchObject({
      object: "file",
      bytes: data.length,
      filename: "big.jsonl",
      purpose: "batch",
    });
    expect(file.id).toMatch(/^file-[0-9a-f]{32}$/);
    expect((await a.files.retrieve(file.id)).bytes).toBe(data.length);
    const back = await contentOf(a, file.id);
    expect(back.length).toBe(data.length);
    expect(createHash("sha256").update(back).digest("hex")).toBe(
      createHash("sha256").update(data).digest("hex"),
    );
    expect(await a.files.delete(file.id)).toEqual({ id: file.id, object: "file", deleted: true });
    await expect(a.files.retrieve(file.id)).rejects.toMatchObject({ status: 404, code: "file_not_found" });
    await expect(a.files.content(file.id)).rejects.toMatchObject({ status: 404 });
  });

  it("refuses an upload over maxFileBytes (413) or maxLines (400), and a purpose other than batch", async () => {
    const { a, prefix } = await setup(store);
    const big = Buffer.alloc(3 * 1024 * 1024 + 1, 0x61);
    await expect(
      a.files.create({ file: await toFile(big, "big.jsonl"), purpose: "batch" }),
    ).rejects.toMatchObject({
      status: 413,
      code: "file_too_large",
    });
    const lines = Array.from({ length: 1001 }, (_, i) => line(i));
    await expect(a.files.create({ file: await jsonl(lines), purpose: "batch" })).rejects.toMatchObject({
      status: 400,
      code: "too_many_requests_in_file",
    });
    await expect(
      a.files.create({ file: await jsonl([line(0)]), purpose: "assistants" }),
    ).rejects.toMatchObject({
      status: 400,
      param: "purpose",
    });
    if (store === "redis") {
      // Nothing of the refused uploads is left in the store.
      expect((await redis.cli("--scan", "--pattern", `${prefix}blob:{files:*`)).trim()).toBe("");
    }
    // Exactly at the limits is taken; the connection is fine after the refusals.
    const ok = await a.files.create({ file: await jsonl(lines.slice(0, 1000)), purpose: "batch" });
    expect(ok.bytes).toBe(Buffer.byteLength(lines.slice(0, 1000).join("\n")));
    if (store === "redis") {
      // The same scan finds a stored file's blobs: its metadata and its one chunk.
      const keys = (await redis.cli("--scan", "--pattern", `${prefix}blob:{files:*`)).trim().split("\n");
      expect(keys.sort()).toEqual([
        `${prefix}blob:{files:${ok.id}:0}`,
        `${prefix}blob:{files:${ok.id}:meta}`,
      ]);
    }
  });

  it("a JSON body on POST /v1/files is a clear 400; no key is a 401", async () => {
    const { gw } = await setup(store);
    const json = await fetch(`${gw.url}/v1/files`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY_A}`, "content-type": "application/json" },
      body: "{}",
    });
    expect(json.status).toBe(400);
    expect(((await json.json()) as { error: { message: string } }).error.message).toMatch(
      /multipart\/form-data/,
    );
    const anonymous = await fetch(`${gw.url}/v1/batches`);
    expect(anonymous.status).toBe(401);
  });

  it("checks POST /v1/batches's parameters", async () => {
    const { a } = await setup(store);
    const file = await a.files.create({ file: await jsonl([line(0)]), purpose: "batch" });
    const create = (over: Record<string, unknown>) =>
      a.batches.create({
        input_file_id: file.id,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
        ...over,
      } as OpenAI.BatchCreateParams);
    await expect(create({ endpoint: "/v1/images/generations" })).rejects.toMatchObject({
      status: 400,
      param: "endpoint",
    });
    await expect(create({ completion_window: "48h" })).rejects.toMatchObject({
      status: 400,
      param: "completion_window",
    });
    await expect(create({ input_file_id: "file-00000000000000000000000000000000" })).rejects.toMatchObject({
      status: 404,
      code: "file_not_found",
    });
    await expect(create({ metadata: { k: "x".repeat(513) } })).rejects.toMatchObject({
      status: 400,
      param: "metadata",
    });
    const batch = await create({ metadata: { team: "search" } });
    expect(batch).toMatchObject({ object: "batch", status: "in_progress", metadata: { team: "search" } });
    expect(batch.id).toMatch(/^batch_[0-9a-f]{32}$/);
  });

  it("bad lines go to the error file with their codes and count failed; the good ones run", async () => {
    const { a, ended } = await setup(store);
    const input = [
      line(0),
      "this is not json",
      "",
      JSON.stringify({ method: "POST", url: "/v1/chat/completions", body: { model: "sim-model" } }),
      line(0, { custom_id: "req-0" }),
      line(5, { method: "GET" }),
      line(6, { url: "/v1/embeddings" }),
      line(7, { body: { messages: [] } }),
      line(8, { body: "text" }),
      line(9, { body: { model: "no-such-model", messages: [{ role: "user", content: "x" }] } }),
      line(10),
    ];
    const file = await a.files.create({ file: await jsonl(input), purpose: "batch" });
    const batch = await a.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    });
    // Ten requests (the blank line is none), seven refused at once (the runner may have run
    // some of the others already).
    expect(batch.request_counts?.total).toBe(10);
    expect(batch.request_counts?.failed).toBeGreaterThanOrEqual(7);
    const done = await ended(batch.id);
    expect(done).toMatchObject({
      status: "completed",
      request_counts: { total: 10, completed: 2, failed: 8 },
    });
    const output = await linesOf(a, done.output_file_id);
    expect(output.map((l) => l.custom_id)).toEqual(["req-0", "req-10"]);
    expect(output[0].response.status_code).toBe(200);
    expect(output[0].response.body.object).toBe("chat.completion");
    const errorsFile = await linesOf(a, done.error_file_id);
    expect(errorsFile.map((l) => [l.custom_id, l.error?.code ?? l.response.status_code])).toEqual([
      [null, "invalid_json_line"],
      [null, "missing_required_parameter"],
      ["req-0", "duplicate_custom_id"],
      ["req-5", "invalid_method"],
      ["req-6", "mismatched_endpoint"],
      ["req-7", "missing_required_parameter"],
      ["req-8", "invalid_body"],
      // It ran: the gateway's answer was a 404, and it is the line's answer.
      ["req-9", 404],
    ]);
    expect(errorsFile[7].response.body.error.code).toBe("model_not_found");
    // The generated files' sizes are what their content is.
    const outBytes = (await a.files.retrieve(done.output_file_id ?? "")).bytes;
    expect(outBytes).toBe((await contentOf(a, done.output_file_id ?? "")).length);
  });

  it("another tenant sees none of a tenant's files and batches", async () => {
    const { a, b, ended } = await setup(store);
    const file = await a.files.create({ file: await jsonl([line(0)]), purpose: "batch" });
    const batch = await a.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    });
    const done = await ended(batch.id);
    expect(done.status).toBe("completed");
    const notFound = { status: 404 };
    await expect(b.files.retrieve(file.id)).rejects.toMatchObject(notFound);
    await expect(b.files.content(file.id)).rejects.toMatchObject(notFound);
    await expect(b.files.delete(file.id)).rejects.toMatchObject(notFound);
    await expect(b.files.content(done.output_file_id ?? "")).rejects.toMatchObject(notFound);
    await expect(
      b.batches.create({
        input_file_id: file.id,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
      }),
    ).rejects.toMatchObject(notFound);
    await expect(b.batches.retrieve(batch.id)).rejects.toMatchObject({
      status: 404,
      code: "batch_not_found",
    });
    await expect(b.batches.cancel(batch.id)).rejects.toMatchObject(notFound);
    expect((await b.batches.list()).data).toEqual([]);
    // All still there for their tenant.
    expect((await a.files.retrieve(file.id)).id).toBe(file.id);
    expect((await a.batches.list()).data.map((x) => x.id)).toEqual([batch.id]);
  });

  it("cancel ends the lines not run and stops the running one; the ones that ran are in the output", async () => {
    // One run at a time, and a backend that answers two requests and holds the third: two lines
    // done, one running, two queued when the batch is cancelled. A 3s lease is renewed every
    // second, so the runner learns of the cancel within about a second.
    const { upstream, open } = await heldBackend(2);
    const { a, gw } = await setup(store, { backend: upstream.url, jobs: "concurrency: 1, lease: 3s" });
    const file = await a.files.create({
      file: await jsonl([0, 1, 2, 3, 4].map((i) => line(i))),
      purpose: "batch",
    });
    const batch = await a.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    });
    await eventually(
      async () =>
        upstream.received.length === 3 &&
        (await a.batches.retrieve(batch.id)).request_counts?.completed === 2,
      { what: "two lines done and the third at the backend" },
    );
    const cancelled = await a.batches.cancel(batch.id);
    expect(cancelled.status).toBe("cancelled");
    expect(cancelled.cancelling_at).toEqual(expect.any(Number));
    expect(cancelled.request_counts).toEqual({ total: 5, completed: 2, failed: 0 });
    // The running line's backend request is aborted, and no other line runs.
    await eventually(() => upstream.received[2]?.abortedAt !== undefined, {
      what: "the running line aborted",
    });
    await eventually(() => gw.gateway.jobs.runner.running === 0, { what: "the runner idle" });
    open();
    expect(upstream.received.length).toBe(3);
    expect((await linesOf(a, cancelled.output_file_id)).map((l) => l.custom_id)).toEqual(["req-0", "req-1"]);
    expect((await linesOf(a, cancelled.error_file_id)).map((l) => [l.custom_id, l.error.code])).toEqual([
      ["req-2", "batch_cancelled"],
      ["req-3", "batch_cancelled"],
      ["req-4", "batch_cancelled"],
    ]);
    expect((await a.batches.retrieve(batch.id)).status).toBe("cancelled");
  });

  it("lists newest first with cursor paging, and caps unfinished batches per tenant", async () => {
    // The backend holds every line: the batches stay unfinished until the gate opens.
    const { upstream, open } = await heldBackend(0);
    const { a, b, ended } = await setup(store, { backend: upstream.url, batches: "maxPerTenant: 4" });
    const file = await a.files.create({ file: await jsonl([line(0)]), purpose: "batch" });
    const create = (client: OpenAI) =>
      client.batches.create({
        input_file_id: file.id,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
      });
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await create(a)).id);
    await expect(create(a)).rejects.toMatchObject({ status: 429, code: "too_many_batches" });
    const page = await a.batches.list({ limit: 3 });
    expect(page.data.map((x) => x.id)).toEqual([ids[3], ids[2], ids[1]]);
    expect(page.has_more).toBe(true);
    const seen: string[] = [];
    for await (const x of a.batches.list({ limit: 3 })) seen.push(x.id);
    expect(seen).toEqual([...ids].reverse());
    // One ends: there is room again, for one.
    expect((await a.batches.cancel(ids[0] ?? "")).status).toBe("cancelled");
    ids.push((await create(a)).id);
    await expect(create(a)).rejects.toMatchObject({ status: 429 });
    // The other tenant's file is not its to use, its own list is empty.
    await expect(create(b)).rejects.toMatchObject({ status: 404 });
    expect((await b.batches.list()).data).toEqual([]);
    open();
    for (const id of ids) await ended(id);
    expect((await a.batches.list({ limit: 100 })).data.map((x) => x.status)).toEqual([
      "completed",
      "completed",
      "completed",
      "completed",
      "cancelled",
    ]);
    await expect(a.batches.list({ limit: 101 })).rejects.toMatchObject({ status: 400, param: "limit" });
  });

  it("with jobs off, a batch is refused: nothing would run its lines", async () => {
    const { a } = await setup(store, { jobs: "enabled: false" });
    const file = await a.files.create({ file: await jsonl([line(0)]), purpose: "batch" });
    await expect(
      a.batches.create({
        input_file_id: file.id,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
      }),
    ).rejects.toMatchObject({ status: 400, code: "batches_disabled" });
  });
});

describe("batch routes, two replicas on one Redis", () => {
  it("a file uploaded to one replica is a batch on the other, and either answers its polls and files", async () => {
    const sim = await startSim({
      models: ["sim-model"],
      decodeStepMs: 1,
      decodeMsPerSeq: 0,
      prefillMsPerToken: 0,
    });
    sims.push(sim);
    const prefix = `fleet${Date.now()}:`;
    const start = () =>
      startGateway(`store: { type: redis, url: "${redis.url}", keyPrefix: "${prefix}" }
auth: { keys: [{ key: "${KEY_A}", tenant: a }] }
tenants: { a: {} }
pools: { sims: { models: [sim-model], backends: [{ url: "${sim.url}" }] } }`);
    const one = await start();
    const two = await start();
    gateways.push(one, two);
    const client = (gw: RunningGateway) =>
      new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: KEY_A, maxRetries: 0 });
    const [a1, a2] = [client(one), client(two)];
    const data = Buffer.from(Array.from({ length: 20 }, (_, i) => line(i)).join("\n"));
    const file = await a1.files.create({ file: await toFile(data, "in.jsonl"), purpose: "batch" });
    expect((await contentOf(a2, file.id)).equals(data)).toBe(true);
    const batch = await a2.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    });
    const done = (await eventually(
      async () => {
        const now = await a1.batches.retrieve(batch.id);
        return now.status === "completed" ? now : undefined;
      },
      { timeout: 30_000, what: "the batch to complete" },
    )) as OpenAI.Batch;
    expect(done.request_counts).toEqual({ total: 20, completed: 20, failed: 0 });
    const fromOne = await contentOf(a1, done.output_file_id ?? "");
    const fromTwo = await contentOf(a2, done.output_file_id ?? "");
    expect(fromOne.equals(fromTwo)).toBe(true);
    expect(fromOne.toString().split("\n").filter(Boolean)).toHaveLength(20);
    // Each line ran once, on whichever replica claimed it.
    expect(sim.stats().received).toBe(20);
    expect((await a1.batches.list()).data.map((b) => b.id)).toEqual([batch.id]);
  });
});
