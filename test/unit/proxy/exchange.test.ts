/** The exchange's slot pairing, abort and settle, on a real pool that is never called. */
import { afterEach, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/index.js";
import { Exchange } from "../../../src/proxy/exchange.js";
import { UpstreamPool } from "../../../src/upstream/pool.js";

const config = parseConfig(
  `pools:
  p:
    models: [m]
    backends:
      - { url: "http://127.0.0.1:1", name: a, maxConcurrency: 1 }
      - { url: "http://127.0.0.1:2", name: b, maxConcurrency: 1 }
    healthCheck: { enabled: false }`,
  "test",
);

let pools: UpstreamPool[] = [];
afterEach(async () => {
  for (const p of pools) await p.close();
  pools = [];
});

function pool(): UpstreamPool {
  const poolConfig = config.pools.p;
  if (!poolConfig) throw new Error("no pool");
  const p = new UpstreamPool("p", poolConfig);
  pools.push(p);
  return p;
}

const inFlight = (p: UpstreamPool) => p.backends.map((b) => b.inFlight);

describe("Exchange", () => {
  it("takes one slot at a time: the next attempt gives back the last; settle gives back the rest, once", () => {
    const p = pool();
    const ex = new Exchange(60_000);
    const first = ex.acquire(p);
    expect(inFlight(p).reduce((a, b) => a + b)).toBe(1);
    const second = ex.acquire(p, new Set(first ? [first] : []));
    expect(second).not.toBe(first);
    expect(inFlight(p).reduce((a, b) => a + b)).toBe(1);
    expect(ex.attempts).toBe(2);
    ex.settle();
    ex.settle();
    expect(inFlight(p)).toEqual([0, 0]);
    expect(ex.settled).toBe(true);
  });

  it("no slot free: acquire takes nothing", () => {
    const p = pool();
    const holders = [new Exchange(60_000), new Exchange(60_000)];
    for (const h of holders) expect(h.acquire(p)).toBeDefined();
    const ex = new Exchange(60_000);
    expect(ex.acquire(p)).toBeUndefined();
    expect(inFlight(p)).toEqual([1, 1]);
    // A release is what a waiting request could take.
    holders[0]?.settle();
    expect(ex.acquire(p)).toBeDefined();
    ex.settle();
    holders[1]?.settle();
    expect(inFlight(p)).toEqual([0, 0]);
  });

  it("abort wakes a pause at once and is remembered; after settle it changes nothing", async () => {
    const ex = new Exchange(60_000);
    const paused = ex.pause(60_000);
    ex.abort("client");
    await paused;
    expect(ex.abortReason).toBe("client");
    ex.abort("total");
    expect(ex.abortReason).toBe("client");
    ex.settle();
    const done = new Exchange(60_000);
    done.settle();
    done.abort("client");
    expect(done.abortReason).toBeUndefined();
  });

  it("the total timeout aborts the exchange", async () => {
    const ex = new Exchange(20);
    await expect.poll(() => ex.abortReason).toBe("total");
    expect(ex.remainingMs()).toBeLessThanOrEqual(0);
    ex.settle();
  });
});
