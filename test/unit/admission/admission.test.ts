/**
 * Admission control with fake time and a fake pool of N slots: the order of the queue (band,
 * fairness, deadline), early refusal on the estimate, eviction, removal, the Retry-After
 * estimate and the reserve.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  Admission,
  type AdmissionOutcome,
  type AdmissionRequest,
  type SlotSource,
  Ticket,
} from "../../../src/admission/admission.js";
import { DrainRate } from "../../../src/admission/drain-rate.js";
import { AdmissionQueue, type QueueEntry } from "../../../src/admission/queue.js";
import { parseConfig } from "../../../src/config/index.js";
import { GatewayError } from "../../../src/errors.js";

/** A pool of `capacity` interchangeable slots, each a number. */
class FakePool implements SlotSource<number> {
  readonly name = "p";
  used = 0;
  served = true;
  constructor(public slots: number) {}
  /** When each slot in use was taken, oldest first: a release gives back the oldest. */
  readonly takenAt: number[] = [];
  take(): number | undefined {
    if (this.used >= this.slots) return undefined;
    this.takenAt.push(Date.now());
    return ++this.used;
  }
  untake(): void {
    this.takenAt.pop();
    this.used--;
  }
  servable(): boolean {
    return this.served;
  }
  inUse(): number {
    return this.used;
  }
  capacity(): number {
    return this.slots;
  }
  unavailableRetryAfterMs(): number {
    return 1234;
  }
}

function admissionConfig(yaml = "") {
  const config = parseConfig(
    `pools: { p: { models: [m], backends: [{ url: "http://127.0.0.1:1" }]${yaml} } }`,
    "test",
  );
  const pool = config.pools.p;
  if (!pool) throw new Error("no pool");
  return pool.admission;
}

interface Setup {
  pool: FakePool;
  admission: Admission<number>;
  outcomes: AdmissionOutcome[];
  /** Gives one slot back, as a finished request does. */
  release(): void;
}

function setup(slots: number, yaml = ""): Setup {
  const pool = new FakePool(slots);
  const outcomes: AdmissionOutcome[] = [];
  const admission = new Admission<number>(
    pool,
    admissionConfig(yaml),
    () => Date.now(),
    { decided: (_p, _b, outcome) => outcomes.push(outcome) },
    () => 0, // no jitter: estimates are exact
  );
  return {
    pool,
    admission,
    outcomes,
    release: () => {
      const takenAt = pool.takenAt.shift() ?? 0;
      pool.used--;
      admission.released(takenAt);
    },
  };
}

let nextDeadline = 60_000;
function ask(
  admission: Admission<number>,
  over: Partial<AdmissionRequest<number>> = {},
): number | Ticket<number> {
  const got = admission.acquire({
    band: 0,
    tenant: "t",
    weight: 1,
    deadline: Date.now() + nextDeadline,
    retry: false,
    patient: false,
    ...over,
  });
  // Tests that look at the refusal await it; the rest leave it (no unhandled rejection).
  if (got instanceof Ticket) got.promise.catch(() => {});
  return got;
}

/** A request that must wait; its label is pushed to `order` when it gets a slot. */
function queued(
  admission: Admission<number>,
  order: string[],
  label: string,
  over: Partial<AdmissionRequest<number>> = {},
): Ticket<number> {
  const got = ask(admission, over);
  if (!(got instanceof Ticket)) throw new Error(`${label} got a slot at once`);
  got.promise.then(
    () => order.push(label),
    () => order.push(`${label} refused`),
  );
  return got;
}

/**
 * Teaches the drain rate `perSlot` completions per slot-second on a full pool, each freed slot
 * taken by a request of the next band in `bands`.
 */
function teach(s: Setup, perSlot: number, seconds = 10, bands = [0]): void {
  for (let i = 0; s.pool.used < s.pool.slots; i++) ask(s.admission, { band: bands[i % bands.length] ?? 0 });
  const gap = 1000 / (perSlot * s.pool.slots);
  // At least 200 completions: the first holds (of the slots filled at once) leave the average.
  for (let t = 0; t < Math.max(200, (seconds * 1000) / gap); t++) {
    vi.advanceTimersByTime(gap);
    s.release();
    ask(s.admission, { band: bands[t % bands.length] ?? 0 });
  }
}

const flush = () => new Promise((r) => setImmediate(r));

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] });
  nextDeadline = 60_000;
});
afterEach(() => {
  vi.useRealTimers();
});

describe("admission: the fast path", () => {
  it("a free slot is taken at once, synchronously; a full pool queues; a release hands the slot over", async () => {
    const s = setup(2);
    expect(ask(s.admission)).toBe(1);
    expect(ask(s.admission)).toBe(2);
    const order: string[] = [];
    queued(s.admission, order, "third");
    expect(s.admission.queue.total).toBe(1);
    s.release();
    await flush();
    expect(order).toEqual(["third"]);
    expect(s.pool.used).toBe(2);
    expect(s.outcomes).toEqual(["immediate", "immediate", "after_wait"]);
  });

  it("a pool that cannot serve at all refuses with no_backend_available at once, and refuses its queue too", async () => {
    const s = setup(1);
    ask(s.admission);
    const order: string[] = [];
    const t = queued(s.admission, order, "waiting");
    s.pool.served = false;
    expect(() => ask(s.admission)).toThrow(expect.objectContaining({ code: "no_backend_available" }));
    s.admission.poolChanged();
    await expect(t.promise).rejects.toMatchObject({ code: "no_backend_available", retryAfterMs: 1234 });
    expect(s.admission.queue.total).toBe(0);
  });
});

describe("admission: order", () => {
  it("bands first: a lower band gets a slot only when no higher band waits", async () => {
    const s = setup(1);
    ask(s.admission);
    const order: string[] = [];
    queued(s.admission, order, "background", { band: 2 });
    queued(s.admission, order, "batch-1", { band: 1 });
    queued(s.admission, order, "interactive", { band: 0 });
    queued(s.admission, order, "batch-2", { band: 1 });
    for (let i = 0; i < 4; i++) {
      s.release();
      await flush();
    }
    expect(order).toEqual(["interactive", "batch-1", "batch-2", "background"]);
  });

  it("a lower band does not take a free slot while a higher band waits, even one arriving later", () => {
    const s = setup(1);
    ask(s.admission);
    const order: string[] = [];
    queued(s.admission, order, "interactive");
    // Arrives with the pool full and an interactive request waiting: it queues behind.
    expect(ask(s.admission, { band: 1 })).toBeInstanceOf(Ticket);
  });

  it("within a tenant, earliest deadline first; equal deadlines in arrival order", async () => {
    const s = setup(1);
    ask(s.admission);
    const order: string[] = [];
    const now = Date.now();
    queued(s.admission, order, "late", { deadline: now + 30_000 });
    queued(s.admission, order, "soon", { deadline: now + 10_000 });
    queued(s.admission, order, "soon-2", { deadline: now + 10_000 });
    queued(s.admission, order, "soonest", { deadline: now + 5_000 });
    for (let i = 0; i < 4; i++) {
      s.release();
      await flush();
    }
    expect(order).toEqual(["soonest", "soon", "soon-2", "late"]);
  });

  it("a retry waits at the front of its band, ahead of earlier arrivals", async () => {
    const s = setup(1);
    ask(s.admission);
    const order: string[] = [];
    queued(s.admission, order, "first");
    queued(s.admission, order, "retry", { retry: true });
    queued(s.admission, order, "interactive-only-below-retry", { band: 1 });
    for (let i = 0; i < 3; i++) {
      s.release();
      await flush();
    }
    expect(order).toEqual(["retry", "first", "interactive-only-below-retry"]);
  });
});

describe("admission: fairness within a band (start-time fair queuing)", () => {
  /** Both tenants keep `backlog` requests waiting; `n` slots are handed out one by one. */
  async function shares(weights: Record<string, number>, n: number): Promise<Record<string, number>> {
    const s = setup(1);
    ask(s.admission);
    const got: Record<string, number> = {};
    const backlog: Record<string, number> = {
      ...Object.fromEntries(Object.keys(weights).map((k) => [k, 0])),
    };
    const top = (tenant: string, count: number) => {
      for (let i = 0; i < count; i++) {
        const t = ask(s.admission, { tenant, weight: weights[tenant] ?? 1 });
        if (!(t instanceof Ticket)) throw new Error("expected to wait");
        backlog[tenant] = (backlog[tenant] ?? 0) + 1;
        t.promise.then(() => {
          got[tenant] = (got[tenant] ?? 0) + 1;
          backlog[tenant] = (backlog[tenant] ?? 0) - 1;
        });
      }
    };
    // The flooder queues far more than the light tenant, which tops itself up to 2 waiting.
    top("flood", 400);
    top("light", 2);
    for (let i = 0; i < n; i++) {
      s.release();
      await flush();
      if ((backlog.light ?? 0) < 2) top("light", 2 - (backlog.light ?? 0));
      if ((backlog.flood ?? 0) < 50) top("flood", 100);
    }
    return got;
  }

  it("equal weights: a flooding tenant and a light one each get half the slots while both wait", async () => {
    const got = await shares({ flood: 1, light: 1 }, 300);
    expect(got.light).toBeGreaterThanOrEqual(148);
    expect(got.light).toBeLessThanOrEqual(152);
    expect((got.light ?? 0) + (got.flood ?? 0)).toBe(300);
  });

  it("weights 3:1 give the slots 3:1, within a few percent", async () => {
    const got = await shares({ flood: 1, light: 3 }, 400);
    expect((got.light ?? 0) / 400).toBeGreaterThan(0.73);
    expect((got.light ?? 0) / 400).toBeLessThan(0.77);
  });

  it("a tenant that was idle banks no credit: it starts at the band's virtual time", () => {
    const q = new AdmissionQueue<QueueEntry>();
    const entry = (tenant: string, seq: number): QueueEntry => ({
      band: 0,
      tenant,
      weight: 1,
      deadline: seq,
      retry: false,
      seq: 0,
      waiting: false,
    });
    for (let i = 0; i < 10; i++) q.push(entry("a", i));
    for (let i = 0; i < 6; i++) expect(q.pop()?.tenant).toBe("a");
    // b arrives now, having sent nothing: it alternates with a from here, not 6 in a row.
    for (let i = 0; i < 4; i++) q.push(entry("b", 100 + i));
    const next = Array.from({ length: 8 }, () => q.pop()?.tenant);
    expect(next.filter((t) => t === "b")).toHaveLength(4);
    expect(next.slice(0, 4).filter((t) => t === "b").length).toBe(2);
  });
});

describe("admission: refusals", () => {
  it("refuses at once, without waiting, when the estimated wait is past the deadline", () => {
    const s = setup(10);
    teach(s, 1); // 1 completion per slot-second, 10 slots: 10 slots freed per second
    expect(s.admission.drain.measured).toBe(true);
    expect(s.admission.drainPerSecond()).toBeCloseTo(10, 0);
    // 4 waiting: a 5th expects (4 + 1) / 10 s = 500 ms.
    for (let i = 0; i < 4; i++) ask(s.admission);
    expect(s.admission.estimateMs(4)).toBeCloseTo(500, -1);
    let refusal: unknown;
    try {
      ask(s.admission, { deadline: Date.now() + 300 });
    } catch (err) {
      refusal = err;
    }
    expect(refusal).toBeInstanceOf(GatewayError);
    expect(refusal).toMatchObject({ statusCode: 503, code: "queue_deadline_unmeetable" });
    // Retry-After: when the 4 waiting, then one more, are expected to be served.
    expect((refusal as GatewayError).retryAfterMs).toBeCloseTo(500, -1);
    // A request with time enough waits.
    expect(ask(s.admission, { deadline: Date.now() + 2000 })).toBeInstanceOf(Ticket);
  });

  it("never refuses early without a measurement, nor a patient request (a job)", () => {
    const s = setup(1);
    ask(s.admission);
    for (let i = 0; i < 50; i++)
      expect(ask(s.admission, { deadline: Date.now() + 10 })).toBeInstanceOf(Ticket);
    const t = setup(10);
    teach(t, 1);
    for (let i = 0; i < 50; i++) ask(t.admission);
    expect(() => ask(t.admission, { deadline: Date.now() + 100 })).toThrow(/deadline/);
    expect(ask(t.admission, { deadline: Date.now() + 100, patient: true })).toBeInstanceOf(Ticket);
  });

  it("a request still waiting at its deadline is refused then with queue_timeout", async () => {
    const s = setup(1);
    ask(s.admission);
    const t = ask(s.admission, { deadline: Date.now() + 2000 }) as Ticket<number>;
    vi.advanceTimersByTime(1999);
    expect(s.admission.queue.total).toBe(1);
    vi.advanceTimersByTime(1);
    await expect(t.promise).rejects.toMatchObject({ code: "queue_timeout", statusCode: 503 });
    expect(s.admission.queue.total).toBe(0);
  });

  it("a full band refuses its own arrivals with queue_full; other bands still wait", () => {
    const s = setup(1, ", admission: { bands: { batch: { maxQueue: 2 } } }");
    ask(s.admission);
    ask(s.admission, { band: 1 });
    ask(s.admission, { band: 1 });
    expect(() => ask(s.admission, { band: 1 })).toThrow(expect.objectContaining({ code: "queue_full" }));
    expect(ask(s.admission, { band: 0 })).toBeInstanceOf(Ticket);
    expect(ask(s.admission, { band: 2 })).toBeInstanceOf(Ticket);
  });

  it("a full pool queue: a higher band evicts the newest of the lowest band; an equal band is refused", async () => {
    const s = setup(1, ", admission: { maxQueue: 3 }");
    ask(s.admission);
    const order: string[] = [];
    queued(s.admission, order, "batch", { band: 1 });
    queued(s.admission, order, "background-old", { band: 2 });
    const newest = queued(s.admission, order, "background-new", { band: 2 });
    queued(s.admission, order, "interactive", { band: 0 });
    await expect(newest.promise).rejects.toMatchObject({ code: "queue_evicted" });
    expect(s.admission.queue.total).toBe(3);
    // Now full with no band below background: another background arrival is refused.
    expect(() => ask(s.admission, { band: 2 })).toThrow(expect.objectContaining({ code: "queue_full" }));
    expect(s.outcomes.filter((o) => o === "evicted")).toHaveLength(1);
  });

  it("a client that leaves while queued is out at once and never gets the slot", async () => {
    const s = setup(1);
    ask(s.admission);
    const order: string[] = [];
    const leaving = queued(s.admission, order, "leaving");
    queued(s.admission, order, "staying");
    leaving.cancel(new Error("the client went away"));
    expect(s.admission.queue.total).toBe(1);
    s.release();
    await flush();
    expect(order).toEqual(["leaving refused", "staying"]);
    expect(s.outcomes).toContain("cancelled");
  });

  it("shutdown refuses every waiting request with shutting_down and retry headers", async () => {
    const s = setup(1);
    ask(s.admission);
    const t = ask(s.admission) as Ticket<number>;
    s.admission.shutdown();
    const err = await t.promise.catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "shutting_down" });
    expect((err as GatewayError).headers()["x-should-retry"]).toBe("true");
  });

  it("Retry-After for a band counts the work waiting at and above it, at the measured drain rate, capped", () => {
    const s = setup(4);
    teach(s, 2, 10, [1]); // 2 per slot-second × 4 slots: 8 per second, all to batch
    for (let i = 0; i < 7; i++) ask(s.admission, { band: 1 });
    for (let i = 0; i < 3; i++) ask(s.admission, { band: 0 });
    // interactive: 3 ahead + 1 → 0.5 s; batch: 10 ahead + 1 → 1.375 s.
    expect(s.admission.retryAfterMs(0)).toBeCloseTo(500, -1);
    expect(s.admission.retryAfterMs(1)).toBeCloseTo(1375, -1);
    const jittered = new Admission<number>(
      s.pool,
      admissionConfig(),
      () => Date.now(),
      {},
      () => 0.999,
    );
    // The prior (1 per slot-second, 4 slots) and the most jitter: 250 ms × 1.2.
    expect(jittered.retryAfterMs(0)).toBe(Math.round(250 * (1 + 0.2 * 0.999)));
  });
});

describe("admission: what higher bands take", () => {
  it("a lower band's wait is estimated on the share of freed slots the bands above leave it", () => {
    const s = setup(4);
    teach(s, 2, 20, [0, 1]); // 8 slots freed per second, half to interactive, half to batch
    expect(s.admission.drain.higherShare(1)).toBeCloseTo(0.5, 1);
    // batch: 4 ahead + 1 at the 4 per second left to it; interactive: the whole 8.
    for (let i = 0; i < 4; i++) ask(s.admission, { band: 1 });
    expect(s.admission.estimateMs(4, 1)).toBeGreaterThan(1100);
    expect(s.admission.estimateMs(4, 1)).toBeLessThan(1400);
    expect(s.admission.estimateMs(4, 0)).toBeCloseTo(625, -1);
  });
});

describe("admission: slots taken together free together", () => {
  it("after a pool's slots were all taken at once, the second wave waits a whole hold time more", () => {
    const s = setup(4);
    teach(s, 1); // each slot held 1 s; ages spread evenly
    // Evenly spread ages: request k waits about (k + 1) / 4 s.
    expect(s.admission.estimateMs(4)).toBeGreaterThan(1100);
    expect(s.admission.estimateMs(4)).toBeLessThan(1400);
    // Now every slot turns over at the same moment, as when a surge hits an idle pool.
    for (let i = 0; i < 4; i++) s.release();
    for (let i = 0; i < 4; i++) expect(typeof ask(s.admission)).toBe("number");
    vi.advanceTimersByTime(200);
    // (The early releases were short holds: the mean hold H is a little under 1 s now.)
    const hold = 1000 / s.admission.drain.perSlotPerSecond;
    // The first four waiting get the slots H - 0.2 s from now, all at once; the fifth H later.
    expect(s.admission.estimateMs(0)).toBeCloseTo(hold - 200, 5);
    expect(s.admission.estimateMs(3)).toBeCloseTo(hold - 200, 5);
    expect(s.admission.estimateMs(4)).toBeCloseTo(2 * hold - 200, 5);
  });
});

describe("admission: the reserve for the interactive band", () => {
  it("a batch flood leaves the reserved share of slots to interactive requests", () => {
    const s = setup(10, ", admission: { reserve: 20 }");
    const batch = Array.from({ length: 12 }, () => ask(s.admission, { band: 1 }));
    expect(batch.filter((b) => typeof b === "number")).toHaveLength(8);
    expect(s.admission.queue.size(1)).toBe(4);
    expect(typeof ask(s.admission, { band: 0 })).toBe("number");
    expect(typeof ask(s.admission, { band: 0 })).toBe("number");
    expect(ask(s.admission, { band: 0 })).toBeInstanceOf(Ticket);
  });
});

describe("drain rate", () => {
  it("is completions per busy slot-second, 1 / the mean hold, and starts from the prior", () => {
    const rate = new DrainRate(0);
    expect(rate.measured).toBe(false);
    expect(rate.perSlotPerSecond).toBe(1);
    for (let i = 0; i < 4; i++) rate.completed(500);
    expect(rate.measured).toBe(false);
    rate.completed(500);
    expect(rate.measured).toBe(true);
    expect(rate.perSlotPerSecond).toBeCloseTo(2, 5);
  });

  it("keeps each tenant's share of its band's slots: a flooder's wait counts what the others take", () => {
    const rate = new DrainRate(0);
    let now = 0;
    for (let i = 0; i < 400; i++) {
      now += 50;
      rate.handed(now, 0, i % 4 === 0 ? "quiet" : "noisy");
    }
    expect(rate.othersShare(0, "noisy")).toBeCloseTo(0.25, 1);
    // The light tenant is served first by fair queuing: the flooder's slots do not delay it.
    expect(rate.othersShare(0, "quiet")).toBe(0);
    expect(rate.othersShare(1, "noisy")).toBe(0);
  });

  it("follows a slowdown within a few dozen completions, whatever the wall time", () => {
    const rate = new DrainRate(0);
    for (let i = 0; i < 200; i++) rate.completed(500);
    for (let i = 0; i < 64; i++) rate.completed(1000);
    // Two windows (32) of slower holds: within 15% of the new rate.
    expect(rate.perSlotPerSecond).toBeGreaterThan(1);
    expect(rate.perSlotPerSecond).toBeLessThan(1.15);
  });
});
