/**
 * The JobQueue contract (src/jobs/types.ts), one suite for every implementation: MemoryJobQueue
 * on a fake clock (memory-queue.test.ts) and RedisJobQueue on a real redis-server
 * (test/integration/jobs/redis-queue.test.ts).
 *
 * Time: each setup says what "now" is and how to let time pass (the fake clock moves; with
 * Redis, real time passes). Leases the tests must NOT see lapse are LONG (a minute); leases,
 * ttls and windows they let lapse are `short`, and they wait twice that, so a slow machine makes
 * the Redis run slower, never wrong.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { JobQueue, JobRecord, JobResult, NewJob } from "../../../src/jobs/types.js";

export interface QueueSetup {
  /** The queue under test. */
  queue: JobQueue;
  /** Another replica's view of the same queue (memory: the same object). */
  peer: JobQueue;
  /** The queue's clock, epoch ms. */
  now(): number;
  /** Lets `ms` of the queue's clock pass. */
  pass(ms: number): Promise<void>;
  /** The queue's expiredTtlMs: how long an expired job's record stays. */
  short: number;
  close(): Promise<void>;
}

const LONG = 60_000;
const TTL = 3_600_000;
const answer: JobResult = {
  status: 200,
  headers: { "content-type": "application/json" },
  body: '{"ok":true}',
};

export function job(id: string, extra: Partial<NewJob> = {}): NewJob {
  return { id, tenant: "team-a", request: { url: "/v1/chat/completions", body: `{"n":"${id}"}` }, ...extra };
}

const ids = (records: readonly JobRecord[]) => records.map((r) => r.id);

export function describeJobQueue(name: string, setup: () => Promise<QueueSetup>): void {
  describe(`${name}: the JobQueue contract`, () => {
    let s: QueueSetup;
    let q: JobQueue;
    beforeEach(async () => {
      s = await setup();
      q = s.queue;
    });
    afterEach(async () => {
      await s?.close();
    });

    it("stores a new job as queued and answers it by id", async () => {
      const before = s.now();
      expect(await q.enqueue([job("j1", { group: "g", seq: 4, customId: "line-4" })], 10)).toEqual({
        accepted: true,
        unfinished: 1,
      });
      const record = await q.get("j1");
      expect(record).toMatchObject({
        id: "j1",
        tenant: "team-a",
        request: { url: "/v1/chat/completions", body: '{"n":"j1"}' },
        group: "g",
        seq: 4,
        customId: "line-4",
        expiresAt: undefined,
        state: "queued",
        startedAt: undefined,
        finishedAt: undefined,
        attempts: 0,
        result: undefined,
      });
      expect(record?.createdAt).toBeGreaterThanOrEqual(before - 1000);
      expect(record?.runAt).toBe(record?.createdAt);
      expect(await q.get("nope")).toBeUndefined();
      expect(await s.peer.get("j1")).toEqual(record);
    });

    it("enqueues all or none under the tenant's cap; tenants count apart; an end frees room", async () => {
      expect(await q.enqueue([job("a1"), job("a2")], 3)).toEqual({ accepted: true, unfinished: 2 });
      expect(await q.enqueue([job("a3"), job("a4")], 3)).toEqual({ accepted: false, unfinished: 2 });
      expect(await q.get("a3")).toBeUndefined();
      expect(await q.get("a4")).toBeUndefined();
      const b = ["b1", "b2", "b3"].map((id) => job(id, { tenant: "team-b" }));
      expect(await q.enqueue(b, 3)).toEqual({ accepted: true, unfinished: 3 });
      expect(await q.enqueue([job("a3")], 3)).toEqual({ accepted: true, unfinished: 3 });
      expect(await q.enqueue([job("a4")], 3)).toEqual({ accepted: false, unfinished: 3 });
      await q.cancel("a1", TTL);
      expect(await q.enqueue([job("a4")], 3)).toEqual({ accepted: true, unfinished: 3 });
      expect((await q.enqueue([], 3)).accepted).toBe(true);
      expect((await q.enqueue([], 0)).accepted).toBe(true);
    });

    it("counts a tenant's batch lines apart from its own jobs: a large batch leaves the cap of its async requests alone", async () => {
      const lines = Array.from({ length: 300 }, (_, i) => job(`line${i}`, { group: "batch-1", seq: i }));
      expect(await q.enqueue(lines, Number.MAX_SAFE_INTEGER)).toEqual({ accepted: true, unfinished: 300 });
      expect(await q.enqueue([job("own1"), job("own2")], 2)).toEqual({ accepted: true, unfinished: 2 });
      expect(await q.enqueue([job("own3")], 2)).toEqual({ accepted: false, unfinished: 2 });
      // A line's end frees none of the tenant's own room, and an own job's end none of the lines'.
      expect(await q.cancelGroup("batch-1", TTL)).toBe(300);
      expect(await q.enqueue([job("own3")], 2)).toEqual({ accepted: false, unfinished: 2 });
      await q.cancel("own1", TTL);
      expect(await q.enqueue([job("own3")], 2)).toEqual({ accepted: true, unfinished: 2 });
      const more = [job("line-x", { group: "batch-2", seq: 0 })];
      expect(await q.enqueue(more, 1)).toEqual({ accepted: true, unfinished: 1 });
      await expect(
        q.enqueue([job("mixed-a"), job("mixed-b", { group: "batch-3", seq: 0 })], 10),
      ).rejects.toBeInstanceOf(RangeError);
    });

    it("refuses bad calls before writing anything", async () => {
      await q.enqueue([job("old")], 10);
      await expect(q.enqueue([job("new"), job("old")], 10)).rejects.toBeInstanceOf(RangeError);
      await expect(q.enqueue([job("x"), job("x")], 10)).rejects.toBeInstanceOf(RangeError);
      await expect(q.enqueue([job("y"), job("z", { tenant: "team-b" })], 10)).rejects.toBeInstanceOf(
        RangeError,
      );
      await expect(q.enqueue([job("w")], -1)).rejects.toBeInstanceOf(RangeError);
      await expect(q.claim("A", 0, 1)).rejects.toBeInstanceOf(RangeError);
      for (const id of ["new", "x", "y", "z", "w"]) expect(await q.get(id)).toBeUndefined();
      expect(await q.enqueue([job("n1")], 2)).toEqual({ accepted: true, unfinished: 2 });
    });

    it("claims due jobs in runAt order, at most max, each once, under the owner's lease", async () => {
      const t = s.now();
      await q.enqueue(
        [
          job("c", { runAt: t - 1000 }),
          job("a", { runAt: t - 3000 }),
          job("f", { runAt: t + TTL }),
          job("b", { runAt: t - 2000 }),
        ],
        10,
      );
      expect(await q.depth()).toBe(3);
      expect(await q.claim("A", LONG, 0)).toEqual([]);
      const first = await q.claim("A", LONG, 2);
      expect(ids(first)).toEqual(["a", "b"]);
      for (const r of first) {
        expect(r).toMatchObject({ state: "running", attempts: 1 });
        expect(r.startedAt).toBeGreaterThanOrEqual(r.createdAt);
      }
      expect(ids(await s.peer.claim("B", LONG, 10))).toEqual(["c"]);
      expect(await q.claim("A", LONG, 10)).toEqual([]);
      expect(await q.depth()).toBe(0);
      expect((await q.get("f"))?.state).toBe("queued");
    });

    it("keeps a lease that is renewed", async () => {
      await q.enqueue([job("j")], 10);
      expect(ids(await q.claim("A", s.short, 1))).toEqual(["j"]);
      expect(await q.renew(["j"], "A", LONG)).toEqual([]);
      await s.pass(2 * s.short);
      expect(await s.peer.claim("B", LONG, 10)).toEqual([]);
      expect(await q.renew(["j", "ghost"], "A", LONG)).toEqual(["ghost"]);
      expect(await q.renew(["j"], "B", LONG)).toEqual(["j"]);
    });

    it("leaves a lapsed lease to its holder until another owner claims the job", async () => {
      await q.enqueue([job("j")], 10);
      await q.claim("A", s.short, 1);
      await s.pass(2 * s.short);
      expect(await q.renew(["j"], "A", LONG)).toEqual([]);
      expect(await s.peer.claim("B", LONG, 10)).toEqual([]);
      expect(await q.finish("j", "A", "succeeded", answer, TTL)).toBe(true);
    });

    it("hands a lapsed job to the next owner: attempts 2, the stale owner refused, one end counted", async () => {
      await q.enqueue([job("j", { group: "g" })], 10);
      await q.claim("A", s.short, 1);
      await s.pass(2 * s.short);
      const [again] = await s.peer.claim("B", LONG, 10);
      expect(again).toMatchObject({ id: "j", state: "running", attempts: 2 });
      expect(await q.renew(["j"], "A", LONG)).toEqual(["j"]);
      expect(await q.finish("j", "A", "succeeded", answer, TTL)).toBe(false);
      expect(await q.release("j", "A", s.now())).toBe(false);
      expect(await s.peer.finish("j", "B", "succeeded", answer, TTL)).toBe(true);
      expect(await s.peer.finish("j", "B", "succeeded", answer, TTL)).toBe(false);
      expect(await q.get("j")).toMatchObject({ state: "succeeded", attempts: 2, result: answer });
      expect(await q.counts("g")).toMatchObject({ total: 1, completed: 1, failed: 0, cancelled: 0 });
    });

    it("stores the answer once; the record goes after its ttl, the group's counts after the last end", async () => {
      await q.enqueue([job("j1", { group: "g", seq: 0 }), job("j2", { group: "g", seq: 1 })], 10);
      await q.claim("A", LONG, 2);
      const failure: JobResult = { status: 400, headers: { "x-request-id": "r1" }, body: '{"error":{}}' };
      expect(await q.finish("j1", "A", "failed", failure, s.short)).toBe(true);
      const ended = await q.get("j1");
      expect(ended).toMatchObject({ state: "failed", result: failure });
      expect(ended?.finishedAt).toBeGreaterThanOrEqual(ended?.startedAt ?? Number.POSITIVE_INFINITY);
      await s.pass(2 * s.short);
      expect(await q.get("j1")).toBeUndefined();
      expect(ids(await q.list("g", 0, 10))).toEqual(["j2"]);
      expect(await q.counts("g")).toMatchObject({ total: 2, completed: 0, failed: 1 });
      expect(await q.finish("j2", "A", "succeeded", answer, s.short)).toBe(true);
      const counts = await q.counts("g");
      expect(counts).toMatchObject({ total: 2, completed: 1, failed: 1, cancelled: 0 });
      expect(counts.lastFinishedAt).toBe((await q.get("j2"))?.finishedAt);
      await s.pass(2 * s.short);
      expect(await q.get("j2")).toBeUndefined();
      expect(await q.list("g", 0, 10)).toEqual([]);
      expect(await q.counts("g")).toEqual({
        total: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        lastFinishedAt: undefined,
      });
    });

    it("releases a held job back to the queue, to run at runAt", async () => {
      await q.enqueue([job("later"), job("now")], 10);
      await q.claim("A", LONG, 2);
      expect(await q.release("later", "A", s.now() + TTL)).toBe(true);
      expect(await q.release("later", "A", s.now())).toBe(false);
      expect(await q.get("later")).toMatchObject({ state: "queued", attempts: 1 });
      expect(await q.release("now", "B", s.now())).toBe(false);
      expect(await q.release("now", "A", s.now() - 1)).toBe(true);
      expect(await q.depth()).toBe(1);
      const [again] = await s.peer.claim("B", LONG, 10);
      expect(again).toMatchObject({ id: "now", attempts: 2 });
      expect(await q.depth()).toBe(0);
    });

    it("cancels a queued job and a running one (its holder learns at renew); an ended job stays", async () => {
      const t = s.now();
      await q.enqueue([job("queued", { group: "g", runAt: t + TTL }), job("running", { group: "g" })], 2);
      await q.claim("A", LONG, 10);
      expect(await q.cancel("queued", TTL)).toMatchObject({ id: "queued", state: "cancelled" });
      const cancelled = await q.cancel("running", TTL);
      expect(cancelled).toMatchObject({ state: "cancelled", attempts: 1 });
      expect(cancelled?.finishedAt).toBeGreaterThanOrEqual(t - 1000);
      expect(await q.renew(["running"], "A", LONG)).toEqual(["running"]);
      expect(await q.finish("running", "A", "succeeded", answer, TTL)).toBe(false);
      expect(await q.counts("g")).toMatchObject({ total: 2, cancelled: 2, completed: 0 });
      expect(await q.cancel("queued", TTL)).toMatchObject({ state: "cancelled" });
      expect(await q.cancel("ghost", TTL)).toBeUndefined();
      expect(await q.enqueue([job("done"), job("x")], 2)).toEqual({ accepted: true, unfinished: 2 });
      await q.claim("A", LONG, 1);
      await q.finish("done", "A", "succeeded", answer, TTL);
      expect(await q.cancel("done", TTL)).toMatchObject({ state: "succeeded", result: answer });
      expect(await q.claim("A", LONG, 10)).toMatchObject([{ id: "x" }]);
    });

    it("cancels every unfinished job of a group, and counts them", async () => {
      await q.enqueue(
        ["g0", "g1", "g2"].map((id, seq) => job(id, { group: "g", seq })),
        10,
      );
      await q.enqueue([job("other", { group: "h" })], 10);
      const [first] = await q.claim("A", LONG, 1);
      await q.finish(first?.id ?? "", "A", "succeeded", answer, TTL);
      expect(await q.cancelGroup("g", TTL)).toBe(2);
      expect(await q.cancelGroup("g", TTL)).toBe(0);
      expect(await q.counts("g")).toMatchObject({ total: 3, completed: 1, cancelled: 2 });
      expect((await q.list("g", 0, 10)).map((r) => r.state)).toEqual(["succeeded", "cancelled", "cancelled"]);
      expect(ids(await q.claim("A", LONG, 10))).toEqual(["other"]);
      expect(await q.cancelGroup("nothing", TTL)).toBe(0);
    });

    it("lists a group's jobs in line order, page by page", async () => {
      const seqs = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5];
      await q.enqueue(
        seqs.map((seq) => job(`line${seq}`, { group: "g", seq, customId: `c${seq}` })),
        20,
      );
      expect((await q.list("g", 0, 4)).map((r) => [r.seq, r.customId])).toEqual([
        [0, "c0"],
        [1, "c1"],
        [2, "c2"],
        [3, "c3"],
      ]);
      expect((await q.list("g", 4, 4)).map((r) => r.seq)).toEqual([4, 5, 6, 7]);
      expect((await q.list("g", 8, 4)).map((r) => r.seq)).toEqual([8, 9]);
      expect(await q.list("g", 10, 4)).toEqual([]);
      expect(await q.list("g", 0, 0)).toEqual([]);
      expect(await q.list("none", 0, 4)).toEqual([]);
      // Lines without a number go after the group's others, in the order given.
      await q.enqueue([job("x", { group: "h" }), job("y", { group: "h" })], 20);
      await q.enqueue([job("z", { group: "h" })], 20);
      expect((await q.list("h", 0, 10)).map((r) => [r.id, r.seq])).toEqual([
        ["x", 0],
        ["y", 1],
        ["z", 2],
      ]);
    });

    it("ends an unfinished job past expiresAt as expired: never handed out, its holder loses it", async () => {
      const t = s.now();
      const window = { group: "g", expiresAt: t + s.short };
      await q.enqueue([job("e1", window), job("e2", window), job("e3", { group: "g" })], 3);
      expect(ids(await q.claim("A", LONG, 1))).toEqual(["e1"]);
      await s.pass(2 * s.short);
      const expired = await q.get("e2");
      expect(expired).toMatchObject({ state: "expired", result: undefined });
      expect(expired?.finishedAt).toBeGreaterThanOrEqual(t + s.short);
      expect(await q.renew(["e1"], "A", LONG)).toEqual(["e1"]);
      expect(await q.finish("e1", "A", "succeeded", answer, TTL)).toBe(false);
      expect((await q.get("e1"))?.state).toBe("expired");
      expect(ids(await q.claim("A", LONG, 10))).toEqual(["e3"]);
      expect(await q.counts("g")).toMatchObject({ total: 3, failed: 2, completed: 0 });
      // Of the lines, only e3 (running) is unfinished: the lines' count has room for two more.
      const lines = [job("n1", { group: "g2" }), job("n2", { group: "g2" })];
      expect(await q.enqueue(lines, 3)).toEqual({ accepted: true, unfinished: 3 });
      // An expired job's record stays for expiredTtlMs.
      await s.pass(2 * s.short);
      expect(await q.get("e2")).toBeUndefined();
    });

    it("counts as depth the queued jobs that are due, of every tenant", async () => {
      const t = s.now();
      expect(await q.depth()).toBe(0);
      await q.enqueue([job("a"), job("b"), job("later", { runAt: t + TTL })], 10);
      await q.enqueue([job("c", { tenant: "team-b" })], 10);
      expect(await q.depth()).toBe(3);
      await q.claim("A", LONG, 1);
      expect(await q.depth()).toBe(2);
      await q.cancel("c", TTL);
      expect(await s.peer.depth()).toBe(1);
    });

    it("never hands one job to two replicas claiming at once", async () => {
      const n = 300;
      await q.enqueue(
        Array.from({ length: n }, (_, i) => job(`j${String(i).padStart(3, "0")}`)),
        n,
      );
      const taken = new Map<string, string>();
      const drain = async (queue: JobQueue, owner: string) => {
        for (;;) {
          const claimed = await queue.claim(owner, LONG, 7);
          if (claimed.length === 0) return;
          for (const r of claimed) {
            expect(taken.get(r.id)).toBeUndefined();
            taken.set(r.id, owner);
          }
        }
      };
      await Promise.all([drain(q, "A"), drain(s.peer, "B"), drain(q, "C"), drain(s.peer, "D")]);
      expect(taken.size).toBe(n);
      for (const [id, owner] of taken) expect(await q.renew([id], owner, LONG)).toEqual([]);
    });

    it("an id that exists refuses a large enqueue whole", async () => {
      await q.enqueue([job("taken", { tenant: "team-a" })], 10);
      const jobs = Array.from({ length: 1000 }, (_, i) => job(`big${i}`, { group: "big", seq: i }));
      jobs.push(job("taken", { group: "big", seq: 1000 }));
      await expect(q.enqueue(jobs, 2000)).rejects.toBeInstanceOf(RangeError);
      expect(await q.get("big0")).toBeUndefined();
      expect(await q.list("big", 0, 10)).toEqual([]);
      expect((await q.counts("big")).total).toBe(0);
      expect(await q.depth()).toBe(1);
      expect(await q.enqueue([job("one")], 2)).toEqual({ accepted: true, unfinished: 2 });
    });

    it("takes a batch of 50,000 jobs all or none, and cancels it as a group", {
      timeout: 120_000,
    }, async () => {
      const batch = (prefix: string, n: number) =>
        Array.from({ length: n }, (_, i) =>
          job(`${prefix}-${i}`, { tenant: "team-b", group: prefix, seq: i, customId: `request-${i}` }),
        );
      expect(await q.enqueue(batch("b1", 50_000), 50_000)).toEqual({ accepted: true, unfinished: 50_000 });
      expect(await q.enqueue([job("more", { tenant: "team-b", group: "b1-more" })], 50_000)).toEqual({
        accepted: false,
        unfinished: 50_000,
      });
      expect((await q.counts("b1")).total).toBe(50_000);
      expect(await q.depth()).toBe(50_000);
      expect((await q.list("b1", 49_998, 10)).map((r) => r.customId)).toEqual([
        "request-49998",
        "request-49999",
      ]);
      expect(await q.cancelGroup("b1", TTL)).toBe(50_000);
      expect(await q.counts("b1")).toMatchObject({ total: 50_000, cancelled: 50_000 });
      expect(await q.enqueue(batch("b2", 50_001), 50_000)).toEqual({ accepted: false, unfinished: 0 });
      expect(await q.get("b2-0")).toBeUndefined();
      expect(await q.depth()).toBe(0);
    });
  });
}
