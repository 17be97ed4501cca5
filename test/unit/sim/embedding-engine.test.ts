import { describe, expect, it } from "vitest";
import {
  type EmbedCallSpec,
  EmbeddingEngine,
  type EmbeddingEngineOptions,
  type EmbedTiming,
  embedCallDurationMs,
} from "../../../src/sim/embedding-engine.js";
import { ManualClock } from "./manual-clock.js";

const timing: EmbedTiming = { embedCallMs: 8, embedPerInputMs: 0.5, prefillMsPerToken: 0.1 };

function setup(overrides: Partial<EmbeddingEngineOptions> = {}) {
  const clock = new ManualClock();
  const engine = new EmbeddingEngine({
    slots: 1,
    maxQueue: 4,
    timing,
    scale: () => 1,
    schedule: clock.schedule,
    ...overrides,
  });
  return { clock, engine };
}

function call(clock: ManualClock, inputs: number, promptTokens: number) {
  const done: { at: number | null; spec: EmbedCallSpec } = {
    at: null,
    spec: {
      inputs,
      promptTokens,
      onFinish: () => {
        done.at = clock.now;
      },
    },
  };
  return done;
}

describe("embedCallDurationMs", () => {
  it.each([
    // inputs, tokens, scale, expected
    [1, 0, 1, 8.5],
    [64, 0, 1, 40],
    [64, 640, 1, 104],
    [1, 10, 2, 19],
    [64, 640, 0, 0],
  ])("%d inputs, %d tokens, scale %d -> %d ms", (inputs, tokens, scale, expected) => {
    expect(embedCallDurationMs(timing, inputs, tokens, scale)).toBeCloseTo(expected, 9);
  });
});

describe("EmbeddingEngine", () => {
  it("runs one call at a time: 4 one-input calls cost 4 overheads, one 4-input call costs one", () => {
    const { clock, engine } = setup();
    const apart = [1, 2, 3, 4].map(() => call(clock, 1, 0));
    for (const c of apart) expect(engine.submit(c.spec)).not.toBeNull();
    expect(engine.runningCount).toBe(1);
    expect(engine.waitingCount).toBe(3);
    clock.runAll();
    expect(apart.map((c) => c.at)).toEqual([8.5, 17, 25.5, 34]);

    const merged = call(clock, 4, 0);
    const start = clock.now;
    engine.submit(merged.spec);
    clock.runAll();
    expect((merged.at ?? 0) - start).toBe(10);
  });

  it("runs embedSlots calls at once", () => {
    const { clock, engine } = setup({ slots: 2 });
    const calls = [1, 2, 3].map(() => call(clock, 1, 0));
    for (const c of calls) engine.submit(c.spec);
    expect(engine.runningCount).toBe(2);
    clock.runAll();
    expect(calls.map((c) => c.at)).toEqual([8.5, 8.5, 17]);
  });

  it("refuses past maxQueue, and hands a dropped call's slot to the next at once", () => {
    const { clock, engine } = setup({ maxQueue: 2 });
    const [a, b, c, d] = [1, 2, 3, 4].map(() => call(clock, 1, 0));
    const ha = engine.submit(a?.spec as EmbedCallSpec);
    const hb = engine.submit(b?.spec as EmbedCallSpec);
    engine.submit(c?.spec as EmbedCallSpec);
    expect(engine.submit(d?.spec as EmbedCallSpec)).toBeNull();
    clock.advance(4);
    // The running call's client leaves: b starts now, not when a would have ended.
    expect(engine.abort(ha as NonNullable<typeof ha>)).toBe(true);
    expect(engine.abort(ha as NonNullable<typeof ha>)).toBe(false);
    expect(engine.runningCount).toBe(1);
    clock.runAll();
    expect(a?.at).toBeNull();
    expect(b?.at).toBe(12.5);
    expect(c?.at).toBe(21);
    // A waiting call dropped never runs.
    const e = call(clock, 1, 0);
    const f = call(clock, 1, 0);
    engine.submit(e.spec);
    const hf = engine.submit(f.spec);
    expect(engine.abort(hf as NonNullable<typeof hf>)).toBe(true);
    expect(engine.abort(hb as NonNullable<typeof hb>)).toBe(false);
    clock.runAll();
    expect(e.at).not.toBeNull();
    expect(f.at).toBeNull();
  });

  it("drops everything on close, without callbacks", () => {
    const { clock, engine } = setup();
    const a = call(clock, 1, 0);
    const b = call(clock, 1, 0);
    engine.submit(a.spec);
    engine.submit(b.spec);
    engine.close();
    clock.runAll();
    expect([a.at, b.at]).toEqual([null, null]);
    expect(engine.submit(call(clock, 1, 0).spec)).toBeNull();
  });
});
