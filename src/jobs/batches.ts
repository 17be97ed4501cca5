/**
 * OpenAI batches on the jobs queue: a batch is a record in the store and one job per valid line
 * of its input file (group = the batch id, seq = the line's index in the file), run by whichever
 * replica's runner claims them, as any deferred request is.
 *
 * The record holds what the lines cannot say: the endpoint, the window, the lines refused at
 * validation (counted failed, their error lines kept as a hidden file in the store) and, once
 * the batch has ended, its end. Everything else is read from the queue when asked: the status
 * and request_counts of a running batch come from the group's counts, and the output and error
 * files are written on read from the group's jobs, in line order (JobQueue.list). Nothing has
 * to run when the last line ends, so no replica owns a batch: the first read that finds every
 * line ended records the batch's end (under the record's lock, once), and a batch past its
 * window is ended `expired` by the first read after it (its unfinished lines cancelled).
 *
 * Creation runs in the POST: the input file is read a chunk at a time and its lines are enqueued
 * in slices as they are checked, so memory holds a slice and the custom_ids seen, never the file.
 * While it runs the batch is `validating` and the validating replica keeps a heartbeat blob
 * fresh; a reader that finds a validating batch without one knows that replica died and ends
 * the batch `failed` (its lines cancelled), so no batch is left validating forever.
 *
 * Per tenant, an index blob lists the tenant's batches (newest last) for GET /v1/batches and for
 * the cap on unfinished batches; it is rewritten under the tenant's lock. The batch line jobs are
 * enqueued with no per-tenant cap: batches.maxPerTenant and batches.maxLines bound them instead.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { errors } from "../errors.js";
import { type Store, StoreUnavailableError } from "../store/types.js";
import { checkLine, inputLines, invalidLine, jobLine, type LineFile, oversizeLine } from "./batch-lines.js";
import { FileGoneError, type FileStore, retrying, type StoredFile } from "./files.js";
import type { GroupCounts, JobQueue, NewJob } from "./types.js";

/** The only completion window OpenAI offers (and the only one its SDK types accept). */
export const COMPLETION_WINDOW = "24h";
const WINDOW_MS = 24 * 3_600_000;
/**
 * Lines enqueued per call, at most so many and so many bytes of bodies: a slice bounds the
 * memory validation holds, and is small enough to be one script on Redis (atomic, and quick
 * within the store's command budget), so a call that timed out is known to have added all of
 * its lines or none.
 */
const ENQUEUE_SLICE = 100;
const ENQUEUE_SLICE_BYTES = 64 * 1024;
const ENQUEUE_ATTEMPTS = 4;
/** A validating replica refreshes its heartbeat this often; it lapses after HEARTBEAT_TTL_MS. */
const HEARTBEAT_MS = 5_000;
const HEARTBEAT_TTL_MS = 30_000;
/** A line may be this much longer than the body it carries (custom_id, method, url). */
const LINE_SLACK_BYTES = 64 * 1024;
const LOCK_TTL_MS = 10_000;
/** Lines read from the queue per page when a file is written out (a page is one store call). */
const LIST_PAGE = 100;
/** The generated files are sent in pieces of about this size. */
const PIECE_BYTES = 64 * 1024;

export type BatchStatus =
  | "validating"
  | "failed"
  | "in_progress"
  | "finalizing"
  | "completed"
  | "expired"
  | "cancelling"
  | "cancelled";

type StoredStatus = "validating" | "in_progress" | "failed" | "completed" | "expired" | "cancelled";
const ENDED: ReadonlySet<StoredStatus> = new Set(["failed", "completed", "expired", "cancelled"]);

export interface BatchError {
  code: string;
  message: string;
  param: string | null;
  line: number | null;
}

/** What the store keeps of a batch. Times are epoch ms. */
export interface BatchRecord {
  id: string;
  tenant: string;
  endpoint: string;
  inputFileId: string;
  metadata: Record<string, string> | null;
  createdAt: number;
  /** The end of the completion window. */
  expiresAt: number;
  /** The record (and the hidden file of refused lines) is dropped then. */
  keepUntil: number;
  status: StoredStatus;
  inProgressAt?: number;
  cancellingAt?: number;
  /** When it ended (completed, failed, expired, cancelled). */
  endedAt?: number;
  /** Non-blank lines of the input file. */
  lines: number;
  /** Lines that became jobs. */
  jobs: number;
  /** Lines refused at validation. */
  invalid: number;
  /** Why the batch failed, when it did. */
  errors?: BatchError[];
  /** The group's counts when it ended: the record says them from then on. */
  final?: { completed: number; failed: number; cancelled: number };
  /** The generated files' sizes, once measured (they cannot change once the batch has ended). */
  sizes?: Partial<Record<LineFile, number>>;
  /** Generated files the tenant deleted. */
  deleted?: LineFile[];
}

/** The OpenAI Batch object. */
export interface BatchObject {
  id: string;
  object: "batch";
  endpoint: string;
  errors: { object: "list"; data: BatchError[] } | null;
  input_file_id: string;
  completion_window: string;
  status: BatchStatus;
  output_file_id: string | null;
  error_file_id: string | null;
  created_at: number;
  in_progress_at: number | null;
  expires_at: number;
  finalizing_at: number | null;
  completed_at: number | null;
  failed_at: number | null;
  expired_at: number | null;
  cancelling_at: number | null;
  cancelled_at: number | null;
  request_counts: { total: number; completed: number; failed: number };
  metadata: Record<string, string> | null;
}

/** The OpenAI File object. */
export interface FileObject {
  id: string;
  object: "file";
  bytes: number;
  created_at: number;
  expires_at: number | null;
  filename: string;
  purpose: string;
  status: "processed";
  status_details: null;
}

export interface CreateBatch {
  inputFileId: string;
  endpoint: string;
  metadata: Record<string, string> | null;
}

export interface BatchLimits {
  maxLines: number;
  maxPerTenant: number;
  /** How long a batch is kept past its window (batches.retention). */
  retentionMs: number;
  /** The largest body a line may carry (server.bodyLimit). */
  maxBodyBytes: number;
}

interface IndexEntry {
  id: string;
  createdAt: number;
  keepUntil: number;
  /** Ended: no longer counts against batches.maxPerTenant. */
  done: boolean;
}

const seconds = (ms: number | undefined): number | null => (ms === undefined ? null : Math.floor(ms / 1000));
const recordKey = (id: string) => `batches:${id}`;
const heartbeatKey = (id: string) => `batches:${id}:validating`;
const indexKey = (tenant: string) => `batches:tenant:${tenant}`;
const hexOf = (batchId: string) => batchId.slice("batch_".length);
/** The error lines of the lines refused at validation: a file no tenant can name. */
const refusedFileId = (batchId: string) => `file-refused-${hexOf(batchId)}`;
/** A line's job id (and its `id` in the output): unguessable, as the batch id is. */
const lineId = (batchId: string, index: number) => `batch_req_${hexOf(batchId)}_${index}`;

/** The output and error files' ids, derived from the batch id: nothing is stored for them. */
export function generatedFileId(batchId: string, file: LineFile): string {
  return `file-${file === "output" ? "out" : "err"}-${hexOf(batchId)}`;
}

/** The batch and file a generated file id names, if it is one. */
export function parseGeneratedFileId(id: string): { batchId: string; file: LineFile } | undefined {
  const match = /^file-(out|err)-([0-9a-f]{32})$/.exec(id);
  if (!match) return undefined;
  return { batchId: `batch_${match[2]}`, file: match[1] === "out" ? "output" : "error" };
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class Batches {
  constructor(
    private readonly store: Store,
    private readonly files: FileStore,
    /** The jobs queue, made on first use (src/app.ts). */
    private readonly queueOf: () => JobQueue,
    private readonly now: () => number = Date.now,
  ) {}

  private get queue(): JobQueue {
    return this.queueOf();
  }

  /** Checks the input file and enqueues its lines; answers the batch as it then is. */
  async create(tenant: string, input: CreateBatch, limits: BatchLimits): Promise<BatchObject> {
    const file = await this.files.get(input.inputFileId);
    if (file === undefined || file.tenant !== tenant || file.purpose !== "batch") {
      throw errors.fileNotFound(input.inputFileId);
    }
    if (file.lines > limits.maxLines) throw errors.tooManyLines(limits.maxLines);
    if (file.lines === 0) {
      throw errors.invalidRequest(`The file ${file.id} holds no requests.`, "input_file_id");
    }
    const now = this.now();
    const id = `batch_${randomBytes(16).toString("hex")}`;
    const record: BatchRecord = {
      id,
      tenant,
      endpoint: input.endpoint,
      inputFileId: file.id,
      metadata: input.metadata,
      createdAt: now,
      expiresAt: now + WINDOW_MS,
      keepUntil: now + WINDOW_MS + limits.retentionMs,
      status: "validating",
      lines: file.lines,
      jobs: 0,
      invalid: 0,
    };
    await this.beat(id);
    await this.save(record);
    try {
      await this.addToIndex(record, limits.maxPerTenant);
    } catch (err) {
      await this.store.deleteBlob(recordKey(id)).catch(() => undefined);
      await this.store.deleteBlob(heartbeatKey(id)).catch(() => undefined);
      throw err;
    }
    await this.validate(record, file, limits);
    return this.retrieve(tenant, id);
  }

  async retrieve(tenant: string, id: string): Promise<BatchObject> {
    const record = await this.load(id);
    if (record === undefined || record.tenant !== tenant) throw errors.batchNotFound(id);
    return this.refresh(record);
  }

  /**
   * Cancels the batch's unfinished lines (a running one is aborted by its runner at its next
   * lease renewal). An ended batch is answered as it is: there is nothing left to cancel.
   */
  async cancel(tenant: string, id: string): Promise<BatchObject> {
    const record = await this.load(id);
    if (record === undefined || record.tenant !== tenant) throw errors.batchNotFound(id);
    if (ENDED.has(record.status)) return this.refresh(record);
    const marked = await this.update(id, (r) =>
      ENDED.has(r.status) || r.cancellingAt !== undefined ? r : { ...r, cancellingAt: this.now() },
    );
    await retrying(() => this.queue.cancelGroup(id, this.keepFor(record)));
    return this.refresh(marked ?? record);
  }

  /** The tenant's batches, newest first, `limit` after the batch `after` (OpenAI's cursor). */
  async list(
    tenant: string,
    after: string | undefined,
    limit: number,
  ): Promise<{
    object: "list";
    data: BatchObject[];
    first_id: string | null;
    last_id: string | null;
    has_more: boolean;
  }> {
    const now = this.now();
    const entries = (await this.loadIndex(tenant)).filter((e) => e.keepUntil > now).reverse();
    let start = 0;
    if (after !== undefined) {
      const at = entries.findIndex((e) => e.id === after);
      // An unknown cursor (expired, or another tenant's) is the end of the list, not an error.
      start = at === -1 ? entries.length : at + 1;
    }
    const data: BatchObject[] = [];
    let next = start;
    for (; next < entries.length && data.length < limit; next++) {
      const entry = entries[next] as IndexEntry;
      const record = await this.load(entry.id);
      if (record !== undefined && record.tenant === tenant) data.push(await this.refresh(record));
    }
    return {
      object: "list",
      data,
      first_id: data[0]?.id ?? null,
      last_id: data.at(-1)?.id ?? null,
      has_more: next < entries.length,
    };
  }

  /**
   * The output or error file of an ended batch of the tenant's (undefined when `id` is not a
   * generated file's id). Not found while the batch runs, when the batch has no such lines, or
   * once the tenant deleted it.
   */
  async generatedFile(
    tenant: string,
    id: string,
    { measure }: { measure: boolean },
  ): Promise<
    { object: FileObject; bytes: number | undefined; content: () => AsyncGenerator<Buffer> } | undefined
  > {
    const named = parseGeneratedFileId(id);
    if (named === undefined) return undefined;
    let record = await this.load(named.batchId);
    if (record === undefined || record.tenant !== tenant) throw errors.fileNotFound(id);
    const batch = await this.refresh(record);
    const advertised = named.file === "output" ? batch.output_file_id : batch.error_file_id;
    record = (await this.load(named.batchId)) ?? record;
    if (advertised !== id || record.deleted?.includes(named.file)) throw errors.fileNotFound(id);
    // The lines' answers are kept jobs.ttl after each ended: once some are gone, the file is.
    if ((await retrying(() => this.queue.counts(record.id))).total < record.jobs)
      throw errors.fileNotFound(id);
    const ended = record;
    const content = () => this.linesOf(ended, named.file);
    // Its size is known once the file was read through once (File objects say it).
    let bytes = ended.sizes?.[named.file];
    if (bytes === undefined && measure) {
      let measured = 0;
      for await (const piece of content()) measured += piece.length;
      bytes = measured;
      await this.update(ended.id, (r) => ({ ...r, sizes: { ...r.sizes, [named.file]: measured } }));
    }
    return {
      bytes,
      object: {
        id,
        object: "file",
        bytes: bytes ?? 0,
        created_at: seconds(ended.endedAt ?? ended.createdAt) ?? 0,
        expires_at: seconds(ended.keepUntil),
        filename: `${ended.id}_${named.file}.jsonl`,
        purpose: "batch_output",
        status: "processed",
        status_details: null,
      },
      content,
    };
  }

  /** Deletes a generated file (it answers not found from then on); false when `id` is not one. */
  async deleteGenerated(tenant: string, id: string): Promise<boolean> {
    const generated = await this.generatedFile(tenant, id, { measure: false });
    if (generated === undefined) return false;
    const named = parseGeneratedFileId(id);
    if (named === undefined) return false;
    await this.update(named.batchId, (r) => ({ ...r, deleted: [...(r.deleted ?? []), named.file] }));
    return true;
  }

  // --- creation ---

  /** Enqueues the valid lines, writes the refused ones' error lines, and marks the batch running. */
  private async validate(record: BatchRecord, file: StoredFile, limits: BatchLimits): Promise<void> {
    const { id, tenant, endpoint } = record;
    const rules = { endpoint, maxBodyBytes: limits.maxBodyBytes };
    const seen = new Set<string>();
    const refused = this.files.writer({
      id: refusedFileId(id),
      tenant,
      filename: `${id}_refused.jsonl`,
      purpose: "batch_refused",
      ttlMs: this.keepFor(record),
    });
    let pending: NewJob[] = [];
    let pendingBytes = 0;
    let jobs = 0;
    let invalid = 0;
    const flush = async () => {
      if (pending.length === 0) return;
      const slice = pending;
      pending = [];
      pendingBytes = 0;
      await this.enqueueSlice(slice);
      jobs += slice.length;
    };
    const heartbeat = setInterval(() => void this.beat(id).catch(() => undefined), HEARTBEAT_MS);
    try {
      for await (const line of inputLines(this.files.content(file), limits.maxBodyBytes + LINE_SLACK_BYTES)) {
        const checked =
          line.text === undefined ? oversizeLine(limits.maxBodyBytes) : checkLine(line.text, rules, seen);
        if (checked.ok) {
          pending.push({
            id: lineId(id, line.index),
            tenant,
            request: { url: endpoint, body: checked.body },
            group: id,
            seq: line.index,
            customId: checked.customId,
            expiresAt: record.expiresAt,
          });
          pendingBytes += checked.body.length;
          if (pending.length >= ENQUEUE_SLICE || pendingBytes >= ENQUEUE_SLICE_BYTES) await flush();
        } else {
          invalid++;
          await refused.write(
            Buffer.from(invalidLine(lineId(id, line.index), checked.customId, checked.problem)),
          );
        }
      }
      await flush();
      if (invalid > 0) await refused.end();
      else await refused.abort();
    } catch (err) {
      clearInterval(heartbeat);
      await refused.abort();
      await this.fail(record, {
        code: "validation_failed",
        message: `The batch could not be created: ${err instanceof Error ? err.message : String(err)}.`,
        param: null,
        line: null,
      });
      // The store failing is the client's to retry; anything else is said by the failed batch.
      if (err instanceof StoreUnavailableError) throw err;
      return;
    } finally {
      clearInterval(heartbeat);
    }
    const running = await this.update(id, (r) => ({
      ...r,
      status: "in_progress",
      inProgressAt: this.now(),
      jobs,
      invalid,
    }));
    // Cancelled while it was being created: the lines enqueued after the cancel go too.
    if (running?.cancellingAt !== undefined)
      await retrying(() => this.queue.cancelGroup(id, this.keepFor(record)));
    await this.store.deleteBlob(heartbeatKey(id)).catch(() => undefined);
  }

  /**
   * Enqueues one slice, again after a store timeout: the slice is one script, so the timed-out
   * call added all of it or nothing, and a retry refused for an existing id (the ids are the
   * lines', fixed) finds the first call's lines there.
   */
  private async enqueueSlice(slice: NewJob[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        // Batch lines are bounded by the batch limits, not by the tenant's cap on unfinished jobs.
        const { accepted } = await this.queue.enqueue(slice, Number.MAX_SAFE_INTEGER);
        if (!accepted) throw new Error("the jobs queue refused the batch's lines");
        return;
      } catch (err) {
        if (attempt > 1 && err instanceof RangeError && /exists/.test(err.message)) return;
        if (!(err instanceof StoreUnavailableError) || attempt >= ENQUEUE_ATTEMPTS) throw err;
        await sleep(50 * attempt);
      }
    }
  }

  /** Ends the batch `failed` and cancels what it enqueued (best effort: the store may be why). */
  private async fail(record: BatchRecord, error: BatchError): Promise<void> {
    await retrying(() => this.queue.cancelGroup(record.id, this.keepFor(record))).catch(() => undefined);
    await this.end(record.id, (r) => ({
      ...r,
      status: "failed",
      endedAt: this.now(),
      errors: [error],
    })).catch(() => undefined);
  }

  private beat(id: string): Promise<void> {
    return this.store.setBlob(heartbeatKey(id), Buffer.from("1"), HEARTBEAT_TTL_MS);
  }

  // --- reading a batch ---

  /** The batch as it is now; records its end the first time a read finds it ended. */
  private async refresh(record: BatchRecord): Promise<BatchObject> {
    if (ENDED.has(record.status))
      return view(record, record.final ?? { completed: 0, failed: 0, cancelled: 0 });
    if (record.status === "validating") {
      if ((await this.store.getBlob(heartbeatKey(record.id))) === undefined) {
        // Read again: the creator may have finished between the two reads.
        const again = (await this.load(record.id)) ?? record;
        if (again.status === "validating") {
          await this.fail(again, {
            code: "validation_interrupted",
            message: "The gateway replica creating this batch stopped before it was done: create it again.",
            param: null,
            line: null,
          });
          return this.refresh((await this.load(record.id)) ?? record);
        }
        return this.refresh(again);
      }
      return view(record, await retrying(() => this.queue.counts(record.id)));
    }
    let counts = await retrying(() => this.queue.counts(record.id));
    const ended = counts.completed + counts.failed + counts.cancelled;
    if (ended < record.jobs) {
      if (this.now() < record.expiresAt) return view(record, counts);
      // Past the window: what has not run will not.
      await retrying(() => this.queue.cancelGroup(record.id, this.keepFor(record)));
      counts = await retrying(() => this.queue.counts(record.id));
      return this.endWith(record, "expired", counts, this.now());
    }
    if (record.cancellingAt !== undefined) {
      return this.endWith(record, "cancelled", counts, counts.lastFinishedAt ?? this.now());
    }
    if (
      this.now() >= record.expiresAt &&
      (counts.cancelled > 0 || (counts.failed > 0 && (await this.anyExpired(record.id))))
    ) {
      return this.endWith(record, "expired", counts, counts.lastFinishedAt ?? this.now());
    }
    return this.endWith(
      record,
      "completed",
      counts,
      counts.lastFinishedAt ?? record.inProgressAt ?? this.now(),
    );
  }

  private async endWith(
    record: BatchRecord,
    status: "completed" | "expired" | "cancelled",
    counts: GroupCounts,
    at: number,
  ): Promise<BatchObject> {
    const final = { completed: counts.completed, failed: counts.failed, cancelled: counts.cancelled };
    // A cancel that came after `record` was read still makes the batch cancelled.
    const end = (r: BatchRecord): StoredStatus =>
      status === "completed" && r.cancellingAt !== undefined ? "cancelled" : status;
    const ended = await this.end(record.id, (r) => ({ ...r, status: end(r), endedAt: at, final }));
    return view(ended ?? { ...record, status: end(record), endedAt: at, final }, final);
  }

  /** Writes the batch's end once (a second reader finds it ended and keeps that end). */
  private async end(id: string, change: (r: BatchRecord) => BatchRecord): Promise<BatchRecord | undefined> {
    let changed = false;
    const record = await this.update(id, (r) => {
      if (ENDED.has(r.status)) return r;
      changed = true;
      return change(r);
    });
    if (changed && record !== undefined) await this.markDone(record);
    return record;
  }

  private async anyExpired(id: string): Promise<boolean> {
    for (let from = 0; ; ) {
      const page = await retrying(() => this.queue.list(id, from, LIST_PAGE));
      if (page.some((job) => job.state === "expired")) return true;
      const last = page.at(-1);
      if (page.length < LIST_PAGE || last?.seq === undefined) return false;
      from = last.seq + 1;
    }
  }

  /** A generated file's lines, in pieces: the refused lines first (error file), then the jobs'. */
  private async *linesOf(record: BatchRecord, file: LineFile): AsyncGenerator<Buffer> {
    if (file === "error" && record.invalid > 0) {
      const refused = await this.files.get(refusedFileId(record.id));
      if (refused === undefined) throw errors.fileNotFound(generatedFileId(record.id, file));
      yield* this.files.content(refused);
    }
    const expired = record.status === "expired";
    let piece = "";
    let listed = 0;
    for (let from = 0; ; ) {
      const page = await retrying(() => this.queue.list(record.id, from, LIST_PAGE));
      listed += page.length;
      for (const job of page) {
        const out = jobLine(job, expired);
        if (out?.file !== file) continue;
        piece += out.line;
        if (piece.length >= PIECE_BYTES) {
          yield Buffer.from(piece);
          piece = "";
        }
      }
      const last = page.at(-1);
      if (page.length < LIST_PAGE || last?.seq === undefined) break;
      from = last.seq + 1;
    }
    // Some answers expired while the file was read (jobs.ttl): a short file must not pass for
    // a whole one, so the response breaks off instead of ending.
    if (listed < record.jobs) throw new FileGoneError(generatedFileId(record.id, file));
    if (piece.length > 0) yield Buffer.from(piece);
  }

  // --- the store ---

  private keepFor(record: BatchRecord): number {
    return Math.max(1, record.keepUntil - this.now());
  }

  private async load(id: string): Promise<BatchRecord | undefined> {
    if (!/^batch_[0-9a-f]{32}$/.test(id)) return undefined;
    const raw = await this.store.getBlob(recordKey(id));
    return raw === undefined ? undefined : (JSON.parse(raw.toString("utf8")) as BatchRecord);
  }

  private save(record: BatchRecord): Promise<void> {
    return this.store.setBlob(
      recordKey(record.id),
      Buffer.from(JSON.stringify(record)),
      this.keepFor(record),
    );
  }

  /** Read, change and write the record under its lock; undefined when it is gone. */
  private update(id: string, change: (r: BatchRecord) => BatchRecord): Promise<BatchRecord | undefined> {
    return this.locked(recordKey(id), async () => {
      const record = await this.load(id);
      if (record === undefined) return undefined;
      const next = change(record);
      if (next !== record) await this.save(next);
      return next;
    });
  }

  private async locked<T>(key: string, work: () => Promise<T>): Promise<T> {
    const owner = randomUUID();
    // Held for one read and one write: a holder that died frees it after LOCK_TTL_MS.
    for (let attempt = 0; !(await this.store.acquireLock(key, owner, LOCK_TTL_MS)); attempt++) {
      if (attempt >= 200) throw errors.storageUnavailable();
      await sleep(10);
    }
    try {
      return await work();
    } finally {
      await this.store.releaseLock(key, owner).catch(() => undefined);
    }
  }

  private async loadIndex(tenant: string): Promise<IndexEntry[]> {
    const raw = await this.store.getBlob(indexKey(tenant));
    return raw === undefined ? [] : (JSON.parse(raw.toString("utf8")) as IndexEntry[]);
  }

  private async saveIndex(tenant: string, entries: IndexEntry[]): Promise<void> {
    const keepUntil = Math.max(0, ...entries.map((e) => e.keepUntil));
    if (entries.length === 0) return this.store.deleteBlob(indexKey(tenant));
    await this.store.setBlob(
      indexKey(tenant),
      Buffer.from(JSON.stringify(entries)),
      Math.max(1, keepUntil - this.now()),
    );
  }

  /** Adds the batch to its tenant's index, unless the tenant has maxPerTenant unfinished ones. */
  private addToIndex(record: BatchRecord, maxPerTenant: number): Promise<void> {
    return this.locked(indexKey(record.tenant), async () => {
      const now = this.now();
      const entries = (await this.loadIndex(record.tenant)).filter((e) => e.keepUntil > now);
      let unfinished = 0;
      for (const entry of entries) {
        if (entry.done) continue;
        const other = await this.load(entry.id);
        // Read to the end of the batch, not trusting the flag alone: a batch that ended unread
        // (its last line done, or its window passed) must not hold a place.
        const status = other === undefined ? undefined : (await this.refresh(other)).status;
        if (status === undefined || ENDED.has(status as StoredStatus)) entry.done = true;
        else unfinished++;
      }
      if (unfinished >= maxPerTenant) throw errors.tooManyBatches(maxPerTenant);
      entries.push({ id: record.id, createdAt: record.createdAt, keepUntil: record.keepUntil, done: false });
      await this.saveIndex(record.tenant, entries);
    });
  }

  /**
   * Marks the batch ended in its tenant's index, if the index is free now: the flag only spares
   * addToIndex a read, which checks every batch not marked anyway (and holds the lock while it
   * ends some itself).
   */
  private async markDone(record: BatchRecord): Promise<void> {
    const key = indexKey(record.tenant);
    const owner = randomUUID();
    if (!(await this.store.acquireLock(key, owner, LOCK_TTL_MS))) return;
    try {
      const entries = await this.loadIndex(record.tenant);
      const entry = entries.find((e) => e.id === record.id);
      if (entry === undefined || entry.done) return;
      entry.done = true;
      await this.saveIndex(record.tenant, entries);
    } finally {
      await this.store.releaseLock(key, owner).catch(() => undefined);
    }
  }
}

/** The OpenAI Batch object of a record and its group's counts. */
function view(
  record: BatchRecord,
  counts: { completed: number; failed: number; cancelled: number },
): BatchObject {
  const cancelling = record.status === "in_progress" && record.cancellingAt !== undefined;
  const status: BatchStatus = cancelling ? "cancelling" : record.status;
  const ended = ENDED.has(record.status);
  const at = (s: StoredStatus) => (record.status === s ? seconds(record.endedAt) : null);
  // Lines cancelled at the end of the window expired with it; a cancelled batch's never ran.
  const expiredLines = record.status === "expired" ? counts.cancelled : 0;
  const errorLines = counts.failed + record.invalid + counts.cancelled;
  const delivers = ended && record.status !== "failed";
  return {
    id: record.id,
    object: "batch",
    endpoint: record.endpoint,
    errors: record.errors ? { object: "list", data: record.errors } : null,
    input_file_id: record.inputFileId,
    completion_window: COMPLETION_WINDOW,
    status,
    output_file_id: delivers && counts.completed > 0 ? generatedFileId(record.id, "output") : null,
    error_file_id: delivers && errorLines > 0 ? generatedFileId(record.id, "error") : null,
    created_at: seconds(record.createdAt) ?? 0,
    in_progress_at: seconds(record.inProgressAt),
    expires_at: seconds(record.expiresAt) ?? 0,
    // The files are written on read: a batch is never seen finalizing, and ends as it finalizes.
    finalizing_at: at("completed"),
    completed_at: at("completed"),
    failed_at: at("failed"),
    expired_at: at("expired"),
    cancelling_at: seconds(record.cancellingAt),
    cancelled_at: at("cancelled"),
    request_counts: {
      total: record.lines,
      completed: counts.completed,
      failed: counts.failed + record.invalid + expiredLines,
    },
    metadata: record.metadata,
  };
}
