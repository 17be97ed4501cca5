import { describe, expect, it } from "vitest";
import { type Batch, Batcher, type BatchLimits, type FlushReason } from "../../../src/microbatch/batcher.js";
import type { MemberInput } from "../../../src/microbatch/merge.js";
import { ManualClock } from "../sim/manual-clock.js";

interface M {
  name: string;
  input: MemberInput;
}

const LIMITS: BatchLimits = { maxInputs: 4, maxTokens: 100, windowMs: 5 };

function m(name: string, inputs = 1, tokens = 1): M {
  return { name, input: { kind: "text", items: Array.from({ length: inputs }, () => name), tokens } };
}

function setup() {
  const clock = new ManualClock();
  const sent: { at: number; names: string[]; reason: FlushReason; inputs: number; tokens: number }[] = [];
  const batcher = new Batcher<M>((batch: Batch<M>, reason) => {
    sent.push({
      at: clock.now,
      names: batch.members.map((x) => x.name),
      reason,
      inputs: batch.inputs,
      tokens: batch.tokens,
    });
  }, clock.schedule);
  return { clock, sent, batcher };
}

describe("Batcher", () => {
  it("sends a batch when its window ends, counted from its first request", () => {
    const { clock, sent, batcher } = setup();
    batcher.add("k", m("a"), LIMITS);
    clock.advance(3);
    batcher.add("k", m("b"), LIMITS);
    clock.advance(1);
    expect(sent).toEqual([]);
    clock.advance(1);
    expect(sent).toEqual([{ at: 5, names: ["a", "b"], reason: "window", inputs: 2, tokens: 2 }]);
    expect(batcher.size).toBe(0);
  });

  it("keeps keys apart", () => {
    const { clock, sent, batcher } = setup();
    batcher.add("x", m("a"), LIMITS);
    batcher.add("y", m("b"), LIMITS);
    batcher.add("x", m("c"), LIMITS);
    clock.runAll();
    expect(sent.map((s) => s.names)).toEqual([["a", "c"], ["b"]]);
  });

  it("sends at once when full of inputs or tokens, with no timer left behind", () => {
    const { clock, sent, batcher } = setup();
    batcher.add("k", m("a", 3), LIMITS);
    batcher.add("k", m("b", 1), LIMITS);
    expect(sent).toEqual([{ at: 0, names: ["a", "b"], reason: "max_inputs", inputs: 4, tokens: 2 }]);
    batcher.add("k", m("c", 1, 60), LIMITS);
    batcher.add("k", m("d", 1, 40), LIMITS);
    expect(sent[1]).toMatchObject({ names: ["c", "d"], reason: "max_tokens", tokens: 100 });
    expect(clock.pending).toBe(0);
  });

  it("sends the open batch first when a request would overfill it; the request opens the next", () => {
    const { clock, sent, batcher } = setup();
    batcher.add("k", m("a", 3), LIMITS);
    batcher.add("k", m("b", 2), LIMITS);
    expect(sent).toEqual([{ at: 0, names: ["a"], reason: "max_inputs", inputs: 3, tokens: 1 }]);
    batcher.add("k", m("c", 1, 98), LIMITS);
    batcher.add("k", m("d", 1, 2), LIMITS);
    expect(sent[1]).toMatchObject({ names: ["b", "c"], reason: "max_tokens", tokens: 99 });
    clock.runAll();
    expect(sent[2]).toMatchObject({ names: ["d"], reason: "window", at: 5 });
  });

  it("takes no request larger than a whole batch", () => {
    const { clock, sent, batcher } = setup();
    expect(batcher.add("k", m("big", 5), LIMITS)).toBe(false);
    expect(batcher.add("k", m("long", 1, 101), LIMITS)).toBe(false);
    expect(batcher.add("k", m("fits", 4, 100), LIMITS)).toBe(true);
    clock.runAll();
    expect(sent.map((s) => s.names)).toEqual([["fits"]]);
  });

  it("drops a request that leaves before its batch goes; an empty batch makes no call", () => {
    const { clock, sent, batcher } = setup();
    const a = m("a");
    const b = m("b");
    batcher.add("k", a, LIMITS);
    batcher.add("k", b, LIMITS);
    expect(batcher.remove("k", a)).toBe(true);
    expect(batcher.remove("k", a)).toBe(false);
    clock.runAll();
    expect(sent).toEqual([{ at: 5, names: ["b"], reason: "window", inputs: 1, tokens: 1 }]);
    expect(batcher.remove("k", b)).toBe(false);

    const c = m("c");
    batcher.add("k", c, LIMITS);
    batcher.remove("k", c);
    expect(batcher.size).toBe(0);
    expect(clock.pending).toBe(0);
    clock.runAll();
    expect(sent).toHaveLength(1);
  });

  it("a window of 0 still sends on the next turn, with every request that came in this one", () => {
    const { clock, sent, batcher } = setup();
    const zero = { ...LIMITS, windowMs: 0 };
    batcher.add("k", m("a"), zero);
    batcher.add("k", m("b"), zero);
    expect(sent).toEqual([]);
    clock.advance(0);
    expect(sent[0]?.names).toEqual(["a", "b"]);
  });
});
