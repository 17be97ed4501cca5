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

const admit = () => ({
  band: 0,
  tenant: "",
  weight: 1,
  deadline: performance.now() + 60_000,
  patient: false,
});

const inFlight = (p: UpstreamPool) => p.backends.map((b) => b.inFlight);

describe("Exchange", () => {
  it("takes one slot at a time: the next attempt gives back the last; settle gives back the rest, once", () => {
    const p = pool();
    const ex = new Exchange(60_000, admit());
    const first = ex.acquire(p);
    if (first instanceof Promise) throw new Error("a free slot is taken at once");
    expect(inFlight(p).reduce((a, b) => a + b)).toBe(1);
    const second = ex.acquire(p, new Set([first]));
    expect(second).not.toBe(first);
    expect(inFlight(p).reduce((a, b) => a + b)).toBe(1);
    expect(ex.attempts).toBe(2);
    ex.settle();
    ex.settle();
    expect(inFlight(p)).toEqual([0, 0]);
    expect(ex.settled).toBe(true);
  });

  it("no slot free: the next request waits, and a release hands it the slot", async () => {
    const p = pool();
    const holders = [new Exchange(60_000, admit()), new Exchange(60_000, admit())];
    for (const h of holders) expect(h.acquire(p)).not.toBeInstanceOf(Promise);
    const ex = new Exchange(60_000, admit());
    const waiting = ex.acquire(p);
    expect(waiting).toBeInstanceOf(Promise);
    expect(inFlight(p)).toEqual([1, 1]);
    expect(p.admission.queue.total).toBe(1);
    // The release is the wake-up: the slot goes straight to the waiting request.
    const freed = p.backends.find((b) => b.name === holders[0]?.backendName);
    holders[0]?.settle();
    expect(inFlight(p)).toEqual([1, 1]);
    expect(p.admission.queue.total).toBe(0);
    await expect(waiting).resolves.toBe(freed);
    expect(ex.queuedMs).toBeGreaterThanOrEqual(0);
    ex.settle();
    holders[1]?.settle();
    expect(inFlight(p)).toEqual([0, 0]);
  });

  it("a waiting request whose client leaves is out of the queue at once and takes no slot", async () => {
    const p = pool();
    const holders = [new Exchange(60_000, admit()), new Exchange(60_000, admit())];
    for (const h of holders) h.acquire(p);
    const ex = new Exchange(60_000, admit());
    const waiting = ex.acquire(p);
    ex.abort("client");
    await expect(waiting).rejects.toThrow("the client went away");
    expect(p.admission.queue.total).toBe(0);
    holders[0]?.settle();
    expect(inFlight(p).reduce((a, b) => a + b)).toBe(1);
    ex.settle();
    holders[1]?.settle();
  });

  it("abort wakes a pause at once and is remembered; after settle it changes nothing", async () => {
    const ex = new Exchange(60_000, admit());
    const paused = ex.pause(60_000);
    ex.abort("client");
    await paused;
    expect(ex.abortReason).toBe("client");
    ex.abort("total");
    expect(ex.abortReason).toBe("client");
    ex.settle();
    const done = new Exchange(60_000, admit());
    done.settle();
    done.abort("client");
    expect(done.abortReason).toBeUndefined();
  });

  it("the total timeout aborts the exchange", async () => {
    const ex = new Exchange(20, admit());
    await expect.poll(() => ex.abortReason).toBe("total");
    expect(ex.remainingMs()).toBeLessThanOrEqual(0);
    ex.settle();
  });
});
