/**
 * Batches over the jobs queue (src/jobs/batches.ts), on a real MemoryStore and MemoryJobQueue
 * with one clock the test moves: the completion window, a creator that died, cancel and the
 * cap, read as the routes read them.
 */
import { describe, expect, it } from "vitest";
import { Batches } from "../../../src/jobs/batches.js";
import { FileStore, newFileId } from "../../../src/jobs/files.js";
import { MemoryJobQueue } from "../../../src/jobs/memory-queue.js";
import { MemoryStore } from "../../../src/store/index.js";

const HOUR = 3_600_000;
const limits = { maxLines: 100, maxPerTenant: 3, retentionMs: HOUR, maxBodyBytes: 10_000 };

function setup() {
  const clock = { now: 1_800_000_000_000 };
  const now = () => clock.now;
  // The store's clock is monotonic and relative: moved with the test's.
  const store = new MemoryStore({ sweepIntervalMs: 0, now });
  const queue = new MemoryJobQueue({ now });
  const files = new FileStore(store, 256, now);
  const batches = new Batches(store, files, () => queue, now);
  async function upload(tenant: string, lines: string[]) {
    const body = Buffer.from(lines.join("\n"));
    return files.upload(
      { id: newFileId(), tenant, filename: "in.jsonl", purpose: "batch", ttlMs: 24 * HOUR },
      (async function* () {
        yield body;
      })(),
    );
  }
  async function create(tenant: string, n: number, extra: string[] = []) {
    const file = await upload(tenant, [...lines(n), ...extra]);
    return batches.create(
      tenant,
      { inputFileId: file.id, endpoint: "/v1/embeddings", metadata: null },
      limits,
    );
  }
  /**
   * Runs up to `max` due lines, answering each `status`; their answers are kept `ttl` (past
   * the window by default, as a batch line's answer must be to outlive its batch's end).
   */
  async function run(max: number, status = 200, ttl = 48 * HOUR) {
    const claimed = await queue.claim("runner", 30_000, max);
    for (const job of claimed) {
      await queue.finish(
        job.id,
        "runner",
        status < 300 ? "succeeded" : "failed",
        {
          status,
          headers: { "x-request-id": `req-${job.seq}` },
          body: JSON.stringify({ object: "list", seq: job.seq }),
        },
        ttl,
      );
    }
    return claimed.length;
  }
  async function text(tenant: string, id: string | null) {
    const generated = await batches.generatedFile(tenant, id ?? "", { measure: false });
    if (!generated) throw new Error(`${id} is not a generated file`);
    const out: Buffer[] = [];
    for await (const piece of generated.content()) out.push(piece);
    return Buffer.concat(out)
      .toString("utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  }
  return { clock, store, queue, files, batches, upload, create, run, text };
}

const lines = (n: number) =>
  Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `c${i}`,
      method: "POST",
      url: "/v1/embeddings",
      body: { model: "m", input: `x${i}` },
    }),
  );

describe("Batches", () => {
  it("runs to completed, with the counts of its lines and both files", async () => {
    const t = setup();
    const batch = await t.create("a", 5, ["garbage"]);
    expect(batch).toMatchObject({
      status: "in_progress",
      request_counts: { total: 6, completed: 0, failed: 1 },
    });
    expect(await t.run(3)).toBe(3);
    expect((await t.batches.retrieve("a", batch.id)).request_counts).toEqual({
      total: 6,
      completed: 3,
      failed: 1,
    });
    await t.run(10, 500);
    const done = await t.batches.retrieve("a", batch.id);
    expect(done).toMatchObject({
      status: "completed",
      request_counts: { total: 6, completed: 3, failed: 3 },
    });
    expect(done.completed_at).toBe(Math.floor(t.clock.now / 1000));
    const output = await t.text("a", done.output_file_id);
    expect(output.map((l) => l.custom_id)).toEqual(["c0", "c1", "c2"]);
    const errorsFile = await t.text("a", done.error_file_id);
    expect(errorsFile.map((l) => l.custom_id)).toEqual([null, "c3", "c4"]);
    expect(errorsFile[0].error.code).toBe("invalid_json_line");
    expect(errorsFile[1].response.status_code).toBe(500);
  });

  it("past its window, unfinished lines end expired and go to the error file as batch_expired", async () => {
    const t = setup();
    const batch = await t.create("a", 4);
    await t.run(1);
    t.clock.now += 24 * HOUR;
    const expired = await t.batches.retrieve("a", batch.id);
    expect(expired).toMatchObject({
      status: "expired",
      request_counts: { total: 4, completed: 1, failed: 3 },
    });
    expect(expired.expired_at).toBe(Math.floor(t.clock.now / 1000));
    expect((await t.text("a", expired.error_file_id)).map((l) => [l.custom_id, l.error.code])).toEqual([
      ["c1", "batch_expired"],
      ["c2", "batch_expired"],
      ["c3", "batch_expired"],
    ]);
    expect((await t.text("a", expired.output_file_id)).length).toBe(1);
    // Nothing of it is handed out any more.
    expect(await t.run(10)).toBe(0);
  });

  it("a batch whose creator stopped while validating ends failed at the next read", async () => {
    const t = setup();
    const batch = await t.create("a", 2);
    // As the record is while a replica validates, with that replica's heartbeat gone.
    const key = `batches:${batch.id}`;
    const record = JSON.parse((await t.store.getBlob(key))?.toString() ?? "{}");
    await t.store.setBlob(key, Buffer.from(JSON.stringify({ ...record, status: "validating" })), HOUR);
    const failed = await t.batches.retrieve("a", batch.id);
    expect(failed.status).toBe("failed");
    expect(failed.errors?.data[0]?.code).toBe("validation_interrupted");
    expect(await t.run(10)).toBe(0);
  });

  it("a validating batch with its heartbeat fresh stays validating", async () => {
    const t = setup();
    const batch = await t.create("a", 2);
    const key = `batches:${batch.id}`;
    const record = JSON.parse((await t.store.getBlob(key))?.toString() ?? "{}");
    await t.store.setBlob(key, Buffer.from(JSON.stringify({ ...record, status: "validating" })), HOUR);
    await t.store.setBlob(`${key}:validating`, Buffer.from("1"), 30_000);
    expect((await t.batches.retrieve("a", batch.id)).status).toBe("validating");
  });

  it("cancel ends the unfinished lines; what ran stays in the output", async () => {
    const t = setup();
    const batch = await t.create("a", 5);
    await t.run(2);
    const cancelled = await t.batches.cancel("a", batch.id);
    expect(cancelled).toMatchObject({
      status: "cancelled",
      request_counts: { total: 5, completed: 2, failed: 0 },
    });
    expect(cancelled.cancelling_at).not.toBeNull();
    expect((await t.text("a", cancelled.output_file_id)).length).toBe(2);
    expect((await t.text("a", cancelled.error_file_id)).map((l) => l.error.code)).toEqual([
      "batch_cancelled",
      "batch_cancelled",
      "batch_cancelled",
    ]);
    // Cancelling again, or an ended batch, answers it as it is.
    expect((await t.batches.cancel("a", batch.id)).status).toBe("cancelled");
  });

  it("a tenant has at most maxPerTenant unfinished batches; an ended one frees its place", async () => {
    const t = setup();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await t.create("a", 1)).id);
    await expect(t.create("a", 1)).rejects.toMatchObject({ statusCode: 429, code: "too_many_batches" });
    // Another tenant has its own.
    await t.create("b", 1);
    // One of a's ends, unread: its place is free all the same.
    await t.run(10);
    expect((await t.create("a", 1)).status).toBe("in_progress");
  });

  it("another tenant's batch and generated files are not found", async () => {
    const t = setup();
    const batch = await t.create("a", 1);
    await t.run(1);
    const done = await t.batches.retrieve("a", batch.id);
    await expect(t.batches.retrieve("b", batch.id)).rejects.toMatchObject({ statusCode: 404 });
    await expect(t.batches.cancel("b", batch.id)).rejects.toMatchObject({ statusCode: 404 });
    await expect(
      t.batches.generatedFile("b", done.output_file_id ?? "", { measure: true }),
    ).rejects.toMatchObject({
      statusCode: 404,
    });
    expect((await t.batches.list("b", undefined, 10)).data).toEqual([]);
  });

  it("lists newest first, paged by after", async () => {
    const t = setup();
    const big = { ...limits, maxPerTenant: 10 };
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const file = await t.upload("a", lines(1));
      ids.push(
        (
          await t.batches.create(
            "a",
            { inputFileId: file.id, endpoint: "/v1/embeddings", metadata: { i: `${i}` } },
            big,
          )
        ).id,
      );
      t.clock.now += 1000;
    }
    const first = await t.batches.list("a", undefined, 2);
    expect(first.data.map((b) => b.id)).toEqual([ids[4], ids[3]]);
    expect(first).toMatchObject({ has_more: true, first_id: ids[4], last_id: ids[3] });
    const second = await t.batches.list("a", first.last_id ?? "", 2);
    expect(second.data.map((b) => b.id)).toEqual([ids[2], ids[1]]);
    const last = await t.batches.list("a", second.last_id ?? "", 2);
    expect(last.data.map((b) => b.id)).toEqual([ids[0]]);
    expect(last.has_more).toBe(false);
    expect(last.data[0]?.metadata).toEqual({ i: "0" });
  });

  it("a generated file whose answers expired is not found rather than short", async () => {
    const t = setup();
    const batch = await t.create("a", 2);
    await t.run(2, 200, HOUR);
    const done = await t.batches.retrieve("a", batch.id);
    t.clock.now += HOUR + 1; // the answers' ttl (the runner's) passed; the batch is kept longer
    await expect(
      t.batches.generatedFile("a", done.output_file_id ?? "", { measure: true }),
    ).rejects.toMatchObject({
      statusCode: 404,
    });
    expect((await t.batches.retrieve("a", batch.id)).status).toBe("completed");
  });
});
