import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BatchScheduler } from "../../../src/sim/batch-scheduler.js";
import { defaultSimOptions, resolveSimOptions } from "../../../src/sim/options.js";
import {
  blockHash,
  blockHashes,
  cachedPromptTokens,
  PrefixCache,
  type PrefixLookup,
} from "../../../src/sim/prefix-cache.js";
import { ManualClock } from "./manual-clock.js";

/** Blocks of 4 characters keep the prompts readable: "AAAA" is one block. */
const B = 4;

describe("blockHashes", () => {
  it("hashes full blocks only, each chained over the blocks before it", () => {
    const hashes = blockHashes("AAAABBBBCC", B);
    expect(hashes).toHaveLength(2);
    expect(hashes[0]).toBe(blockHash("", "AAAA"));
    expect(hashes[1]).toBe(blockHash(hashes[0] as string, "BBBB"));
    // The same block text after a different prefix is a different block.
    expect(blockHashes("CCCCBBBB", B)[1]).not.toBe(hashes[1]);
    expect(blockHashes("AAA", B)).toEqual([]);
    expect(blockHashes("", B)).toEqual([]);
  });

  it("agrees on a shared prefix and disagrees from the first differing block on", () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 0, maxLength: 40 }),
        fc.string({ minLength: 1, maxLength: 40 }),
        fc.string({ minLength: 1, maxLength: 40 }),
        (prefix, a, b) => {
          fc.pre(a[0] !== b[0]);
          const ha = blockHashes(prefix + a, B);
          const hb = blockHashes(prefix + b, B);
          const shared = Math.floor(prefix.length / B);
          expect(ha.slice(0, shared)).toEqual(hb.slice(0, shared));
          // Every later block's text differs somewhere at or before its end: no hash is shared.
          const later = new Set(ha.slice(shared));
          expect(hb.slice(shared).some((h) => later.has(h))).toBe(false);
        },
      ),
    );
  });
});

describe("PrefixCache", () => {
  it("hits the shared prefix of a second prompt, and nothing past the first differing block", () => {
    const cache = new PrefixCache(100, B);
    const first = cache.process("SYS1SYS2SYS3user: hello");
    expect(first).toEqual({ chars: 23, fullBlocks: 5, hitBlocks: 0, hitChars: 0 });

    // Same system prompt, another user part: the three system blocks hit.
    expect(cache.process("SYS1SYS2SYS3user: bye!!")).toMatchObject({ hitBlocks: 4, hitChars: 16 });
    expect(cache.process("SYS1SYS2SYS3other text")).toMatchObject({ hitBlocks: 3, hitChars: 12 });
    // Block 2 differs: blocks 1 hits, and "SYS3" after it misses although its text is cached.
    expect(cache.process("SYS1xxxxSYS3user: hello")).toMatchObject({ hitBlocks: 1 });
  });

  it("misses everything when the first block differs", () => {
    const cache = new PrefixCache(100, B);
    cache.process("SYS1SYS2SYS3user");
    expect(cache.process("sys1SYS2SYS3user")).toMatchObject({ hitBlocks: 0, hitChars: 0 });
  });

  it("never caches a partial last block", () => {
    const cache = new PrefixCache(100, B);
    cache.process("AAAABBBBCC");
    expect(cache.size).toBe(2);
    expect(cache.has(blockHash(blockHashes("AAAABBBB", B)[1] as string, "CC"))).toBe(false);
    // "CC" grown into a full block "CCDD": the first two blocks hit, the third was never cached.
    expect(cache.process("AAAABBBBCCDDx")).toMatchObject({ hitBlocks: 2, fullBlocks: 3 });
    expect(cache.size).toBe(3);
  });

  it("recomputes at least the last character: an exact multiple of the block size hits all but its last block", () => {
    const cache = new PrefixCache(100, B);
    cache.process("AAAABBBB");
    expect(cache.size).toBe(2);
    expect(cache.process("AAAABBBB")).toMatchObject({ hitBlocks: 1, hitChars: 4, chars: 8 });
    expect(cache.process("AAAABBBBC")).toMatchObject({ hitBlocks: 2, hitChars: 8 });
  });

  it("evicts least recently used blocks first; a touched prompt becomes most recent, its head last to go", () => {
    const cache = new PrefixCache(4, B);
    const a = "AAAAaaaa!";
    const b = "BBBBbbbb!";
    const [a1, a2] = blockHashes(a, B);
    const [b1, b2] = blockHashes(b, B);
    cache.process(a);
    cache.process(b);
    // Inserted tail first, so each prompt's head is the more recent of its blocks.
    expect(cache.keys()).toEqual([a2, a1, b2, b1]);

    expect(cache.process(a).hitBlocks).toBe(2);
    expect(cache.keys()).toEqual([b2, b1, a2, a1]);

    // One new block evicts the least recent, b's tail: b keeps its first block.
    cache.process("CCCC!");
    expect(cache.keys()).toEqual([b1, a2, a1, blockHashes("CCCC", B)[0]]);
    expect(cache.peek(b).hitBlocks).toBe(1);
    expect(cache.peek(a).hitBlocks).toBe(2);

    // Two more evict b's head and a's tail.
    cache.process("DDDDdddd!");
    expect(cache.peek(b).hitBlocks).toBe(0);
    expect(cache.peek(a).hitBlocks).toBe(1);
  });

  it("holds at most its capacity, keeping the head of a prompt longer than the cache", () => {
    const cache = new PrefixCache(3, B);
    const long = "0000111122223333444455556666!";
    cache.process(long);
    expect(cache.size).toBe(3);
    expect(cache.keys()).toEqual(blockHashes(long, B).slice(0, 3).reverse());
    expect(cache.peek(long).hitBlocks).toBe(3);

    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }),
        fc.array(fc.stringMatching(/^[ab]{0,24}$/), { maxLength: 30 }),
        (capacity, prompts) => {
          const c = new PrefixCache(capacity, B);
          for (const p of prompts) {
            const before = c.peek(p);
            const result = c.process(p);
            expect(result).toEqual(before);
            expect(result.hitChars).toBeLessThan(Math.max(1, result.chars));
            expect(c.size).toBeLessThanOrEqual(capacity);
          }
        },
      ),
    );
  });

  it("with capacity 0 caches nothing", () => {
    const cache = new PrefixCache(0, B);
    cache.process("AAAABBBBC");
    expect(cache.process("AAAABBBBC")).toMatchObject({ hitBlocks: 0 });
    expect(cache.size).toBe(0);
  });

  it("forgets everything on clear", () => {
    const cache = new PrefixCache(10, B);
    cache.process("AAAABBBBC");
    cache.clear();
    expect(cache.size).toBe(0);
    expect(cache.process("AAAABBBBC").hitBlocks).toBe(0);
  });

  it.each([
    [-1, B],
    [1.5, B],
    [10, 0],
  ])("rejects capacity %d with blocks of %d", (capacity, chars) => {
    expect(() => new PrefixCache(capacity, chars)).toThrow(RangeError);
  });
});

describe("cachedPromptTokens", () => {
  const lookup = (chars: number, hitChars: number): PrefixLookup => ({
    chars,
    hitChars,
    fullBlocks: 0,
    hitBlocks: 0,
  });

  it("is the cached share of the characters, in prompt tokens, rounded down", () => {
    expect(cachedPromptTokens(2000, lookup(8000, 7936))).toBe(1984);
    expect(cachedPromptTokens(10, lookup(30, 20))).toBe(6);
    expect(cachedPromptTokens(10, lookup(30, 0))).toBe(0);
    expect(cachedPromptTokens(0, lookup(0, 0))).toBe(0);
  });

  it("stays below the whole prompt", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 100_000 }),
        fc.integer({ min: 2, max: 100_000 }),
        (tokens, chars) => {
          const hit = cachedPromptTokens(tokens, lookup(chars, chars - 1));
          expect(hit).toBeLessThan(tokens);
          expect(hit).toBeGreaterThanOrEqual(0);
        },
      ),
    );
  });
});

describe("BatchScheduler with a prefix cache", () => {
  it("prefills only the uncached tokens, asking once when the sequence is scheduled", () => {
    const clock = new ManualClock();
    const scheduler = new BatchScheduler({
      slots: 1,
      maxQueue: 4,
      kvCacheTokens: 1000,
      timing: { prefillMsPerToken: 1, decodeStepMs: 10, decodeMsPerSeq: 0 },
      scale: () => 1,
      schedule: clock.schedule,
    });
    const asked: number[] = [];
    const firstTokenAt: number[] = [];
    const submit = (name: number, cached: number) =>
      scheduler.submit({
        promptTokens: 100,
        outputTokens: 1,
        cachedPromptTokens: () => {
          asked.push(name);
          return cached;
        },
        onToken: () => firstTokenAt.push(clock.now),
        onFinish() {},
      });
    submit(1, 0);
    submit(2, 90);
    submit(3, 500); // more than the prompt: clamped, nothing left to prefill
    // Only the running sequence has been asked; the waiting ones are asked when scheduled.
    expect(asked).toEqual([1]);
    clock.runAll();
    expect(asked).toEqual([1, 2, 3]);
    // 100 + 10, then 10 + 10, then 0 + 10.
    expect(firstTokenAt).toEqual([110, 130, 140]);
    expect(scheduler.kvTokensInUse).toBe(0);
  });
});

describe("prefix-cache options", () => {
  it("defaults to off, with 256-character blocks", () => {
    expect(defaultSimOptions).toMatchObject({ prefixCacheBlocks: 0, prefixBlockChars: 256 });
    expect(resolveSimOptions({ prefixCacheBlocks: 80, prefixBlockChars: 16 })).toMatchObject({
      prefixCacheBlocks: 80,
      prefixBlockChars: 16,
    });
  });

  it.each([
    [{ prefixCacheBlocks: -1 }, "prefixCacheBlocks"],
    [{ prefixCacheBlocks: 0.5 }, "prefixCacheBlocks"],
    [{ prefixBlockChars: 0 }, "prefixBlockChars"],
    [{ prefixBlockChars: Number.NaN }, "prefixBlockChars"],
  ])("rejects %j naming %s", (partial, name) => {
    expect(() => resolveSimOptions(partial)).toThrow(new RegExp(`sim option ${name} must be an integer`));
  });
});
