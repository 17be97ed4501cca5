/**
 * The gateway's model of the engines' prefix caches (src/upstream/prefix-model.ts): a prompt's
 * chained block hashes, one backend's LRU of them (checked against the simulator's cache, which
 * models vLLM's), and the pick that sends a prompt where its prefix is, within the load bound.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { PrefixCache } from "../../../src/sim/prefix-cache.js";
import { boundFor, HashRing, hashString } from "../../../src/upstream/affinity.js";
import {
  type CachedPickOptions,
  CacheModel,
  pickCached,
  promptBlocks,
} from "../../../src/upstream/prefix-model.js";

function text(n: number, seed = 1): string {
  let s = "";
  let x = seed;
  while (s.length < n) {
    x = (x * 1103515245 + 12345) >>> 0;
    s += String.fromCharCode(97 + ((x >>> 16) % 26));
  }
  return s;
}

const blocksOf = (prompt: string, blockChars = 16, max = 1000) =>
  promptBlocks({ prompt }, blockChars, max) ?? new Uint32Array();

describe("promptBlocks", () => {
  it("hashes only full blocks, each chained over the ones before it", () => {
    const a = text(100);
    expect(blocksOf(a)).toHaveLength(6);
    expect(blocksOf(a.slice(0, 95))).toHaveLength(5);
    expect(blocksOf(a.slice(0, 15))).toHaveLength(0);
    // A change in block 3 changes blocks 3 onwards, never the ones before.
    const b = `${a.slice(0, 50)}X${a.slice(51)}`;
    const [x, y] = [blocksOf(a), blocksOf(b)];
    expect([...y.subarray(0, 3)]).toEqual([...x.subarray(0, 3)]);
    for (let i = 3; i < 6; i++) expect(y[i]).not.toBe(x[i]);
    // The same text at another position is another block.
    const shifted = blocksOf(`Z${a}`);
    expect(shifted[0]).not.toBe(x[0]);
  });

  it("reads the prompt as the affinity key does: message roles and texts, parts as a string", () => {
    const system = text(200, 3);
    const asString = promptBlocks({ messages: [{ role: "system", content: system }] }, 32, 100);
    const asParts = promptBlocks(
      {
        messages: [
          {
            role: "system",
            content: [
              { type: "text", text: system.slice(0, 77) },
              { type: "image_url", image_url: { url: "data:," } },
              { type: "text", text: system.slice(77) },
            ],
          },
        ],
      },
      32,
      100,
    );
    expect(asParts).toEqual(asString);
    const asUser = promptBlocks({ messages: [{ role: "user", content: system }] }, 32, 100);
    expect(asUser?.[0]).not.toBe(asString?.[0]);
  });

  it("counts token ids four characters each, stops at maxBlocks, and has none without a prompt", () => {
    expect(promptBlocks({ prompt: [1, 2, 3, 4, 5, 6, 7, 8] }, 16, 10)).toHaveLength(2);
    expect(promptBlocks({ prompt: text(1000) }, 16, 10)).toHaveLength(10);
    expect(promptBlocks({ input: "x" }, 16, 10)).toBeUndefined();
    expect(promptBlocks(null, 16, 10)).toBeUndefined();
  });
});

describe("CacheModel", () => {
  it("holds the leading blocks sent, evicting the least recent past its capacity", () => {
    const m = new CacheModel(10);
    const a = blocksOf(text(16 * 6, 1));
    const b = blocksOf(text(16 * 6, 2));
    m.touch(a, 0);
    expect(m.match(a)).toBe(6);
    expect(m.match(b)).toBe(0);
    m.touch(b, 1);
    // Ten blocks: a lost its tail (its last block was touched first, so it is the oldest).
    expect(m.size).toBe(10);
    expect(m.match(b)).toBe(6);
    expect(m.match(a)).toBe(4);
  });

  it("room: unbounded while the blocks fit, else how long ago the last block they evict was sent", () => {
    const m = new CacheModel(4);
    expect(m.room(4, 0)).toBe(Number.POSITIVE_INFINITY);
    m.touch([1, 2], 100);
    m.touch([3], 200);
    expect(m.room(1, 300)).toBe(Number.POSITIVE_INFINITY);
    // Two more evict block 2 (sent at 100, as block 1: the pair was touched together).
    expect(m.room(3, 300)).toBe(200);
    // Four evict up to block 3, sent at 200.
    expect(m.room(4, 300)).toBe(100);
    expect(m.room(5, 300)).toBe(Number.NEGATIVE_INFINITY);
    m.resize(1);
    expect(m.size).toBe(1);
    m.clear();
    expect(m.size).toBe(0);
  });

  it("matches the simulator's LRU block for block when it sees the same prompts (property)", () => {
    const heads = [0, 1, 2, 3, 4, 5].map((i) => text(16 * (3 + i), i + 10));
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 1, max: 40 })), {
          minLength: 1,
          maxLength: 60,
        }),
        fc.integer({ min: 4, max: 40 }),
        (prompts, capacity) => {
          const engine = new PrefixCache(capacity, 16);
          const model = new CacheModel(capacity);
          for (const [head, tail] of prompts) {
            // A shared head, a private tail whose length is not a multiple of the block size.
            const prompt = `${heads[head]}${text(tail * 16 + 5, tail * 31 + head)}`;
            const blocks = blocksOf(prompt);
            expect(model.match(blocks)).toBe(engine.peek(prompt).hitBlocks);
            engine.process(prompt);
            model.touch(blocks, 0);
            expect(model.size).toBe(engine.size);
          }
        },
      ),
    );
  });
});

interface Node {
  name: string;
  weight: number;
  load: number;
  ok: boolean;
  model: CacheModel;
}

function fleet(weights: number[], capacity = 100): Node[] {
  return weights.map((weight, i) => ({
    name: `gpu-${i}`,
    weight,
    load: 0,
    ok: true,
    model: new CacheModel(capacity),
  }));
}

function options(nodes: Node[], prompt: string, over: Partial<CachedPickOptions<Node>> = {}) {
  const blocks = blocksOf(prompt);
  return {
    ring: HashRing.build(nodes),
    key: { hash: hashString(prompt.slice(0, 32)), blocks },
    blocks,
    candidates: (b: Node) => b.ok,
    loadOf: (b: Node) => b.load,
    weightOf: (b: Node) => b.weight,
    loadFactor: 1.25,
    modelOf: (b: Node) => b.model,
    minBlocks: 2,
    now: 1000,
    ...over,
  } satisfies CachedPickOptions<Node>;
}

describe("pickCached", () => {
  const prompt = text(16 * 8, 42);

  it("sends a prompt to the backend holding its longest prefix, wherever its ring home is", () => {
    const nodes = fleet([1, 1, 1]);
    const [a, b, c] = nodes as [Node, Node, Node];
    const blocks = blocksOf(prompt);
    b.model.touch(blocks.subarray(0, 3), 0);
    c.model.touch(blocks.subarray(0, 6), 0);
    const pick = pickCached(options(nodes, prompt));
    expect(pick).toMatchObject({ backend: c, outcome: "home", bounded: true, matched: 6 });
    // Past c's bound, the shorter holder b, not a that holds nothing.
    c.load = 5;
    a.load = 1;
    b.load = 1;
    expect(pickCached(options(nodes, prompt))).toMatchObject({ backend: b, outcome: "spilled", matched: 3 });
    // c full: it cannot take the request but still counts in the pool (the pool's `counted`).
    c.ok = false;
    expect(pickCached(options(nodes, prompt, { counted: (n) => n === c }))).toMatchObject({
      backend: b,
      outcome: "home_unavailable",
    });
    // Drained or unhealthy (not counted): b, holding the longest prefix left, is the home.
    expect(pickCached(options(nodes, prompt))?.outcome).toBe("home");
  });

  it("a preamble shorter than minBlocks does not count as holding the prompt", () => {
    const nodes = fleet([1, 1]);
    const [a, b] = nodes as [Node, Node];
    a.model.touch(blocksOf(prompt).subarray(0, 1), 0);
    a.load = 1;
    const pick = pickCached(options(nodes, prompt));
    expect(pick).toMatchObject({ backend: b, outcome: "placed" });
  });

  it("places a prompt nobody holds on the least loaded per weight, then where it evicts the least", () => {
    const nodes = fleet([2, 1, 1], 10);
    const [a, b, c] = nodes as [Node, Node, Node];
    // a: weight 2 and one in flight, (1 + 1) / 2 = 1, ties with the idle b and c.
    a.load = 1;
    b.model.touch(blocksOf(text(16 * 10, 7)), 500);
    c.model.touch(blocksOf(text(16 * 10, 8)), 100);
    // b and c are full; a has room.
    expect(pickCached(options(nodes, prompt))).toMatchObject({ backend: a, outcome: "placed" });
    a.load = 3;
    // Now b or c: c's blocks are older, it evicts the colder data.
    expect(pickCached(options(nodes, prompt))).toMatchObject({ backend: c, outcome: "placed" });
  });

  it("own: a queued request takes only its holders within their bounds, else declines", () => {
    const nodes = fleet([1, 1, 1]);
    const [a, b] = nodes as [Node, Node, Node];
    a.model.touch(blocksOf(prompt), 0);
    a.load = 3;
    b.load = 1;
    const pick = pickCached(options(nodes, prompt, { own: 0 }));
    expect(pick?.bounded).toBe(false);
    // A prompt nobody holds is placed at once even so.
    const other = text(16 * 8, 43);
    expect(pickCached(options(nodes, other, { own: 0 }))).toMatchObject({ outcome: "placed", bounded: true });
  });

  it("property: a bounded pick is within the bound, holds the longest prefix among those within theirs", () => {
    const prompts = [0, 1, 2, 3].map((i) => text(16 * 8, 100 + i));
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            weight: fc.constantFrom(0.5, 1, 2, 3),
            load: fc.integer({ min: 0, max: 12 }),
            ok: fc.boolean(),
            held: fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 1, max: 8 })), {
              maxLength: 3,
            }),
          }),
          { minLength: 1, maxLength: 6 },
        ),
        fc.integer({ min: 0, max: 3 }),
        fc.constantFrom(1, 1.25, 2),
        fc.option(fc.integer({ min: 0, max: 3 }), { nil: undefined }),
        (specs, which, loadFactor, own) => {
          const nodes = fleet(specs.map((s) => s.weight));
          specs.forEach((s, i) => {
            const n = nodes[i] as Node;
            n.load = s.load;
            n.ok = s.ok;
            for (const [p, len] of s.held) n.model.touch(blocksOf(prompts[p] as string).subarray(0, len), 0);
          });
          const prompt = prompts[which] as string;
          const o = options(nodes, prompt, { loadFactor, own });
          const pick = pickCached(o);
          const usable = nodes.filter((n) => n.ok);
          if (usable.length === 0) {
            expect(pick).toBeUndefined();
            return;
          }
          if (!pick) throw new Error("no pick");
          expect(pick.backend.ok).toBe(true);
          const total = usable.reduce((a, n) => a + n.load, 0);
          const weight = usable.reduce((a, n) => a + n.weight, 0);
          const within = (n: Node) => n.load < boundFor(total, n.weight, weight, loadFactor);
          const held = (n: Node) => {
            const m = n.model.match(o.blocks);
            return m >= o.minBlocks ? m : 0;
          };
          const best = Math.max(0, ...usable.filter(within).map(held));
          if (pick.bounded) {
            expect(within(pick.backend)).toBe(true);
            if (own === undefined || pick.outcome === "placed") expect(held(pick.backend)).toBe(best);
          } else {
            // Not bounded: none within its bound could take it (or, queued, none of its own).
            if (own === undefined) expect(usable.some(within)).toBe(false);
          }
          if (pick.outcome === "placed") expect(Math.max(0, ...usable.map(held))).toBe(0);
        },
      ),
      { numRuns: 500 },
    );
  });

  it("a backend leaving moves only the prompts it held (100 prompts over 5 backends)", () => {
    const nodes = fleet([1, 1, 1, 1, 1], 10_000);
    const prompts = Array.from({ length: 100 }, (_, i) => text(16 * 4, 1000 + i));
    const first = new Map<string, Node>();
    for (const p of prompts) {
      const pick = pickCached(options(nodes, p));
      if (!pick) throw new Error("no pick");
      pick.backend.model.touch(blocksOf(p), 0);
      first.set(p, pick.backend);
    }
    const gone = nodes[2] as Node;
    gone.ok = false;
    let moved = 0;
    for (const p of prompts) {
      const pick = pickCached(options(nodes, p));
      if (first.get(p) === gone) moved++;
      else expect(pick?.backend).toBe(first.get(p));
    }
    expect(moved).toBeGreaterThan(0);
    expect(moved).toBeLessThan(40);
  });
});
