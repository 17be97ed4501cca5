import { Counter, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { FastCounter, FastHistogram } from "../../../src/metrics/fast.js";

/** The fast metrics must read exactly like prom-client's own, fed the same observations. */
describe("fast metrics render as prom-client's", () => {
  it("histogram", async () => {
    const mine = new Registry();
    const theirs = new Registry();
    const buckets = [0.005, 0.1, 1, 10];
    const fast = new FastHistogram(
      { name: "h_seconds", help: "h", labelNames: ["a", "b"], registers: [mine] },
      buckets,
    );
    const ref = new Histogram({
      name: "h_seconds",
      help: "h",
      labelNames: ["a", "b"],
      buckets,
      registers: [theirs],
    });
    for (const [a, b, v] of [
      ["x", "1", 0.001],
      ["x", "1", 0.5],
      ["y", "2", 20],
      ["x", "1", 0.1],
    ] as const) {
      fast.bind(a, b).observe(v);
      ref.observe({ a, b }, v);
    }
    expect(await mine.metrics()).toBe(await theirs.metrics());
  });

  it("counter", async () => {
    const mine = new Registry();
    const theirs = new Registry();
    const fast = new FastCounter({ name: "c_total", help: "c", labelNames: ["k"], registers: [mine] });
    const ref = new Counter({ name: "c_total", help: "c", labelNames: ["k"], registers: [theirs] });
    fast.bind("a").inc();
    fast.bind("a").inc(2);
    fast.bind("b").inc();
    ref.inc({ k: "a" });
    ref.inc({ k: "a" }, 2);
    ref.inc({ k: "b" });
    expect(await mine.metrics()).toBe(await theirs.metrics());
  });
});
