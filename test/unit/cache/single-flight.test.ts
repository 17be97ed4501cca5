import { describe, expect, it } from "vitest";
import { SingleFlight } from "../../../src/cache/single-flight.js";

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe("SingleFlight", () => {
  it("1000 concurrent calls with one key run fn once; only the leader is not shared", async () => {
    const sf = new SingleFlight<number>();
    const gate = deferred<number>();
    let calls = 0;
    const fn = () => {
      calls++;
      return gate.promise;
    };
    const all = Array.from({ length: 1000 }, () => sf.run("k", fn));
    expect(sf.waiting("k")).toBe(1000);
    expect(sf.size).toBe(1);
    gate.resolve(42);
    const results = await Promise.all(all);
    expect(calls).toBe(1);
    expect(results.every((r) => r.value === 42)).toBe(true);
    expect(results.filter((r) => !r.shared)).toHaveLength(1);
    expect(results[0]?.shared).toBe(false);
    expect(sf.size).toBe(0);
    expect(sf.waiting("k")).toBe(0);
  });

  it("runs different keys separately", async () => {
    const sf = new SingleFlight<string>();
    let calls = 0;
    const run = (key: string) =>
      sf.run(key, async () => {
        calls++;
        return key;
      });
    const [a, b] = await Promise.all([run("a"), run("b")]);
    expect([a.value, b.value, calls]).toEqual(["a", "b", 2]);
  });

  it("propagates a rejection to every caller, then forgets it", async () => {
    const sf = new SingleFlight<number>();
    const gate = deferred<number>();
    const boom = new Error("upstream down");
    const p1 = sf.run("k", () => gate.promise);
    const p2 = sf.run("k", () => Promise.resolve(0));
    gate.reject(boom);
    await expect(p1).rejects.toBe(boom);
    await expect(p2).rejects.toBe(boom);
    expect(sf.size).toBe(0);
    await expect(sf.run("k", async () => 7)).resolves.toEqual({ value: 7, shared: false });
  });

  it("turns a synchronous throw into a rejection", async () => {
    const sf = new SingleFlight<number>();
    const p = sf.run("k", () => {
      throw new Error("sync");
    });
    await expect(p).rejects.toThrow("sync");
    expect(sf.size).toBe(0);
  });

  it("has forgotten the key by the time callers resume, so a retry starts fresh", async () => {
    const sf = new SingleFlight<number>();
    let calls = 0;
    const fn = async () => ++calls;
    const first = await sf.run("k", fn);
    expect(sf.waiting("k")).toBe(0);
    const second = await sf.run("k", fn);
    expect([first.value, second.value]).toEqual([1, 2]);
    expect(second.shared).toBe(false);
  });
});
