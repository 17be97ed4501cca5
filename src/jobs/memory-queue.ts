/**
 * The jobs queue in process memory: one replica (the embedded default, `store: memory`); the
 * jobs are lost on restart.
 *
 * Same semantics as RedisJobQueue, step for step, so that one contract suite holds both:
 * - Indexes are sorted sets ordered as Redis orders them (sorted-set.ts): `ready` (queued jobs
 *   by runAt), `leased` (running jobs by lease expiry), `deadlines` (unfinished jobs by
 *   expiresAt), `purges` (ended jobs by when their record goes), per group its lines by seq.
 * - A lapsed lease is still its holder's (renew and finish work) until a claim hands the job to
 *   someone: the claim takes due queued jobs and lapsed running ones together, in runAt order.
 * - Every call first sweeps: records whose ttl ran out go (a group's counts go ttl after its
 *   last job ended, once none is unfinished), then unfinished jobs past expiresAt end
 *   `expired` (kept for `expiredTtlMs`). So no call ever answers a job as unfinished past its
 *   expiresAt, and a holder learns of the expiry at its next renew, as it learns of a cancel.
 * - A job ends once (`end`): the tenant's unfinished count and its group's counts change there
 *   and only there.
 * Records are copied in and out: a caller never holds the queue's own objects.
 */
import { checkCount, checkMs, checkNewJobs, countKey } from "./checks.js";
import { SortedSet } from "./sorted-set.js";
import type { GroupCounts, JobQueue, JobRecord, JobResult, JobState, NewJob } from "./types.js";

export interface MemoryJobQueueOptions {
  /** Epoch ms clock (times in records are epoch ms); tests inject a fake one. Default Date.now. */
  now?: () => number;
  /** How long the record of a job that ended `expired` is kept, ms; default 24 h. */
  expiredTtlMs?: number;
}

interface Entry {
  record: JobRecord;
  /** The lease holder while running. */
  owner: string | undefined;
}

interface Group {
  lines: SortedSet;
  counts: GroupCounts;
}

const DAY_MS = 86_400_000;
const UNFINISHED: ReadonlySet<JobState> = new Set(["queued", "running"]);

export class MemoryJobQueue implements JobQueue {
  private readonly now: () => number;
  private readonly expiredTtlMs: number;
  private readonly jobs = new Map<string, Entry>();
  private readonly ready = new SortedSet();
  private readonly leased = new SortedSet();
  private readonly deadlines = new SortedSet();
  private readonly purges = new SortedSet();
  private readonly groups = new Map<string, Group>();
  /** Groups whose jobs have all ended, by when their counts go. */
  private readonly groupPurges = new SortedSet();
  /** tenant (or its batch lines, counted apart: countKey) → jobs queued or running. */
  private readonly unfinished = new Map<string, number>();

  constructor(options: MemoryJobQueueOptions = {}) {
    this.now = options.now ?? Date.now;
    this.expiredTtlMs = options.expiredTtlMs ?? DAY_MS;
    checkMs("expiredTtlMs", this.expiredTtlMs);
  }

  async enqueue(jobs: readonly NewJob[], cap: number): Promise<{ accepted: boolean; unfinished: number }> {
    const tenant = checkNewJobs(jobs, cap);
    const now = this.sweep();
    for (const job of jobs) {
      if (this.jobs.has(job.id)) throw new RangeError(`enqueue: job id ${job.id} exists`);
    }
    const count = countKey(tenant, jobs[0]?.group);
    const before = this.unfinished.get(count) ?? 0;
    if (jobs.length === 0) return { accepted: true, unfinished: before };
    if (before + jobs.length > cap) return { accepted: false, unfinished: before };
    const ready: [string, number][] = [];
    for (const job of jobs) {
      const group = job.group === undefined ? undefined : this.groupOf(job.group);
      const record: JobRecord = {
        id: job.id,
        tenant,
        request: { url: job.request.url, body: job.request.body },
        group: job.group,
        // A line without a number goes after the group's others.
        seq: group === undefined ? undefined : (job.seq ?? group.counts.total),
        customId: job.customId,
        runAt: job.runAt ?? now,
        expiresAt: job.expiresAt,
        state: "queued",
        createdAt: now,
        startedAt: undefined,
        finishedAt: undefined,
        attempts: 0,
        result: undefined,
      };
      this.jobs.set(job.id, { record, owner: undefined });
      ready.push([job.id, record.runAt]);
      if (record.expiresAt !== undefined) this.deadlines.add(job.id, record.expiresAt);
      if (group !== undefined && job.group !== undefined) {
        group.lines.add(job.id, record.seq ?? 0);
        group.counts.total++;
        this.groupPurges.delete(job.group);
      }
    }
    this.ready.addAll(ready);
    this.unfinished.set(count, before + jobs.length);
    return { accepted: true, unfinished: before + jobs.length };
  }

  async get(id: string): Promise<JobRecord | undefined> {
    this.sweep();
    const entry = this.jobs.get(id);
    return entry === undefined ? undefined : copy(entry.record);
  }

  async claim(owner: string, leaseMs: number, max: number): Promise<JobRecord[]> {
    checkMs("claim: leaseMs", leaseMs);
    checkCount("claim: max", max);
    const now = this.sweep();
    if (max === 0) return [];
    // Lapsed leases are ordered by expiry, not runAt: all of them are candidates (few: at most
    // the runs of replicas that died); the queued ones are in runAt order already.
    const due = [...this.ready.range(-Infinity, now, max), ...this.leased.range(-Infinity, now)]
      .map((id) => this.jobs.get(id) as Entry)
      .sort((a, b) => byRunAt(a.record, b.record))
      .slice(0, max);
    for (const entry of due) {
      const { record } = entry;
      this.ready.delete(record.id);
      this.leased.add(record.id, now + leaseMs);
      entry.owner = owner;
      record.state = "running";
      record.startedAt = now;
      record.attempts++;
    }
    return due.map((entry) => copy(entry.record));
  }

  async renew(ids: readonly string[], owner: string, leaseMs: number): Promise<string[]> {
    checkMs("renew: leaseMs", leaseMs);
    const now = this.sweep();
    const lost: string[] = [];
    for (const id of ids) {
      if (this.held(id, owner) === undefined) lost.push(id);
      else this.leased.add(id, now + leaseMs);
    }
    return lost;
  }

  async finish(
    id: string,
    owner: string,
    state: "succeeded" | "failed",
    result: JobResult,
    ttlMs: number,
  ): Promise<boolean> {
    checkMs("finish: ttlMs", ttlMs);
    const now = this.sweep();
    const entry = this.held(id, owner);
    if (entry === undefined) return false;
    this.end(entry, state, now, ttlMs, result);
    return true;
  }

  async release(id: string, owner: string, runAt: number): Promise<boolean> {
    if (!Number.isFinite(runAt)) throw new RangeError(`release: runAt must be finite, got ${runAt}`);
    this.sweep();
    const entry = this.held(id, owner);
    if (entry === undefined) return false;
    entry.owner = undefined;
    entry.record.state = "queued";
    entry.record.runAt = runAt;
    this.leased.delete(id);
    this.ready.add(id, runAt);
    return true;
  }

  async cancel(id: string, ttlMs: number): Promise<JobRecord | undefined> {
    checkMs("cancel: ttlMs", ttlMs);
    const now = this.sweep();
    const entry = this.jobs.get(id);
    if (entry === undefined) return undefined;
    if (UNFINISHED.has(entry.record.state)) this.end(entry, "cancelled", now, ttlMs);
    return copy(entry.record);
  }

  async cancelGroup(group: string, ttlMs: number): Promise<number> {
    checkMs("cancelGroup: ttlMs", ttlMs);
    const now = this.sweep();
    let cancelled = 0;
    for (const id of this.groups.get(group)?.lines.range(-Infinity, Infinity) ?? []) {
      const entry = this.jobs.get(id) as Entry;
      if (!UNFINISHED.has(entry.record.state)) continue;
      this.end(entry, "cancelled", now, ttlMs);
      cancelled++;
    }
    return cancelled;
  }

  async counts(group: string): Promise<GroupCounts> {
    this.sweep();
    const counts = this.groups.get(group)?.counts;
    return counts === undefined ? emptyCounts() : { ...counts };
  }

  async list(group: string, fromSeq: number, limit: number): Promise<JobRecord[]> {
    checkCount("list: limit", limit);
    this.sweep();
    const ids = this.groups.get(group)?.lines.range(fromSeq, Infinity, limit) ?? [];
    return ids.map((id) => copy((this.jobs.get(id) as Entry).record));
  }

  async depth(): Promise<number> {
    return this.ready.countUpTo(this.sweep());
  }

  async close(): Promise<void> {}

  /** The entry when `owner` holds the job (running under its lease, lapsed or not, not taken). */
  private held(id: string, owner: string): Entry | undefined {
    const entry = this.jobs.get(id);
    return entry?.record.state === "running" && entry.owner === owner ? entry : undefined;
  }

  private groupOf(name: string): Group {
    let group = this.groups.get(name);
    if (group === undefined) {
      group = { lines: new SortedSet(), counts: emptyCounts() };
      this.groups.set(name, group);
    }
    return group;
  }

  /** The one place a job ends: indexes, the tenant's count, the group's counts, the record's ttl. */
  private end(entry: Entry, state: JobState, now: number, ttlMs: number, result?: JobResult): void {
    const { record } = entry;
    record.state = state;
    record.finishedAt = now;
    if (result !== undefined) record.result = copyResult(result);
    entry.owner = undefined;
    this.ready.delete(record.id);
    this.leased.delete(record.id);
    this.deadlines.delete(record.id);
    this.purges.add(record.id, now + Math.ceil(ttlMs));
    const count = countKey(record.tenant, record.group);
    const left = (this.unfinished.get(count) ?? 1) - 1;
    if (left > 0) this.unfinished.set(count, left);
    else this.unfinished.delete(count);
    if (record.group === undefined) return;
    const counts = this.groupOf(record.group).counts;
    if (state === "succeeded") counts.completed++;
    else if (state === "cancelled") counts.cancelled++;
    else counts.failed++;
    counts.lastFinishedAt = now;
    if (counts.completed + counts.failed + counts.cancelled === counts.total) {
      this.groupPurges.add(record.group, now + Math.ceil(ttlMs));
    }
  }

  /** Forgets what outlived its ttl, ends what is past its expiresAt; returns now. */
  private sweep(): number {
    const now = this.now();
    for (const id of this.purges.range(-Infinity, now)) {
      const entry = this.jobs.get(id) as Entry;
      this.purges.delete(id);
      this.jobs.delete(id);
      if (entry.record.group !== undefined) this.groups.get(entry.record.group)?.lines.delete(id);
    }
    for (const name of this.groupPurges.range(-Infinity, now)) {
      this.groupPurges.delete(name);
      this.groups.delete(name);
    }
    for (const id of this.deadlines.range(-Infinity, now)) {
      this.end(this.jobs.get(id) as Entry, "expired", now, this.expiredTtlMs);
    }
    return now;
  }
}

function byRunAt(a: JobRecord, b: JobRecord): number {
  return a.runAt - b.runAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

function emptyCounts(): GroupCounts {
  return { total: 0, completed: 0, failed: 0, cancelled: 0, lastFinishedAt: undefined };
}

function copyResult(result: JobResult): JobResult {
  return { status: result.status, headers: { ...result.headers }, body: result.body };
}

function copy(record: JobRecord): JobRecord {
  return {
    ...record,
    request: { ...record.request },
    result: record.result === undefined ? undefined : copyResult(record.result),
  };
}
