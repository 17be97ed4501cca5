import { describe, expect, it } from "vitest";
import type { OutlierDetectionConfig } from "../../../src/config/index.js";
import { type OutlierBackend, OutlierDetector } from "../../../src/upstream/outlier-detector.js";
import { backoffMs, RetryBudget } from "../../../src/upstream/retry-budget.js";

const CONFIG: OutlierDetectionConfig = {
  enabled: true,
  consecutive5xx: 3,
  consecutiveGatewayFailure: 3,
  consecutiveConnectFailure: 1,
  baseEjectionTime: 1000,
  maxEjectionTime: 5000,
  maxEjectionPercent: 50,
  unejectOnHealthCheck: true,
};

/** The breaker reduced to "out until": eject() is what outlier detection calls on it. */
function backend(name: string): OutlierBackend & { ejectCalls: number[] } {
  const b: OutlierBackend & { ejectCalls: number[] } = {
    ejectCalls: [],
    name,
    weight: 1,
    maxConcurrency: Number.POSITIVE_INFINITY,
    backup: false,
    inFlight: 0,
    drained: false,
    healthy: true,
    ejectedUntil: 0,
    admits: (now) => now >= b.ejectedUntil,
    eject: (ms) => b.ejectCalls.push(ms),
    notBefore: 0,
    rampFrom: Number.NEGATIVE_INFINITY,
    rrCurrent: 0,
    loadPenalty: () => 1,
    consecutive5xx: 0,
    consecutiveGatewayFailures: 0,
    consecutiveConnectFailures: 0,
    ejections: 0,
  };
  return b;
}

function setup(n = 4, config = CONFIG) {
  const list = Array.from({ length: n }, (_, i) => backend(`b${i}`));
  const ejected: string[] = [];
  const detector = new OutlierDetector(
    config,
    () => list,
    (b, reason, ms) => ejected.push(`${b.name}:${reason}:${ms}`),
  );
  return { list, detector, ejected };
}

describe("outlier detection", () => {
  it("ejects after consecutive5xx, for baseEjectionTime × n, growing with each ejection up to the cap", () => {
    const { list, detector, ejected } = setup();
    const b = list[0] as OutlierBackend;
    let now = 0;
    const durations: number[] = [];
    for (let round = 0; round < 7; round++) {
      for (let i = 0; i < 3; i++) detector.record(b, "http_5xx", now);
      durations.push(b.ejectedUntil - now);
      now = b.ejectedUntil; // back in, fails again at once
    }
    expect(durations).toEqual([1000, 2000, 3000, 4000, 5000, 5000, 5000]);
    expect(ejected[0]).toBe("b0:consecutive_5xx:1000");
    expect((b as ReturnType<typeof backend>).ejectCalls).toEqual(durations); // each opened the breaker
  });

  it("a success ends the run; 4xx count as success", () => {
    const { list, detector } = setup();
    const b = list[0] as OutlierBackend;
    detector.record(b, "http_5xx", 0);
    detector.record(b, "http_5xx", 0);
    detector.record(b, "success", 0);
    detector.record(b, "http_5xx", 0);
    detector.record(b, "http_5xx", 0);
    expect(b.ejectedUntil).toBe(0);
  });

  it("one refused connect ejects at once (consecutiveConnectFailure 1)", () => {
    const { list, detector, ejected } = setup();
    detector.record(list[1] as OutlierBackend, "connect_failure", 10);
    expect((list[1] as OutlierBackend).ejectedUntil).toBe(1010);
    expect(ejected).toEqual(["b1:consecutive_connect_failure:1000"]);
  });

  it("gateway failures (resets, timeouts) eject after consecutiveGatewayFailure", () => {
    const { list, detector } = setup();
    const b = list[0] as OutlierBackend;
    detector.record(b, "gateway_failure", 0);
    detector.record(b, "gateway_failure", 0);
    expect(b.ejectedUntil).toBe(0);
    detector.record(b, "gateway_failure", 0);
    expect(b.ejectedUntil).toBe(1000);
  });

  it("never ejects more than maxEjectionPercent of the pool, but always at least one", () => {
    const { list, detector } = setup(4);
    for (const b of list) detector.record(b, "connect_failure", 0);
    expect(list.filter((b) => b.ejectedUntil > 0)).toHaveLength(2); // 50% of 4
    const small = setup(1, { ...CONFIG, maxEjectionPercent: 0 });
    small.detector.record(small.list[0] as OutlierBackend, "connect_failure", 0);
    expect(small.list[0]?.ejectedUntil).toBe(1000);
  });

  it("the ejection count decays after maxEjectionTime in good standing", () => {
    const { list, detector } = setup();
    const b = list[0] as OutlierBackend;
    detector.record(b, "connect_failure", 0); // out until 1000
    detector.record(b, "connect_failure", 1000); // n=2, out until 3000
    expect(b.ejectedUntil).toBe(3000);
    detector.record(b, "connect_failure", 3000 + 5001); // long after: n resets
    expect(b.ejectedUntil - 8001).toBe(1000);
  });

  it("off means never", () => {
    const { list, detector } = setup(4, { ...CONFIG, enabled: false });
    detector.record(list[0] as OutlierBackend, "connect_failure", 0);
    expect(list[0]?.ejectedUntil).toBe(0);
  });
});

describe("retry budget", () => {
  it.each([
    [0, 3],
    [5, 3],
    [15, 3],
    [20, 4],
    [100, 20],
    [1000, 200],
  ])("%d active requests → at most %d retries in flight (20%%, min 3)", (active, limit) => {
    const budget = new RetryBudget(20, 3);
    budget.active = active;
    expect(budget.limit).toBe(limit);
    let granted = 0;
    while (budget.tryStartRetry()) granted++;
    expect(granted).toBe(limit);
    budget.endRetry();
    expect(budget.tryStartRetry()).toBe(true);
  });

  it("full-jitter backoff stays within [0, min(max, base × 2^retry))", () => {
    expect(backoffMs(0, 25, 250, () => 0.999)).toBeLessThan(25);
    expect(backoffMs(2, 25, 250, () => 0.999)).toBeCloseTo(99.9, 1);
    expect(backoffMs(10, 25, 250, () => 0.5)).toBe(125);
    expect(backoffMs(3, 25, 250, () => 0)).toBe(0);
  });
});
