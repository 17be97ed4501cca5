/**
 * The response cache's own rules, on the embedded store: what its memory bound counts, and how
 * the followers of a flight wait (bounded) and take over when the leader fails.
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterEach, describe, expect, it } from "vitest";
import type { CachedAnswer } from "../../../src/cache/entry.js";
import { encodeEntry } from "../../../src/cache/entry.js";
import { type Lookup, ResponseCache } from "../../../src/cache/response-cache.js";
import { parseConfig } from "../../../src/config/index.js";
import { MemoryStore } from "../../../src/store/memory-store.js";

const config = parseConfig("pools: { p: { models: [m], backends: [{ url: 'http://127.0.0.1:1' }] } }", "t")
  .pools.p?.cache;
if (!config) throw new Error("no cache config");

let stores: MemoryStore[] = [];
afterEach(async () => {
  for (const s of stores) await s.close();
  stores = [];
});

function cache(memoryBytes = 1 << 20): ResponseCache {
  const store = new MemoryStore({ sweepIntervalMs: 0 });
  stores.push(store);
  return new ResponseCache(store, memoryBytes);
}

function answer(content: string, extra: Record<string, unknown> = {}): CachedAnswer {
  const now = Date.now();
  return {
    v: 1,
    route: "/v1/chat/completions",
    model: "m",
    json: { choices: [{ index: 0, message: { role: "assistant", content } }], ...extra },
    createdAt: now,
    freshUntil: now + 60_000,
    staleUntil: now + 60_000,
  };
}

function gc(): void {
  setFlagsFromString("--expose-gc");
  (runInNewContext("gc") as () => void)();
}

describe("ResponseCache memory", () => {
  it("its bound counts what it holds: 16 MB of entries heavy in small objects hold about 16 MB", async () => {
    const bound = 16 << 20;
    const c = cache(bound);
    // logprobs-like answers: many tiny objects, whose decoded tree is several times its JSON.
    const tokens = Array.from({ length: 2000 }, (_, i) => ({
      token: `t${i}`,
      logprob: -i / 1000,
      bytes: [116],
    }));
    gc();
    const before = process.memoryUsage();
    const template = JSON.stringify({ content: tokens });
    for (let i = 0; i < 400; i++) {
      // A fresh tree per answer, as a parsed backend answer is.
      const logprobs: unknown = JSON.parse(template);
      await c.put(`cache:t:m:${i}`, answer(`a${i}`, { logprobs }), 1 << 20);
    }
    gc();
    const after = process.memoryUsage();
    expect(c.memoryBytes).toBeLessThanOrEqual(bound);
    expect(c.memoryBytes).toBeGreaterThan(bound / 2);
    // What it holds is the encoded bytes it counts (Buffers, outside the JS heap), so the heap
    // barely grows. The old LRU held decoded trees in the heap: ~2.8x its bound here. (Buffers
    // are not measured: other tests' sockets in the same process free theirs at random times.)
    const heapGrown = after.heapUsed - before.heapUsed;
    expect(heapGrown).toBeLessThan(bound / 4);
  });

  it("the keys of request bodies it remembers count in its memory bound with the entries", async () => {
    const bound = 64 * 1024;
    const c = cache(bound);
    let made = 0;
    const make = (i: number) => () => {
      made++;
      return `cache:t:m:${i}`;
    };
    const body = (i: number) => Buffer.from(`{"model":"m","temperature":0,"n":${i}}`);
    expect(c.keyOf("t", "p", "/v1/chat/completions", body(1), make(1))).toBe("cache:t:m:1");
    expect(c.keyOf("t", "p", "/v1/chat/completions", body(1), make(99))).toBe("cache:t:m:1");
    expect(made).toBe(1);
    expect(c.memoryBytes).toBeGreaterThan(0);
    for (let i = 0; i < 2000; i++) {
      c.keyOf("t", "p", "/v1/chat/completions", body(i), make(i));
      await c.put(`cache:t:m:${i}`, answer(`a${i}`), 1 << 20);
      expect(c.memoryBytes).toBeLessThanOrEqual(bound);
    }
    expect(c.memoryBytes).toBeGreaterThan(bound / 2);
  });

  it("a hit decodes the entry it stored, equal to what was put; a non-streamed hit decodes nothing", async () => {
    const c = cache();
    const a = answer("hello");
    await c.put("cache:t:m:k", a, 1 << 20);
    expect(c.memoryBytes).toBe(encodeEntry(a).length);
    expect((await c.lookup("cache:t:m:k", false)).fresh?.answer).toEqual(a);
    // A non-streamed hit gets the JSON body, rendered once and then kept (and counted) beside it.
    const first = (await c.lookup("cache:t:m:k", true)).fresh?.body;
    expect(JSON.parse(first?.toString() ?? "")).toEqual(a.json);
    expect(c.memoryBytes).toBe(encodeEntry(a).length + (first?.length ?? 0));
    const again = await c.lookup("cache:t:m:k", true);
    expect(again.fresh?.body).toBe(first);
    expect(again.fresh?.answer).toBeUndefined(); // nothing decoded
  });

  it("the memory tier answers in the same turn, hit or miss (no promise)", async () => {
    const c = cache();
    const miss = c.lookup("cache:t:m:absent", true);
    expect(miss).not.toBeInstanceOf(Promise);
    expect(miss).toEqual({});
    await c.put("cache:t:m:k", answer("now"), 1 << 20);
    const hit = c.lookup("cache:t:m:k", true);
    expect(hit).not.toBeInstanceOf(Promise);
    expect(JSON.parse((hit as Lookup).fresh?.body?.toString() ?? "")).toEqual(answer("now").json);
  });
});

describe("ResponseCache flights", () => {
  it("followers wait at most waitMs for a leader that never lands, then go on alone", async () => {
    const c = cache();
    const leader = await c.join("k", config, 10_000);
    expect(leader.role).toBe("leader");
    const followers = await Promise.all([c.join("k", config, 50), c.join("k", config, 50)]);
    expect(followers).toEqual([
      { role: "follower", answer: undefined },
      { role: "follower", answer: undefined },
    ]);
  });

  it("when the leader fails, the next follower leads and the rest get its answer", async () => {
    const c = cache();
    const first = await c.join("k", config, 10_000);
    const waiting = [1, 2, 3].map(() => c.join("k", config, 10_000));
    if (first.role !== "leader") throw new Error("expected a leader");
    await first.finish(undefined);
    const [second, ...rest] = waiting;
    const next = await second;
    expect(next?.role).toBe("leader");
    if (next?.role !== "leader") return;
    const a = answer("second try");
    await next.finish(a);
    expect(await Promise.all(rest)).toEqual([
      { role: "follower", answer: a },
      { role: "follower", answer: a },
    ]);
    // The flight is over: the next miss leads a new one.
    expect((await c.join("k", config, 10_000)).role).toBe("leader");
  });

  it("a leader whose answer is too large to store hands the lead on too", async () => {
    const c = cache();
    const first = await c.join("k", config, 10_000);
    const follower = c.join("k", config, 10_000);
    if (first.role !== "leader") throw new Error("expected a leader");
    await first.finish(answer("x".repeat(config.maxEntrySize + 10)));
    expect((await follower).role).toBe("leader");
  });
});
