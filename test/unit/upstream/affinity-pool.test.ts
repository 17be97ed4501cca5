/**
 * Prefix affinity inside a pool, with fake time: a keyed request goes to its key's home backend,
 * spills along the ring past the load bound or an unavailable home, and, when it has to wait,
 * waits for a slot on its home (or its next successors) for the grace only, while slots it
 * passes up go to the requests behind it.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { type AdmissionRequest, Ticket } from "../../../src/admission/admission.js";
import { parseConfig } from "../../../src/config/index.js";
import {
  type AffinityKey,
  affinityKey,
  boundFor,
  fleetLoad,
  HashRing,
  hashString,
} from "../../../src/upstream/affinity.js";
import type { Backend } from "../../../src/upstream/backend.js";
import { UpstreamPool } from "../../../src/upstream/pool.js";
import { promptBlocks } from "../../../src/upstream/prefix-model.js";

function makePool(affinity: string, backends = 3, slots = 4): UpstreamPool {
  const list = Array.from(
    { length: backends },
    (_, i) => `{ url: "http://127.0.0.1:${9001 + i}", maxConcurrency: ${slots} }`,
  ).join(", ");
  const config = parseConfig(
    `pools: { p: { models: [m], healthCheck: { enabled: false }, slowStart: { window: 0s },
       affinity: ${affinity}, backends: [${list}] } }`,
    "test",
  );
  const pool = config.pools.p;
  if (!pool) throw new Error("no pool");
  return new UpstreamPool("p", pool, { now: () => Date.now(), random: () => 0.5 });
}

/** What a request holds: its backend and when its slot was taken (to give it back). */
interface Held {
  backend: Backend;
  takenAt: number;
}

function request(key: number | undefined, over: Partial<AdmissionRequest<Backend>> = {}) {
  return {
    band: 0,
    tenant: "t",
    weight: 1,
    deadline: Date.now() + 60_000,
    retry: false,
    patient: false,
    affinity: key === undefined ? undefined : { hash: key },
    ...over,
  };
}

/** A slot now (throws when the request would have to wait). */
function now(pool: UpstreamPool, key: number | undefined): Held {
  const got = pool.acquire(request(key));
  if (got instanceof Ticket) throw new Error("had to wait");
  return { backend: got, takenAt: pool.admission.lastTake };
}

/** A request that waits; `granted` holds its slot once handed one. */
function waiting(pool: UpstreamPool, key: number | undefined, over: Partial<AdmissionRequest<Backend>> = {}) {
  const got = pool.acquire(request(key, over));
  if (!(got instanceof Ticket)) throw new Error("got a slot at once");
  const state: { granted?: Held; error?: Error; ticket: Ticket<Backend> } = { ticket: got };
  got.onGrant = (b) => {
    state.granted = { backend: b, takenAt: pool.admission.lastTake };
  };
  got.promise.catch((err: Error) => {
    state.error = err;
  });
  return state;
}

function release(pool: UpstreamPool, held: Held): void {
  pool.release(held.backend, held.takenAt);
}

/** Keys whose home (on this pool's ring) is each backend in turn. */
function keysByHome(pool: UpstreamPool, perBackend = 1): Map<Backend, number[]> {
  const ring = HashRing.build(pool.backends);
  const out = new Map<Backend, number[]>(pool.backends.map((b) => [b, []]));
  for (let i = 0; [...out.values()].some((k) => k.length < perBackend); i++) {
    const key = hashString(`key-${i}`);
    const home = ring.home(key);
    const list = home && out.get(home);
    if (list && list.length < perBackend) list.push(key);
  }
  return out;
}

function successorsOf(pool: UpstreamPool, key: number): Backend[] {
  return [...HashRing.build(pool.backends).successors(key)];
}

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

describe("a keyed request with a free slot", () => {
  it("goes to its key's home, the same backend every time, and keys spread over the pool", () => {
    const pool = makePool("{ by: prefix }", 3, 100);
    const homes = keysByHome(pool);
    for (const [home, [key]] of homes) {
      for (let i = 0; i < 5; i++) {
        const held = now(pool, key);
        expect(held.backend).toBe(home);
        release(pool, held);
      }
    }
    expect(pool.affinityDecisions).toEqual({ home: 15, spilled: 0, home_unavailable: 0, placed: 0 });
  });

  it("never puts a backend past the bound: a hot key spills along its ring order", () => {
    const pool = makePool("{ by: prefix, loadFactor: 1.25 }", 3, 100);
    const key = hashString("hot");
    const order = successorsOf(pool, key);
    const held: Held[] = [];
    for (let i = 0; i < 60; i++) {
      const total = pool.backends.reduce((n, b) => n + fleetLoad(b), 0);
      const h = now(pool, key);
      // The backend taken was within its bound before it took the request.
      expect(fleetLoad(h.backend) - 1).toBeLessThan(boundFor(total, 1, 3, 1.25));
      // ... and every backend before it in ring order was at its bound.
      for (const b of order.slice(0, order.indexOf(h.backend))) {
        expect(fleetLoad(b)).toBeGreaterThanOrEqual(boundFor(total, 1, 3, 1.25));
      }
      held.push(h);
    }
    const loads = pool.backends.map(fleetLoad);
    expect(Math.max(...loads)).toBeLessThanOrEqual(boundFor(59, 1, 3, 1.25));
    expect(pool.affinityDecisions.spilled).toBeGreaterThan(0);
    expect(pool.affinityDecisions.home + pool.affinityDecisions.spilled).toBe(60);
    for (const h of held) release(pool, h);
  });

  it("goes to the next backend on the ring while its home is drained, and back after", () => {
    const pool = makePool("{ by: prefix }", 3, 100);
    const key = hashString("session");
    const [home, next] = successorsOf(pool, key);
    if (!home || !next) throw new Error("ring");
    pool.setDrained(home.name, true);
    const away = now(pool, key);
    expect(away.backend).toBe(next);
    expect(pool.affinityDecisions.home_unavailable).toBe(1);
    release(pool, away);
    pool.setDrained(home.name, false);
    expect(now(pool, key).backend).toBe(home);
  });

  it("counts the other replicas' requests on a backend (shared slots) in its load", () => {
    const pool = makePool("{ by: prefix }", 3, 100);
    const key = hashString("shared");
    const [home, next] = successorsOf(pool, key);
    if (!home || !next) throw new Error("ring");
    expect(now(pool, key).backend).toBe(home);
    // Other replicas hold 10 requests on the home: 11 of 12 in the fleet, past ceil(1.25 x 13 / 3).
    home.othersInFlight = 10;
    expect(now(pool, key).backend).toBe(next);
    expect(pool.affinityDecisions).toEqual({ home: 1, spilled: 1, home_unavailable: 0, placed: 0 });
  });

  it("a request without a key, or a pool with affinity off, is balanced as before", () => {
    const off = makePool("{ by: off }", 3, 100);
    const key = hashString("k");
    const seen = new Set<Backend>();
    for (let i = 0; i < 30; i++) seen.add(now(off, key).backend);
    expect(seen.size).toBeGreaterThan(1);
    expect(off.affinityDecisions).toEqual({ home: 0, spilled: 0, home_unavailable: 0, placed: 0 });
  });
});

describe("a keyed request that waits", () => {
  /** A pool of three backends of one slot each, all taken; and its keys by home. */
  function full(affinity: string) {
    const pool = makePool(affinity, 3, 1);
    const homes = keysByHome(pool);
    const held = new Map<Backend, Held>();
    for (const b of pool.backends) {
      const h = now(pool, homes.get(b)?.[0]);
      held.set(h.backend, h);
    }
    expect(held.size).toBe(3);
    const [a, b, c] = pool.backends as [Backend, Backend, Backend];
    const keyOf = (x: Backend) => homes.get(x)?.[0] as number;
    return { pool, held, a, b, c, keyOf };
  }

  it("passes up a slot on another backend, which the next request takes, and gets its home's", () => {
    const { pool, held, a, c, keyOf } = full("{ by: prefix, successors: 0, grace: 1s }");
    const keyed = waiting(pool, keyOf(a));
    const plain = waiting(pool, undefined);
    release(pool, held.get(c) as Held);
    // The freed slot is on c: the keyed request waits for a, the one behind it takes c.
    expect(keyed.granted).toBeUndefined();
    expect(plain.granted?.backend).toBe(c);
    expect(pool.admission.waiting(0)).toBe(1);
    expect(pool.admission.status().waiting.interactive).toBe(1);
    release(pool, held.get(a) as Held);
    expect(keyed.granted?.backend).toBe(a);
    expect(pool.admission.waitingTotal).toBe(0);
  });

  it("an arrival whose home has a free slot but is past its bound spills at once", () => {
    const pool = makePool("{ by: prefix, successors: 0, grace: 10s }", 3, 4);
    const key = hashString("hot");
    const [home, next] = successorsOf(pool, key);
    const got: Held[] = [];
    // The second finds the home at ceil(1.25 x 2 / 3) = 1 with a free slot: it spills at once
    // (no wait); the third finds the home within ceil(1.25 x 3 / 3) = 2 again.
    for (let i = 0; i < 3; i++) got.push(now(pool, key));
    expect(got.map((h) => h.backend)).toEqual([home, next, home]);
    expect(pool.admission.waitingTotal).toBe(0);
  });

  it("takes a slot on its next successor when `successors` lets it", () => {
    const { pool, held, a, keyOf } = full("{ by: prefix, successors: 1, grace: 1s }");
    const key = keyOf(a);
    const next = successorsOf(pool, key)[1] as Backend;
    const keyed = waiting(pool, key);
    release(pool, held.get(next) as Held);
    expect(keyed.granted?.backend).toBe(next);
  });

  it("after the grace, takes any free slot", () => {
    const { pool, held, a, c, keyOf } = full("{ by: prefix, successors: 0, grace: 200ms }");
    const keyed = waiting(pool, keyOf(a));
    release(pool, held.get(c) as Held);
    expect(keyed.granted).toBeUndefined();
    vi.advanceTimersByTime(199);
    expect(keyed.granted).toBeUndefined();
    vi.advanceTimersByTime(1);
    expect(keyed.granted?.backend).toBe(c);
  });

  it("a request whose turn comes after the grace timer finds no slot is served by the next release", () => {
    const { pool, held, a, b, c, keyOf } = full("{ by: prefix, successors: 0, grace: 100ms }");
    const keyed = waiting(pool, keyOf(a));
    const plain = waiting(pool, undefined);
    release(pool, held.get(c) as Held);
    expect(plain.granted?.backend).toBe(c);
    vi.advanceTimersByTime(500);
    expect(keyed.granted).toBeUndefined();
    // Past its grace, it is first in line for any backend, ahead of later arrivals.
    const later = waiting(pool, undefined);
    release(pool, held.get(b) as Held);
    expect(keyed.granted?.backend).toBe(b);
    expect(later.granted).toBeUndefined();
  });

  it("leaves when its client does, or at its deadline, while waiting for its home", () => {
    const { pool, held, a, c, keyOf } = full("{ by: prefix, successors: 0, grace: 10s }");
    const gone = waiting(pool, keyOf(a));
    const late = waiting(pool, keyOf(a), { deadline: Date.now() + 300 });
    release(pool, held.get(c) as Held);
    // The slot on c went unused (both wait for a), and nothing else waits.
    expect(pool.admission.waiting(0)).toBe(2);
    gone.ticket.cancel(new Error("client left"));
    expect(pool.admission.waiting(0)).toBe(1);
    vi.advanceTimersByTime(300);
    expect(pool.admission.waiting(0)).toBe(0);
    return Promise.resolve().then(() => {
      expect(gone.error?.message).toBe("client left");
      expect(late.error).toMatchObject({ code: "queue_timeout" });
      expect(pool.admission.decisions[0]?.[5]).toBe(1); // timed_out
      expect(pool.admission.decisions[0]?.[6]).toBe(1); // cancelled
    });
  });

  it("no more wait so than the pool has slots: the next takes the free slot at once", () => {
    const { pool, held, a, c, keyOf } = full("{ by: prefix, successors: 0, grace: 10s }");
    const four = [0, 1, 2, 3].map(() => waiting(pool, keyOf(a)));
    release(pool, held.get(c) as Held);
    // Three (the pool's slots) wait for a; the fourth takes c.
    expect(four.filter((w) => w.granted).map((w) => w.granted?.backend)).toEqual([c]);
    expect(four[3]?.granted?.backend).toBe(c);
  });

  it("a reload that turns affinity off hands the waiting ones any slot", async () => {
    const { pool, held, a, c, keyOf } = full("{ by: prefix, successors: 0, grace: 10s }");
    const keyed = waiting(pool, keyOf(a));
    release(pool, held.get(c) as Held);
    expect(keyed.granted).toBeUndefined();
    const next = parseConfig(
      `pools: { p: { models: [m], healthCheck: { enabled: false }, slowStart: { window: 0s },
         affinity: { by: off }, backends: [${pool.backends
           .map((b) => `{ url: "${b.origin}", maxConcurrency: 1 }`)
           .join(", ")}] } }`,
      "test",
    ).pools.p;
    if (!next) throw new Error("no pool");
    await pool.reconfigure(next);
    expect(keyed.granted?.backend).toBe(c);
  });
});

describe("with a model of the engines' caches (cacheTokens)", () => {
  /** A chat body whose system prompt is `chars` characters of `app`'s own text. */
  function body(app: string, chars = 2600): Record<string, unknown> {
    let system = `You are ${app}.`;
    for (let i = 0; system.length < chars; i++) system += ` ${app}${(i * 7919) % 997}`;
    return {
      messages: [
        { role: "system", content: system.slice(0, chars) },
        { role: "user", content: "hi" },
      ],
    };
  }

  function keyOf(pool: UpstreamPool, b: Record<string, unknown>): AffinityKey {
    const affinity = pool.config.affinity;
    const hash = affinityKey(b, affinity);
    if (hash === undefined) throw new Error("no key");
    return { hash, blocks: promptBlocks(b, affinity.blockChars, pool.modelBlocks) };
  }

  function take(pool: UpstreamPool, key: AffinityKey): Held {
    const got = pool.acquire({ ...request(undefined), affinity: key });
    if (got instanceof Ticket) throw new Error("had to wait");
    return { backend: got, takenAt: pool.admission.lastTake };
  }

  function wait(pool: UpstreamPool, key: AffinityKey) {
    const got = pool.acquire({ ...request(undefined), affinity: key });
    if (!(got instanceof Ticket)) throw new Error("got a slot at once");
    const state: { granted?: Held } = {};
    got.onGrant = (b) => {
      state.granted = { backend: b, takenAt: pool.admission.lastTake };
    };
    got.promise.catch(() => undefined);
    return state;
  }

  it("places a prompt nobody holds on the least loaded backend, then sends it back there", () => {
    const pool = makePool("{ by: prefix, cacheTokens: 100000 }", 3, 100);
    const p = keyOf(pool, body("alpha"));
    const q = keyOf(pool, body("bravo"));
    const first = take(pool, p);
    // alpha's backend is busy: bravo goes to another one.
    const second = take(pool, q);
    expect(second.backend).not.toBe(first.backend);
    release(pool, first);
    release(pool, second);
    for (let i = 0; i < 5; i++) {
      const again = take(pool, p);
      expect(again.backend).toBe(first.backend);
      release(pool, again);
      const other = take(pool, q);
      expect(other.backend).toBe(second.backend);
      release(pool, other);
    }
    expect(pool.affinityDecisions).toMatchObject({ placed: 2, home: 10, spilled: 0 });
  });

  it("keeps the load bound: a hot prompt spills to a backend that then holds it too", () => {
    // No grace: an arrival past its holder's bound goes elsewhere at once instead of waiting.
    const pool = makePool("{ by: prefix, cacheTokens: 100000, loadFactor: 1.25, grace: 0s }", 3, 100);
    const hot = keyOf(pool, body("hot"));
    const held: Held[] = [];
    for (let i = 0; i < 30; i++) {
      const total = pool.backends.reduce((n, b) => n + fleetLoad(b), 0);
      const h = take(pool, hot);
      expect(fleetLoad(h.backend) - 1).toBeLessThan(boundFor(total, 1, 3, 1.25));
      held.push(h);
    }
    expect(pool.affinityDecisions.spilled).toBeGreaterThan(0);
    for (const h of held) release(pool, h);
    // Every backend that took it now holds it: the next ones all count as home.
    const before = pool.affinityDecisions.home;
    for (let i = 0; i < 6; i++) release(pool, take(pool, hot));
    expect(pool.affinityDecisions.home).toBe(before + 6);
  });

  it("an arrival whose holder is full waits for it as long as recomputing its prefix would take", () => {
    // 2,600 characters: 10 blocks of 256 held, 640 tokens, 640 ms at 1,000 tokens/s.
    const pool = makePool("{ by: prefix, cacheTokens: 100000, prefillTokensPerSecond: 1000 }", 3, 1);
    const p = keyOf(pool, body("alpha"));
    const held = take(pool, p);
    expect(pool.affinityGraceFor(p)).toBe(640);
    const next = wait(pool, p);
    vi.advanceTimersByTime(600);
    expect(next.granted).toBeUndefined();
    release(pool, held);
    expect(next.granted?.backend).toBe(held.backend);
    // Past the grace it takes another backend.
    const late = wait(pool, p);
    vi.advanceTimersByTime(640);
    expect(late.granted?.backend).toBeDefined();
    expect(late.granted?.backend).not.toBe(held.backend);
    expect(pool.affinityDecisions.home_unavailable).toBe(1);
  });

  it("a drained holder keeps its place: its prompts go elsewhere meanwhile and come back after", () => {
    const pool = makePool("{ by: prefix, cacheTokens: 100000 }", 3, 100);
    const p = keyOf(pool, body("alpha"));
    const first = take(pool, p);
    release(pool, first);
    pool.setDrained(first.backend.name, true);
    const away = take(pool, p);
    expect(away.backend).not.toBe(first.backend);
    release(pool, away);
    pool.setDrained(first.backend.name, false);
    // Both hold it now; the ring order from the key breaks the tie, as on every replica.
    const back = take(pool, p);
    expect([first.backend, away.backend]).toContain(back.backend);
  });

  it("without cacheTokens keys carry no blocks and the ring decides; the model's size in blocks", () => {
    expect(makePool("{ by: prefix }").modelBlocks).toBe(0);
    expect(makePool("{ by: header }").modelBlocks).toBe(0);
    expect(makePool("{ by: prefix, cacheTokens: 1000, blockChars: 100 }").modelBlocks).toBe(40);
  });
});
