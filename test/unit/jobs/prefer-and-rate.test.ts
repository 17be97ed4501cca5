import { describe, expect, it } from "vitest";
import { prefersAsync } from "../../../src/jobs/async-routes.js";
import {
  CompletionRate,
  MAX_RETRY_MS,
  MIN_RETRY_MS,
  NO_HISTORY_RETRY_MS,
} from "../../../src/jobs/completion-rate.js";

describe("Prefer: respond-async (RFC 7240)", () => {
  it.each([
    ["respond-async", true],
    ["Respond-Async", true],
    ["  respond-async  ", true],
    ["wait=10, respond-async", true],
    ["respond-async, wait=10", true],
    ["return=minimal;foo=bar, RESPOND-ASYNC;x", true],
    ['handling=lenient; note="a,b", respond-async', true],
    ["respond-async=1", true],
    ["wait=10", false],
    ["respond-asynchronously", false],
    ["x-respond-async", false],
    ['note="respond-async"', false],
    ['note="x, respond-async, y"', false],
    ['note="escaped \\" quote, respond-async"', false],
    ["", false],
  ])("%j → %s", (header, expected) => {
    expect(prefersAsync(header)).toBe(expected);
  });

  it("reads several Prefer headers", () => {
    expect(prefersAsync(["wait=5", "respond-async"])).toBe(true);
    expect(prefersAsync(["wait=5", "return=minimal"])).toBe(false);
    expect(prefersAsync(undefined)).toBe(false);
  });
});

describe("the Retry-After estimate", () => {
  function clock() {
    let t = 0;
    return { now: () => t, advance: (ms: number) => (t += ms) };
  }

  it("is 1 s with no finish seen", () => {
    const c = clock();
    const rate = new CompletionRate(c.now);
    expect(rate.queuedMs(100, 1)).toBe(NO_HISTORY_RETRY_MS);
    expect(rate.runningMs(0)).toBe(NO_HISTORY_RETRY_MS);
  });

  it("is the jobs ahead over the fleet's rate, bounded", () => {
    const c = clock();
    const rate = new CompletionRate(c.now);
    // 20 finishes in 10 s: 2 a second on this replica.
    for (let i = 0; i < 20; i++) {
      c.advance(500);
      rate.completed(400);
    }
    expect(rate.queuedMs(10, 1)).toBe(5000);
    expect(rate.queuedMs(10, 2)).toBe(2500);
    expect(rate.queuedMs(0, 1)).toBe(500);
    expect(rate.queuedMs(1, 100)).toBe(MIN_RETRY_MS);
    expect(rate.queuedMs(1e9, 1)).toBe(MAX_RETRY_MS);
  });

  it("forgets finishes older than a minute", () => {
    const c = clock();
    const rate = new CompletionRate(c.now);
    c.advance(120_000);
    for (let i = 0; i < 60; i++) rate.completed(100);
    expect(rate.perMs()).toBeCloseTo(60 / 60_000);
    c.advance(61_000);
    expect(rate.perMs()).toBeUndefined();
  });

  it("for a running job, the mean run time less what it ran", () => {
    const c = clock();
    const rate = new CompletionRate(c.now);
    rate.completed(4000);
    expect(rate.runningMs(1000)).toBe(3000);
    expect(rate.runningMs(10_000)).toBe(MIN_RETRY_MS);
  });
});
