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

const names = (members: readonly M[]) => members.map((x) => x.name);

/** A batcher whose sent batches are kept, to be taken by the test as a call would take them. */
function setup(takeAtOnce = true) {
  const clock = new ManualClock();
  const sent: { at: number; batch: Batch<M>; reason: FlushReason; names: string[] }[] = [];
  const calls: string[][] = [];
  const batcher = new Batcher<M>((batch, reason) => {
    sent.push({ at: clock.now, batch, reason, names: names(batch.members) });
    // A free slot: the call takes the batch at once, as the forwarder's dispatch does.
    if (takeAtOnce) calls.push(names(batcher.take(batch)));
  }, clock.schedule);
  return { clock, sent, calls, batcher };
}

describe("Batcher", () => {
  it("sends a batch when its window ends, counted from its first request", () => {
    const { clock, sent, calls, batcher } = setup();
    batcher.add("k", m("a"), LIMITS);
    clock.advance(3);
    batcher.add("k", m("b"), LIMITS);
    clock.advance(1);
    expect(sent).toEqual([]);
    clock.advance(1);
    expect(sent.map((s) => [s.at, s.reason, s.names])).toEqual([[5, "window", ["a", "b"]]]);
    expect(calls).toEqual([["a", "b"]]);
    expect(batcher.size).toBe(0);
  });

  it("keeps keys apart", () => {
    const { clock, calls, batcher } = setup();
    batcher.add("x", m("a"), LIMITS);
    batcher.add("y", m("b"), LIMITS);
    batcher.add("x", m("c"), LIMITS);
    clock.runAll();
    expect(calls).toEqual([["a", "c"], ["b"]]);
  });

  it("sends at once when full of inputs or tokens, with no timer left behind", () => {
    const { clock, sent, calls, batcher } = setup();
    batcher.add("k", m("a", 3), LIMITS);
    batcher.add("k", m("b", 1), LIMITS);
    expect(sent.map((s) => [s.at, s.reason])).toEqual([[0, "max_inputs"]]);
    batcher.add("k", m("c", 1, 60), LIMITS);
    batcher.add("k", m("d", 1, 40), LIMITS);
    expect(sent[1]).toMatchObject({ names: ["c", "d"], reason: "max_tokens" });
    expect(sent[1]?.batch.tokens).toBe(100);
    expect(calls).toEqual([
      ["a", "b"],
      ["c", "d"],
    ]);
    expect(clock.pending).toBe(0);
  });

  it("sends the batch first when a request would overfill it; the request opens the next", () => {
    const { clock, sent, batcher } = setup();
    batcher.add("k", m("a", 3), LIMITS);
    batcher.add("k", m("b", 2), LIMITS);
    expect(sent.map((s) => [s.reason, s.names])).toEqual([["max_inputs", ["a"]]]);
    batcher.add("k", m("c", 1, 98), LIMITS);
    batcher.add("k", m("d", 1, 2), LIMITS);
    expect(sent[1]).toMatchObject({ names: ["b", "c"], reason: "max_tokens" });
    clock.runAll();
    expect(sent[2]).toMatchObject({ names: ["d"], reason: "window", at: 5 });
  });

  it("takes no request larger than a whole batch", () => {
    const { clock, calls, batcher } = setup();
    expect(batcher.add("k", m("big", 5), LIMITS)).toBe(false);
    expect(batcher.add("k", m("long", 1, 101), LIMITS)).toBe(false);
    expect(batcher.add("k", m("fits", 4, 100), LIMITS)).toBe(true);
    clock.runAll();
    expect(calls).toEqual([["fits"]]);
  });

  it("a batch waiting for its slot keeps taking requests up to its limits, then the next one opens", () => {
    const { clock, sent, batcher } = setup(false);
    batcher.add("k", m("a"), LIMITS);
    clock.advance(5);
    expect(sent.map((s) => [s.reason, s.names])).toEqual([["window", ["a"]]]);
    const waiting = sent[0]?.batch as Batch<M>;
    expect(waiting.state).toBe("waiting");
    // The slot is busy: later requests ride in the same call.
    batcher.add("k", m("b"), LIMITS);
    batcher.add("k", m("c", 2), LIMITS);
    expect(names(waiting.members)).toEqual(["a", "b", "c"]);
    expect(waiting.inputs).toBe(4);
    // Full: the next request opens a new batch, with a window of its own.
    batcher.add("k", m("d"), LIMITS);
    expect(names(batcher.take(waiting))).toEqual(["a", "b", "c"]);
    expect(waiting.state).toBe("taken");
    batcher.add("k", m("e"), LIMITS);
    clock.advance(5);
    expect(sent[1]?.names).toEqual(["d", "e"]);
    // A taken batch takes nobody more.
    const next = sent[1]?.batch as Batch<M>;
    batcher.take(next);
    batcher.add("k", m("f"), LIMITS);
    expect(names(next.members)).toEqual(["d", "e"]);
  });

  it("drops a request that leaves before its batch is taken; an empty batch makes no call", () => {
    const { clock, sent, calls, batcher } = setup();
    const a = m("a");
    const b = m("b");
    batcher.add("k", a, LIMITS);
    batcher.add("k", b, LIMITS);
    expect(batcher.remove(a)?.members.map((x) => x.name)).toEqual(["b"]);
    expect(batcher.remove(a)).toBeUndefined();
    clock.runAll();
    expect(calls).toEqual([["b"]]);
    // Taken: its members are the call's, and no longer in any batch.
    expect(batcher.remove(b)).toBeUndefined();

    const c = m("c");
    batcher.add("k", c, LIMITS);
    expect(batcher.remove(c)?.members).toEqual([]);
    expect(batcher.size).toBe(0);
    expect(clock.pending).toBe(0);
    clock.runAll();
    expect(sent).toHaveLength(1);
  });

  it("a waiting batch left empty says so, and the next request opens a new one", () => {
    const { clock, sent, batcher } = setup(false);
    const a = m("a");
    batcher.add("k", a, LIMITS);
    clock.advance(5);
    const waiting = sent[0]?.batch as Batch<M>;
    expect(batcher.remove(a)).toBe(waiting);
    expect(waiting.members).toEqual([]);
    batcher.add("k", m("b"), LIMITS);
    expect(waiting.members).toEqual([]);
    clock.advance(5);
    expect(sent[1]?.names).toEqual(["b"]);
  });

  it("a window of 0 still sends on the next turn, with every request that came in this one", () => {
    const { clock, calls, batcher } = setup();
    const zero = { ...LIMITS, windowMs: 0 };
    batcher.add("k", m("a"), zero);
    batcher.add("k", m("b"), zero);
    expect(calls).toEqual([]);
    clock.advance(0);
    expect(calls).toEqual([["a", "b"]]);
  });
});
