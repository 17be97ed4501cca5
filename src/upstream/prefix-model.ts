/**
 * The gateway's model of what each backend's prefix cache holds, and the pick that uses it: a
 * keyed request goes to the backend holding the longest run of its prompt's leading blocks,
 * within the load bound; a prompt nobody holds goes where caching it evicts the least.
 *
 * Why a model and not only the ring: a ring places a few keys by their hashes, so a handful of
 * system prompts can put most of the traffic on one backend (sixteen keys over three backends put
 * 53% of a Zipf workload's home on the smallest of them in one benchmark round), and every request
 * it cannot take spills to a backend that does not hold its prefix, evicting prefixes that one
 * serves. The gateway knows what it sent where; an engine's prefix cache is an LRU of the blocks
 * it prefilled (vLLM's automatic prefix caching, SGLang's radix cache), so an LRU of the same
 * blocks per backend, as large as the engine's cache, approximates it closely (SGLang's router
 * keeps such an approximate radix tree per worker). The model is then used three ways:
 *
 * - where a prefix is: the backend whose model holds the longest leading run of the prompt's
 *   blocks is the key's home (ties: the ring order from the key's hash, so that every gateway
 *   replica breaks them alike);
 * - spills replicate instead of polluting: a request its home cannot take goes first to another
 *   backend within its bound that holds its prefix, so a hot prefix ends up cached on a few
 *   backends on purpose and the others keep theirs;
 * - placement: a prompt nobody holds goes to the backend within its bound where inserting it
 *   evicts the least recently used data (free room first; with caches full, the backend whose
 *   blocks to evict were touched longest ago), ties in ring order, so that with empty caches the
 *   first keys land on their ring homes.
 *
 * Blocks: the canonical prompt text of affinity.ts (roles and message texts; a completion's
 * prompt, token ids 4 characters each) cut into blocks of `blockChars` characters, each keyed by
 * the FNV-1a state after it (fmix32-finished): a chained hash, since the state after block k
 * depends on every character before it, so a block matches only when the whole prompt up to its
 * end does, as in the engines. Only full blocks count, the partial tail never. Characters, not
 * tokens: the engine's blocks are in tokens and its boundaries differ, which changes what a block
 * costs, not which prompts share a prefix. 32-bit hashes: two different prefixes that collide
 * make one wrong guess (a miss where a hit was expected), nothing worse.
 *
 * What the model does not see: what other gateway replicas sent (each models its own traffic; the
 * ring tie-break makes them place a new prefix alike), requests from outside the gateway, the
 * engine's pinning of running sequences' blocks (its cache holds fewer cached prefixes while
 * running prompts take KV space), and a restart that empties the engine's cache (the pool clears
 * a backend's model when it turns unhealthy or its breaker opens).
 */
import {
  type AffinityKey,
  type AffinityOutcome,
  type AffinityPick,
  boundFor,
  type Candidates,
  CHARS_PER_TOKEN_ID,
  feedRange,
  feedTokenId,
  fmix32,
  HASH_START,
  type HashRing,
  type PromptSink,
  type RingMember,
  readPrompt,
} from "./affinity.js";

// ---------------------------------------------------------------------------------------------
// A prompt's blocks

/** Cuts the canonical prompt into chained block hashes, at most `maxBlocks` of them. */
class BlockHasher implements PromptSink {
  private h = HASH_START;
  /** Characters into the current block. */
  private inBlock = 0;
  private count = 0;
  readonly hashes: Uint32Array;

  constructor(
    private readonly blockChars: number,
    maxBlocks: number,
  ) {
    this.hashes = new Uint32Array(maxBlocks);
  }

  get full(): boolean {
    return this.count >= this.hashes.length;
  }

  get blocks(): Uint32Array {
    return this.hashes.subarray(0, this.count);
  }

  text(s: string): void {
    let from = 0;
    while (from < s.length && !this.full) {
      const to = Math.min(s.length, from + this.blockChars - this.inBlock);
      this.h = feedRange(this.h, s, from, to);
      this.inBlock += to - from;
      from = to;
      if (this.inBlock === this.blockChars) this.endBlock();
    }
  }

  tokenId(id: number): void {
    if (this.full) return;
    this.h = feedTokenId(this.h, id);
    this.inBlock += CHARS_PER_TOKEN_ID;
    if (this.inBlock >= this.blockChars) {
      this.endBlock();
      this.inBlock = 0;
    }
  }

  private endBlock(): void {
    this.hashes[this.count++] = fmix32(this.h);
    this.inBlock = 0;
  }
}

/**
 * The chained hashes of the prompt's full blocks (at most maxBlocks), or undefined for a body
 * with no prompt. A prompt shorter than one block has none.
 */
export function promptBlocks(body: unknown, blockChars: number, maxBlocks: number): Uint32Array | undefined {
  if (!(blockChars >= 1) || !(maxBlocks >= 1)) return undefined;
  const hasher = new BlockHasher(blockChars, maxBlocks);
  return readPrompt(body, hasher) ? hasher.blocks : undefined;
}

// ---------------------------------------------------------------------------------------------
// One backend's cache, as the gateway sees it

export class CacheModel {
  /** Block hash → when it was last sent; Map order is recency, the first the least recent. */
  private readonly blocks = new Map<number, number>();

  constructor(private capacityBlocks: number) {}

  get capacity(): number {
    return this.capacityBlocks;
  }

  get size(): number {
    return this.blocks.size;
  }

  /** Leading blocks of the prompt held. */
  match(blocks: ArrayLike<number>): number {
    let n = 0;
    while (n < blocks.length && this.blocks.has(blocks[n] as number)) n++;
    return n;
  }

  /**
   * The prompt was sent here: its blocks become the most recent, last first so that, as in the
   * engines' LRU, a prefix loses its tail before its head; the least recent go past capacity.
   */
  touch(blocks: ArrayLike<number>, now: number): void {
    if (this.capacityBlocks === 0) return;
    for (let i = Math.min(blocks.length, this.capacityBlocks) - 1; i >= 0; i--) {
      const h = blocks[i] as number;
      this.blocks.delete(h);
      this.blocks.set(h, now);
    }
    this.evict();
  }

  /**
   * How little inserting `n` more blocks costs here: Infinity while they fit in free room, else
   * the ms since the last of the blocks they would evict was sent (larger: colder data goes).
   */
  room(n: number, now: number): number {
    const evicted = this.blocks.size + n - this.capacityBlocks;
    if (evicted <= 0) return Number.POSITIVE_INFINITY;
    if (evicted > this.blocks.size) return Number.NEGATIVE_INFINITY;
    let i = 0;
    for (const at of this.blocks.values()) if (++i === evicted) return now - at;
    return Number.NEGATIVE_INFINITY;
  }

  resize(capacityBlocks: number): void {
    this.capacityBlocks = capacityBlocks;
    this.evict();
  }

  clear(): void {
    this.blocks.clear();
  }

  private evict(): void {
    const blocks = this.blocks;
    while (blocks.size > this.capacityBlocks) {
      const oldest = blocks.keys().next();
      if (oldest.done === true) break;
      blocks.delete(oldest.value);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The pick

export interface CachedPickOptions<T extends RingMember> {
  ring: HashRing<T>;
  key: AffinityKey;
  blocks: Uint32Array;
  candidates: Candidates<T>;
  loadOf: (b: T) => number;
  weightOf: (b: T) => number;
  /** Members that cannot take this request but carry the pool's load (see pickWithAffinity). */
  counted?: (b: T) => boolean;
  loadFactor: number;
  modelOf: (b: T) => CacheModel | undefined;
  /** A holder must hold at least this many leading blocks (fewer are a shared preamble only). */
  minBlocks: number;
  now: number;
  /**
   * A request waiting for its own backends: only those holding the longest run of its prefix
   * and `own` more holding shorter runs, within their bounds, else an unbounded pick (it may
   * wait for one); a prompt nobody holds is placed at once. Undefined: any backend.
   */
  own?: number;
}

export interface CachedPick<T> extends AffinityPick<T> {
  /** Leading blocks of the prompt the chosen backend's model held. */
  matched: number;
}

function isCandidate<T>(candidates: Candidates<T>, b: T): boolean {
  return typeof candidates === "function" ? candidates(b) : candidates.has(b);
}

/**
 * The backend for a keyed request by the cache models, within the bound of pickWithAffinity.
 * Outcomes: `home` (the backend holding the longest prefix took it), `spilled` (that backend was
 * at its bound), `home_unavailable` (it could not serve), `placed` (no backend that can serve
 * holds the prefix: it went where caching it evicts the least). Undefined when no member is a
 * candidate; `bounded` false when none within its bound could take it (the least loaded per
 * unit of weight then, which a queued request declines).
 */
export function pickCached<T extends RingMember>(o: CachedPickOptions<T>): CachedPick<T> | undefined {
  const { ring, blocks, candidates, loadOf, weightOf, counted } = o;
  const members = ring.members;
  let usable = 0;
  let totalLoad = 0;
  let totalWeight = 0;
  for (const b of members) {
    const candidate = isCandidate(candidates, b);
    if (candidate) usable++;
    else if (counted === undefined || !counted(b)) continue;
    totalLoad += loadOf(b);
    totalWeight += weightOf(b);
  }
  if (usable === 0) return undefined;

  // In ring order from the key: who holds how much, who can take it within its bound.
  const order: T[] = [];
  const matches: number[] = [];
  const within: boolean[] = [];
  let home = -1;
  let homeMatch = 0;
  for (const b of ring.successors(o.key.hash)) {
    const candidate = isCandidate(candidates, b);
    const servable = candidate || (counted?.(b) ?? false);
    if (!servable) continue;
    const m = o.modelOf(b)?.match(blocks) ?? 0;
    const held = m >= o.minBlocks ? m : 0;
    order.push(b);
    matches.push(held);
    within.push(candidate && loadOf(b) < boundFor(totalLoad, weightOf(b), totalWeight, o.loadFactor));
    if (held > homeMatch) {
      homeMatch = held;
      home = order.length - 1;
    }
  }

  if (homeMatch > 0) {
    // Its own backends: every holder of the longest run and `own` more holders of shorter ones
    // (all holders for an arrival).
    const ranked = order
      .map((_, i) => i)
      .filter((i) => (matches[i] as number) > 0)
      .sort((a, b) => (matches[b] as number) - (matches[a] as number) || a - b);
    const own = o.own;
    const mine =
      own === undefined ? ranked : ranked.filter((i, rank) => matches[i] === homeMatch || rank <= own);
    const pick = mine.find((i) => within[i] === true);
    const homeBackend = order[home] as T;
    const missed: AffinityOutcome = isCandidate(candidates, homeBackend) ? "spilled" : "home_unavailable";
    if (pick !== undefined) {
      return {
        backend: order[pick] as T,
        outcome: pick === home ? "home" : missed,
        hops: pick,
        bounded: true,
        matched: matches[pick] as number,
      };
    }
    if (o.own !== undefined) return fallback(o, order, missed);
    const placed = placeByRoom(o, order, within);
    if (placed !== undefined) return { ...placed, outcome: missed };
    return fallback(o, order, missed);
  }
  return placeByRoom(o, order, within) ?? fallback(o, order, "placed");
}

/**
 * Where a prompt no backend within its bound holds goes: the least loaded per unit of weight
 * among those within their bounds, then the one where its blocks evict the least (free room, else
 * the coldest data), then ring order. Load first: a prompt placed now is likely asked for again,
 * and on a busy backend its next requests would meet the bound and spill, each spill caching it
 * once more elsewhere; among equally loaded backends, the cache decides.
 */
function placeByRoom<T extends RingMember>(
  o: CachedPickOptions<T>,
  order: readonly T[],
  within: readonly boolean[],
): CachedPick<T> | undefined {
  let best = -1;
  let bestCost = Number.POSITIVE_INFINITY;
  let bestRoom = Number.NEGATIVE_INFINITY;
  let bestMatch = 0;
  for (let i = 0; i < order.length; i++) {
    if (within[i] !== true) continue;
    const b = order[i] as T;
    const cost = (o.loadOf(b) + 1) / o.weightOf(b);
    if (best !== -1 && cost > bestCost) continue;
    const model = o.modelOf(b);
    const m = model?.match(o.blocks) ?? 0;
    const room = model === undefined ? Number.NEGATIVE_INFINITY : model.room(o.blocks.length - m, o.now);
    if (best === -1 || cost < bestCost || room > bestRoom) {
      best = i;
      bestCost = cost;
      bestRoom = room;
      bestMatch = m;
    }
  }
  if (best === -1) return undefined;
  return { backend: order[best] as T, outcome: "placed", hops: best, bounded: true, matched: bestMatch };
}

/** No candidate within its bound: the least loaded per unit of weight, not bounded. */
function fallback<T extends RingMember>(
  o: CachedPickOptions<T>,
  order: readonly T[],
  outcome: AffinityOutcome,
): CachedPick<T> | undefined {
  let best: T | undefined;
  let bestCost = Number.POSITIVE_INFINITY;
  for (const b of o.ring.members) {
    if (!isCandidate(o.candidates, b)) continue;
    const cost = (o.loadOf(b) + 1) / o.weightOf(b);
    if (best === undefined || cost < bestCost) {
      best = b;
      bestCost = cost;
    }
  }
  if (best === undefined) return undefined;
  return {
    backend: best,
    outcome,
    hops: order.indexOf(best),
    bounded: false,
    matched: o.modelOf(best)?.match(o.blocks) ?? 0,
  };
}
