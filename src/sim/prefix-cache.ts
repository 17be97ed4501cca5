/**
 * Automatic prefix caching, as vLLM's: a server keeps the KV state of prompt blocks it has
 * prefilled, and a later prompt that starts with the same blocks skips their prefill.
 *
 * Blocks: the prompt's canonical text (what the simulator already derives for a request: the
 * JSON of the chat messages, or the completion prompt) is cut into blocks of `blockChars`
 * characters. Only full blocks are cached; a partial tail never is. Each block is keyed by a hash
 * chained over the blocks before it, hash(prevHash, blockText), so a block hits only when the
 * whole prompt up to its end matches: a different first block misses everything after it.
 *
 * Lookup: the longest run of leading blocks present in the cache. As vLLM does, at least the
 * prompt's last character is recomputed (the forward pass must yield the next token's logits), so
 * a prompt that is an exact multiple of the block size can hit all but its last block.
 *
 * Replacement: a plain LRU over block hashes, capacity in blocks. vLLM pins the blocks of running
 * sequences (reference counts) and evicts only freed ones; the simulator does not pin, so a long
 * burst of new prompts can evict blocks a running sequence still uses. That only matters for the
 * next request with that prefix, which then misses, and keeps the model one map. After a lookup
 * every full block of the prompt is inserted or touched, in reverse order (last block first), so
 * the prompt's head is the most recent and, as in vLLM's free-block queue, a prefix loses its
 * tail blocks before its head.
 *
 * The cache is the simulator's own budget, apart from kvCacheTokens: admission and
 * vllm:gpu_cache_usage_perc still count every running sequence's full prompt.
 */

import { createHash } from "node:crypto";

export interface PrefixLookup {
  /** Characters of the prompt text. */
  chars: number;
  /** Full blocks of the prompt: the ones inserted after the lookup. */
  fullBlocks: number;
  /** Leading blocks found in the cache. */
  hitBlocks: number;
  /** Characters those blocks cover (hitBlocks x blockChars), always below chars. */
  hitChars: number;
}

/** Hash of the (empty) prefix before the first block. */
const ROOT_HASH = "";

export function blockHash(prevHash: string, blockText: string): string {
  // A sha256 in base64url is 43 characters and blocks have a fixed length, so the concatenation
  // is unambiguous without a separator.
  return createHash("sha256").update(prevHash).update(blockText).digest("base64url");
}

/** Hashes of the text's full blocks, each chained over the blocks before it. */
export function blockHashes(text: string, blockChars: number): string[] {
  const hashes: string[] = [];
  let prev = ROOT_HASH;
  for (let end = blockChars; end <= text.length; end += blockChars) {
    prev = blockHash(prev, text.slice(end - blockChars, end));
    hashes.push(prev);
  }
  return hashes;
}

export class PrefixCache {
  /** Map order is recency: the first key is the least recently used. */
  private readonly blocks = new Map<string, true>();

  constructor(
    readonly capacityBlocks: number,
    readonly blockChars: number,
  ) {
    if (!Number.isInteger(capacityBlocks) || capacityBlocks < 0) {
      throw new RangeError(`prefix cache capacity must be an integer >= 0, got ${capacityBlocks}`);
    }
    if (!Number.isInteger(blockChars) || blockChars < 1) {
      throw new RangeError(`prefix block size must be an integer >= 1, got ${blockChars}`);
    }
  }

  /** Blocks held now. */
  get size(): number {
    return this.blocks.size;
  }

  has(hash: string): boolean {
    return this.blocks.has(hash);
  }

  /** Held block hashes, least recently used first. */
  keys(): string[] {
    return [...this.blocks.keys()];
  }

  /** Looks the prompt up without changing the cache. */
  peek(text: string): PrefixLookup {
    return this.lookup(text, blockHashes(text, this.blockChars));
  }

  /** Looks the prompt up, then inserts or touches all its full blocks (see the file comment). */
  process(text: string): PrefixLookup {
    const hashes = blockHashes(text, this.blockChars);
    const result = this.lookup(text, hashes);
    if (this.capacityBlocks === 0) return result;
    for (let i = hashes.length - 1; i >= 0; i--) {
      const hash = hashes[i] as string;
      this.blocks.delete(hash);
      this.blocks.set(hash, true);
    }
    while (this.blocks.size > this.capacityBlocks) {
      const oldest = this.blocks.keys().next();
      if (oldest.done === true) break;
      this.blocks.delete(oldest.value);
    }
    return result;
  }

  clear(): void {
    this.blocks.clear();
  }

  private lookup(text: string, hashes: string[]): PrefixLookup {
    // At least the last character is recomputed: only blocks ending before it may hit.
    const hittable = text.length === 0 ? 0 : Math.floor((text.length - 1) / this.blockChars);
    let hitBlocks = 0;
    while (hitBlocks < hittable && this.blocks.has(hashes[hitBlocks] as string)) hitBlocks++;
    return {
      chars: text.length,
      fullBlocks: hashes.length,
      hitBlocks,
      hitChars: hitBlocks * this.blockChars,
    };
  }
}

/**
 * Prompt tokens a lookup saves. Prefill is counted in the simulator's tokenizer tokens (the
 * request's promptTokens, as without the cache); the cached share of them is the cached share of
 * the prompt's characters, rounded down. So the hit rate in tokens is the hit rate in characters,
 * whatever the tokens-per-character ratio, and it is always below the whole prompt.
 */
export function cachedPromptTokens(promptTokens: number, lookup: PrefixLookup): number {
  if (lookup.chars === 0 || lookup.hitChars === 0) return 0;
  return Math.min(promptTokens, Math.floor((promptTokens * lookup.hitChars) / lookup.chars));
}
