import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  BatchScheduler,
  type BatchSchedulerOptions,
  type BatchTiming,
  type SequenceSpec,
  stepDurationMs,
} from "../../../src/sim/batch-scheduler.js";
import { ManualClock } from "./manual-clock.js";

const timing: BatchTiming = { prefillMsPerToken: 1, decodeStepMs: 10, decodeMsPerSeq: 2 };

function setup(overrides: Partial<BatchSchedulerOptions> = {}) {
  const clock = new ManualClock();
  const scheduler = new BatchScheduler({
    slots: 2,
    maxQueue: 1,
    kvCacheTokens: 1000,
    timing,
    scale: () => 1,
    schedule: clock.schedule,
    ...overrides,
  });
  return { clock, scheduler };
}

interface Trace {
  spec: SequenceSpec;
  tokens: { index: number; at: number }[];
  finishedAt: number | null;
}

function trace(clock: ManualClock, promptTokens: number, outputTokens: number): Trace {
  const t: Trace = {
    tokens: [],
    finishedAt: null,
    spec: {
      promptTokens,
      outputTokens,
      onToken: (index) => t.tokens.push({ index, at: clock.now }),
      onFinish: () => {
        t.finishedAt = clock.now;
      },
    },
  };
  return t;
}

describe("stepDurationMs", () => {
  it.each([
    // prefill tokens, batch, scale, expected
    [0, 0, 1, 0],
    [100, 0, 1, 100], // prefill-only step (embeddings)
    [0, 1, 1, 12],
    [0, 8, 1, 26],
    [50, 3, 1, 66],
    [50, 3, 0.5, 33],
    [50, 3, 0, 0],
  ])("P=%d B=%d scale=%d -> %d ms", (prefill, batch, scale, expected) => {
    expect(stepDurationMs(timing, prefill, batch, scale)).toBe(expected);
  });
});

describe("BatchScheduler timing", () => {
  it("runs a lone sequence: TTFT = prefill + one decode step, then one token per step", () => {
    const { clock, scheduler } = setup();
    const a = trace(clock, 5, 3);
    scheduler.submit(a.spec);
    clock.runAll();
    // 5*1 + 10 + 2*1 = 17, then 10 + 2*1 = 12 per step
    expect(a.tokens).toEqual([
      { index: 0, at: 17 },
      { index: 1, at: 29 },
      { index: 2, at: 41 },
    ]);
    expect(a.finishedAt).toBe(41);
    expect(clock.pending).toBe(0);
  });

  it("admits a newcomer at the next step boundary; its prefill and the bigger batch slow everyone", () => {
    const { clock, scheduler } = setup();
    const a = trace(clock, 5, 3);
    const b = trace(clock, 20, 2);
    scheduler.submit(a.spec);
    clock.advance(5);
    scheduler.submit(b.spec);
    expect(scheduler.runningCount).toBe(2);
    clock.runAll();
    // step 1 [0,17]: A prefill. step 2 [17,51]: 20*1 + 10 + 2*2. step 3 [51,65]: 10 + 2*2.
    expect(a.tokens.map((t) => t.at)).toEqual([17, 51, 65]);
    expect(b.tokens.map((t) => t.at)).toEqual([51, 65]);
    expect(a.finishedAt).toBe(65);
    expect(b.finishedAt).toBe(65);
  });

  it("reads the scale at the start of every step", () => {
    let scale = 2;
    const { clock, scheduler } = setup({ scale: () => scale });
    const a = trace(clock, 0, 2);
    scheduler.submit(a.spec);
    clock.advance(1);
    scale = 1;
    clock.runAll();
    expect(a.tokens.map((t) => t.at)).toEqual([24, 36]);
  });

  it("finishes prefill-only work (outputTokens 0) after its prefill step, without tokens", () => {
    const { clock, scheduler } = setup();
    const e = trace(clock, 10, 0);
    scheduler.submit(e.spec);
    clock.runAll();
    expect(e.tokens).toEqual([]);
    expect(e.finishedAt).toBe(10);
  });
});

describe("BatchScheduler slots and queue", () => {
  it("fills slots, then the queue, then refuses", () => {
    const { clock, scheduler } = setup({ slots: 2, maxQueue: 1 });
    const a = trace(clock, 1, 5);
    const b = trace(clock, 1, 5);
    const c = trace(clock, 1, 5);
    const d = trace(clock, 1, 5);
    expect(scheduler.submit(a.spec)).not.toBeNull();
    expect(scheduler.submit(b.spec)).not.toBeNull();
    expect(scheduler.submit(c.spec)).not.toBeNull();
    expect(scheduler.submit(d.spec)).toBeNull();
    expect([scheduler.runningCount, scheduler.waitingCount]).toEqual([2, 1]);
    clock.runAll();
    expect(a.tokens).toHaveLength(5);
    expect(c.tokens).toHaveLength(5);
    expect(d.tokens).toHaveLength(0);
  });

  it("hands a slot freed by an abort to the next waiting sequence at once", () => {
    const { clock, scheduler } = setup({ slots: 1, maxQueue: 1 });
    const a = trace(clock, 1, 50);
    const b = trace(clock, 1, 1);
    const ha = scheduler.submit(a.spec);
    scheduler.submit(b.spec);
    clock.advance(30);
    expect(ha).not.toBeNull();
    if (ha === null) return;
    expect(scheduler.abort(ha)).toBe(true);
    expect(scheduler.abort(ha)).toBe(false);
    expect([scheduler.runningCount, scheduler.waitingCount]).toEqual([1, 0]);
    const tokensBefore = a.tokens.length;
    clock.runAll();
    expect(a.tokens.length).toBe(tokensBefore);
    expect(a.finishedAt).toBeNull();
    expect(b.finishedAt).not.toBeNull();
  });

  it("cancels the step timer when the last running sequence is aborted", () => {
    const { clock, scheduler } = setup();
    const h = scheduler.submit(trace(clock, 1, 100).spec);
    clock.advance(20);
    expect(clock.pending).toBe(1);
    if (h !== null) scheduler.abort(h);
    expect(clock.pending).toBe(0);
    expect(scheduler.runningCount).toBe(0);
    expect(scheduler.kvTokensInUse).toBe(0);
  });

  it("aborts a waiting sequence without touching the batch", () => {
    const { clock, scheduler } = setup({ slots: 1, maxQueue: 2 });
    scheduler.submit(trace(clock, 1, 3).spec);
    const w = trace(clock, 1, 3);
    const hw = scheduler.submit(w.spec);
    expect(scheduler.waitingCount).toBe(1);
    if (hw !== null) expect(scheduler.abort(hw)).toBe(true);
    expect(scheduler.waitingCount).toBe(0);
    clock.runAll();
    expect(w.tokens).toEqual([]);
  });

  it("lets a token callback abort its own sequence (mid-stream drop)", () => {
    const { clock, scheduler } = setup();
    const t = trace(clock, 1, 10);
    let handle: ReturnType<BatchScheduler["submit"]> = null;
    const spec: SequenceSpec = {
      ...t.spec,
      onToken: (index) => {
        t.spec.onToken(index);
        if (index === 2 && handle !== null) scheduler.abort(handle);
      },
    };
    handle = scheduler.submit(spec);
    clock.runAll();
    expect(t.tokens.map((x) => x.index)).toEqual([0, 1, 2]);
    expect(t.finishedAt).toBeNull();
    expect(scheduler.runningCount).toBe(0);
  });

  it("close() drops everything and leaves no timer", () => {
    const { clock, scheduler } = setup({ slots: 1, maxQueue: 5 });
    for (let i = 0; i < 4; i++) scheduler.submit(trace(clock, 1, 3).spec);
    scheduler.close();
    expect(clock.pending).toBe(0);
    expect(scheduler.submit(trace(clock, 1, 1).spec)).toBeNull();
  });
});

describe("BatchScheduler KV cache", () => {
  it("admits only prompts that fit, except when nothing else runs", () => {
    const { clock, scheduler } = setup({ slots: 4, maxQueue: 4, kvCacheTokens: 100 });
    const a = trace(clock, 80, 2);
    const b = trace(clock, 30, 1);
    scheduler.submit(a.spec);
    expect(scheduler.kvCacheUsage).toBeCloseTo(0.8);
    scheduler.submit(b.spec);
    expect([scheduler.runningCount, scheduler.waitingCount]).toEqual([1, 1]);
    clock.advance(80 + 12);
    expect(scheduler.kvTokensInUse).toBe(81);
    clock.runAll();
    expect(b.finishedAt).not.toBeNull();
    expect(scheduler.kvTokensInUse).toBe(0);

    const huge = trace(clock, 500, 1);
    scheduler.submit(huge.spec);
    expect(scheduler.runningCount).toBe(1);
    expect(scheduler.kvCacheUsage).toBe(1);
    clock.runAll();
    expect(huge.finishedAt).not.toBeNull();
  });
});

describe("BatchScheduler invariants", () => {
  it("never exceeds its slots, delivers every token in order once, and ends idle", () => {
    const arrival = fc.record({
      gap: fc.integer({ min: 0, max: 40 }),
      prompt: fc.integer({ min: 0, max: 60 }),
      output: fc.integer({ min: 0, max: 12 }),
      abortAfter: fc.option(fc.integer({ min: 0, max: 80 }), { nil: undefined }),
    });
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 0, max: 3 }),
        fc.array(arrival, { maxLength: 25 }),
        (slots, maxQueue, arrivals) => {
          const { clock, scheduler } = setup({ slots, maxQueue, kvCacheTokens: 120 });
          const accepted: { t: Trace; aborted: boolean }[] = [];
          for (const a of arrivals) {
            clock.advance(a.gap);
            const t = trace(clock, a.prompt, a.output);
            const wasFull = scheduler.runningCount + scheduler.waitingCount >= slots + maxQueue;
            const handle = scheduler.submit(t.spec);
            if (handle === null) {
              // Refusal only happens with a full queue.
              if (scheduler.waitingCount < maxQueue) return false;
              continue;
            }
            if (wasFull) return false;
            const record = { t, aborted: false };
            accepted.push(record);
            if (a.abortAfter !== undefined) {
              clock.schedule(() => {
                if (scheduler.abort(handle)) record.aborted = true;
              }, a.abortAfter);
            }
            if (scheduler.runningCount > slots) return false;
          }
          clock.runAll();
          for (const { t, aborted } of accepted) {
            const indexes = t.tokens.map((x) => x.index);
            if (!indexes.every((v, i) => v === i)) return false;
            if (aborted) {
              if (t.finishedAt !== null) return false;
            } else if (t.finishedAt === null || indexes.length !== t.spec.outputTokens) {
              return false;
            }
          }
          return (
            scheduler.runningCount === 0 &&
            scheduler.waitingCount === 0 &&
            scheduler.kvTokensInUse === 0 &&
            clock.pending === 0
          );
        },
      ),
      { numRuns: 300 },
    );
  });
});
