/**
 * Prefix affinity with bounded load: requests that share a key (the leading part of the prompt,
 * or a client-given session key) go to the same backend, so the engine's prefix cache (vLLM's
 * automatic prefix caching, SGLang's radix cache) already holds their prefix, unless that backend
 * carries more than its share of the load; then the key spills to the next backend on the ring.
 *
 * Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing
 * with Bounded Loads", 2016; HAProxy's `hash-balance-factor`, Envoy's `hash_balance_factor`):
 *
 * - The ring: each backend owns points on a 32-bit circle, round(POINTS_PER_WEIGHT × weight) of
 *   them, each the hash of "name#j". A key hashes to a point; its home is the owner of the first
 *   point clockwise from it, and its successors are the distinct owners after that. A backend's
 *   points depend only on its own name and weight, never on the others, so a backend joining,
 *   leaving or changing weight moves only the keys it gains or loses: about 1/N of them, and the
 *   ring order of every other backend is unchanged.
 * - The bound: backend i may take a key while
 *       load_i < ceil(loadFactor × (totalLoad + 1) × w_i / sum(w))
 *   where load is requests in flight (fleet-wide: this replica's plus the other replicas' when
 *   they share counts) and the sums run over the usable candidates, plus, when the caller says
 *   so, the backends that carry the pool's load but cannot take this request (full, or excluded
 *   by a retry): the pool's average, not only that of the backends with a free slot. Over the
 *   candidates alone, for loadFactor ≥ 1 some candidate always passes: the bounds add up to at
 *   least totalLoad + 1 > totalLoad. The key takes the first ring successor that is usable and
 *   within its bound; when none is, the least loaded candidate per unit of weight (`bounded`
 *   false), which a queued request may decline to wait for a better one.
 *
 * With `cacheTokens`, the pool also models what each backend's prefix cache holds
 * (prefix-model.ts): a key then goes to the backend holding the longest run of its prompt's
 * blocks within the same bound, and the ring only orders ties and places keys on empty caches.
 *
 * Points per unit of weight: 512. The share of the circle a backend owns deviates from its weight's
 * share by about 1/sqrt(points). Measured over 300 random rings of six backends weighted
 * 1, 2, 3, 1, 0.5, 2.5: with 512 per unit, 4.1% rms for a backend of weight 1, 1% of rings with a
 * backend more than 15% off, 18% worst; 256 per unit gave 5.6% rms, 9% of rings past 15%, 31% worst.
 * Cost (development machine, Node 20): five backends are 2,560 points, built in 0.6 ms, a pick in
 * 0.2 µs; fifty backends, 8 ms and 0.4 µs. Weights go to 1000 in the config; a ring past
 * MAX_RING_POINTS is scaled down as a whole, the one case in which a membership change moves more
 * keys than its own.
 *
 * The hash: FNV-1a over UTF-16 code units, 32 bits, finished with murmur3's fmix32 so that nearby
 * inputs land far apart on the circle. Measured on the development machine (Node 20): 2,048
 * characters in about 4 µs, the same as node:crypto's sha256 of them (4.5 µs) but without the
 * slice, the UTF-8 copy and the Hash object, and fed straight from the message parts without
 * concatenating them; a 36-character session id in 0.1 µs against sha256's 3 µs. It is not
 * cryptographic: a client who picks its prompt can pick its backend, which it can do anyway with
 * the header key, and the bound still caps what a hot key can put on one backend.
 */
import type { BalancerBackend } from "./backend.js";

// ---------------------------------------------------------------------------------------------
// Hashing

const FNV_OFFSET = 0x811c9dc5 | 0;
const FNV_PRIME = 0x01000193;

/** murmur3's 32-bit finaliser: every input bit flips about half the output bits. Unsigned. */
export function fmix32(h: number): number {
  let x = h | 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

/** FNV-1a steps over the first `n` code units of `s`, from state `h` (an int32). */
function feed(h: number, s: string, n: number): number {
  let x = h | 0;
  for (let i = 0; i < n; i++) x = Math.imul(x ^ s.charCodeAt(i), FNV_PRIME);
  return x;
}

/** A 32-bit unsigned hash of a string (FNV-1a + fmix32). */
export function hashString(s: string): number {
  return fmix32(feed(FNV_OFFSET, s, s.length));
}

// ---------------------------------------------------------------------------------------------
// The ring

/** What the ring needs of a backend. */
export interface RingMember {
  readonly name: string;
  readonly weight: number;
}

/** Ring points per unit of weight (see the file comment for the choice). */
export const POINTS_PER_WEIGHT = 512;
/** Beyond this many points in all, every backend's count is scaled down alike. */
export const MAX_RING_POINTS = 1 << 20;
/** Points and owners are packed into one float for sorting: owner < 2^21, point < 2^32. */
const OWNER_SPACE = 2 ** 21;

/** Ring points a backend of this weight gets before any scaling; 0 for a weight that is not > 0. */
export function ringPoints(weight: number): number {
  if (!(weight > 0) || !Number.isFinite(weight)) return 0;
  return Math.max(1, Math.round(POINTS_PER_WEIGHT * weight));
}

export class HashRing<T extends RingMember> {
  /** The backends, in the order given to build(). */
  readonly members: readonly T[];
  /** Each member's weight when the ring was built (matches() compares against it). */
  private readonly builtWeights: Float64Array;
  /** Point positions, ascending. */
  private readonly points: Uint32Array;
  /** The member index owning each point. */
  private readonly owners: Uint32Array;
  /** Per-member marks for walking distinct owners without allocating: seen[i] === epoch. */
  private readonly seen: Uint32Array;
  private epoch = 0;

  private constructor(
    members: readonly T[],
    weights: Float64Array,
    points: Uint32Array,
    owners: Uint32Array,
  ) {
    this.members = members;
    this.builtWeights = weights;
    this.points = points;
    this.owners = owners;
    this.seen = new Uint32Array(members.length);
  }

  /** A ring over these backends. Names should be unique: equal names get equal points. */
  static build<T extends RingMember>(backends: readonly T[]): HashRing<T> {
    const members = backends.slice();
    if (members.length >= OWNER_SPACE)
      throw new RangeError(`a ring takes fewer than ${OWNER_SPACE} backends`);
    const weights = new Float64Array(members.length);
    const counts = new Array<number>(members.length);
    let total = 0;
    for (let i = 0; i < members.length; i++) {
      const w = (members[i] as T).weight;
      weights[i] = w;
      counts[i] = ringPoints(w);
      total += counts[i] as number;
    }
    if (total > MAX_RING_POINTS) {
      const scale = MAX_RING_POINTS / total;
      total = 0;
      for (let i = 0; i < counts.length; i++) {
        const c = counts[i] as number;
        counts[i] = c === 0 ? 0 : Math.max(1, Math.floor(c * scale));
        total += counts[i] as number;
      }
    }
    const packed = new Float64Array(total);
    let k = 0;
    for (let i = 0; i < members.length; i++) {
      const name = (members[i] as T).name;
      const count = counts[i] as number;
      for (let j = 0; j < count; j++) packed[k++] = hashString(`${name}#${j}`) * OWNER_SPACE + i;
    }
    packed.sort();
    const points = new Uint32Array(total);
    const owners = new Uint32Array(total);
    for (let p = 0; p < total; p++) {
      const v = packed[p] as number;
      const point = Math.floor(v / OWNER_SPACE);
      points[p] = point;
      owners[p] = v - point * OWNER_SPACE;
    }
    return new HashRing(members, weights, points, owners);
  }

  /** The same backend objects, in the same order, with the same weights as when built. O(N). */
  matches(backends: readonly T[]): boolean {
    if (backends.length !== this.members.length) return false;
    for (let i = 0; i < backends.length; i++) {
      const b = backends[i] as T;
      if (b !== this.members[i] || b.weight !== this.builtWeights[i]) return false;
    }
    return true;
  }

  /** This ring when it still matches the backends, else a new one built over them. */
  update(backends: readonly T[]): HashRing<T> {
    return this.matches(backends) ? this : HashRing.build(backends);
  }

  /** Points on the circle (all members together). */
  get pointCount(): number {
    return this.points.length;
  }

  /** The key's home: the owner of the first point at or after it, clockwise. */
  home(keyHash: number): T | undefined {
    if (this.points.length === 0) return undefined;
    return this.members[this.owners[this.firstPoint(keyHash)] as number];
  }

  /** Distinct backends clockwise from the key's point, home first; each member with points once. */
  *successors(keyHash: number): Generator<T, void, undefined> {
    const n = this.points.length;
    if (n === 0) return;
    const seen = new Uint8Array(this.members.length);
    let distinct = 0;
    let p = this.firstPoint(keyHash);
    for (let step = 0; step < n && distinct < this.members.length; step++) {
      const m = this.owners[p] as number;
      if (seen[m] === 0) {
        seen[m] = 1;
        distinct++;
        yield this.members[m] as T;
      }
      p = p + 1 === n ? 0 : p + 1;
    }
  }

  /** See pickWithAffinity. */
  pick(
    keyHash: number,
    candidates: Candidates<T>,
    loadOf: (b: T) => number,
    loadFactor: number,
    maxHops: number,
    weightOf: (b: T) => number,
    counted?: (b: T) => boolean,
  ): AffinityPick<T> | undefined {
    const members = this.members;
    // The bound's sums run over the candidates and the members `counted` adds.
    let usable = 0;
    let totalLoad = 0;
    let totalWeight = 0;
    for (let i = 0; i < members.length; i++) {
      const b = members[i] as T;
      const candidate = isCandidate(candidates, b);
      if (candidate) usable++;
      else if (counted === undefined || !counted(b)) continue;
      totalLoad += loadOf(b);
      totalWeight += weightOf(b);
    }
    if (usable === 0) return undefined;

    let outcome: AffinityOutcome = "home";
    let passed = 0;
    const n = this.points.length;
    if (n > 0) {
      const seen = this.nextEpoch();
      const epoch = this.epoch;
      let visitedUsable = 0;
      let p = this.firstPoint(keyHash);
      for (let step = 0; step < n && passed < members.length; step++, p = p + 1 === n ? 0 : p + 1) {
        const m = this.owners[p] as number;
        if (seen[m] === epoch) continue;
        seen[m] = epoch;
        const hop = passed;
        if (hop > maxHops) break;
        passed++;
        const b = members[m] as T;
        if (!isCandidate(candidates, b)) {
          if (hop === 0) outcome = "home_unavailable";
          continue;
        }
        if (loadOf(b) < boundFor(totalLoad, weightOf(b), totalWeight, loadFactor)) {
          return { backend: b, outcome, hops: hop, bounded: true };
        }
        if (hop === 0) outcome = "spilled";
        if (++visitedUsable === usable) break;
      }
    }

    // No candidate within the bound among those walked (maxHops, a loadFactor below 1, or
    // candidates without ring points): the least loaded per unit of weight, first in member order.
    let best: T | undefined;
    let bestCost = Number.POSITIVE_INFINITY;
    for (let i = 0; i < members.length; i++) {
      const b = members[i] as T;
      if (!isCandidate(candidates, b)) continue;
      const cost = (loadOf(b) + 1) / weightOf(b);
      if (best === undefined || cost < bestCost) {
        best = b;
        bestCost = cost;
      }
    }
    if (best === undefined) return undefined;
    if (n === 0) outcome = "home_unavailable";
    return { backend: best, outcome, hops: passed, bounded: false };
  }

  /** Index of the first point ≥ keyHash, wrapping to 0 past the last. The ring must not be empty. */
  private firstPoint(keyHash: number): number {
    const key = keyHash >>> 0;
    const points = this.points;
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((points[mid] as number) < key) lo = mid + 1;
      else hi = mid;
    }
    return lo === points.length ? 0 : lo;
  }

  private nextEpoch(): Uint32Array {
    if (this.epoch === 0xffffffff) {
      this.seen.fill(0);
      this.epoch = 0;
    }
    this.epoch++;
    return this.seen;
  }
}

// ---------------------------------------------------------------------------------------------
// The bound and the pick

/** Backends that may serve now (not drained, healthy, below their slots, not excluded…). */
export type Candidates<T> = ReadonlySet<T> | ((b: T) => boolean);

function isCandidate<T>(candidates: Candidates<T>, b: T): boolean {
  return typeof candidates === "function" ? candidates(b) : candidates.has(b);
}

/**
 * The load a backend may carry before it refuses a key: it takes one while
 * load < ceil(loadFactor × (totalLoad + 1) × weight / totalWeight), sums over the candidates.
 */
export function boundFor(totalLoad: number, weight: number, totalWeight: number, loadFactor: number): number {
  return Math.ceil((loadFactor * (totalLoad + 1) * weight) / totalWeight);
}

/** A backend's load for the bound: requests in flight on it from every replica. */
export function fleetLoad(b: Pick<BalancerBackend, "inFlight" | "othersInFlight">): number {
  return b.inFlight + (b.othersInFlight ?? 0);
}

function configuredWeight(b: RingMember): number {
  return b.weight;
}

/**
 * - home: the key's home backend was usable and within its bound;
 * - spilled: the home was usable but at its bound, a later successor took the key;
 * - home_unavailable: the home could not serve (drained, unhealthy, ejected, full, excluded);
 * - placed: with cache models (prefix-model.ts), no backend that can serve holds the prompt's
 *   prefix; it went where caching it evicts the least.
 */
export type AffinityOutcome = "home" | "spilled" | "home_unavailable" | "placed";
export const AFFINITY_OUTCOMES: readonly AffinityOutcome[] = [
  "home",
  "spilled",
  "home_unavailable",
  "placed",
];

/** A keyed request as a pick sees it: its ring key and, when the pool models caches, its blocks. */
export interface AffinityKey {
  /** The key's hash (affinityKey): its place on the ring. */
  readonly hash: number;
  /** Chained hashes of the prompt's leading blocks (prefix-model.ts promptBlocks). */
  readonly blocks?: Uint32Array;
}

export interface AffinityPick<T> {
  backend: T;
  outcome: AffinityOutcome;
  /**
   * Ring successors passed over before `backend` (0: the home). When `bounded` is false, the
   * successors walked, all refused.
   */
  hops: number;
  /**
   * The backend is within its bound. False when no successor walked was (only with maxHops, a
   * loadFactor below 1, or candidates off the ring): `backend` is then the least loaded
   * candidate per unit of weight, which a caller that would rather wait can ignore.
   */
  bounded: boolean;
}

/**
 * The backend for a key: the first ring successor (home first) that is a candidate and within
 * its bound, walking at most `maxHops` successors past the home. Undefined when no member of the
 * ring is a candidate. `weightOf` is the weight in the bound (by default the configured weight; a
 * slow-start ramp's effective weight makes a warming backend spill its keys sooner). The bound's
 * sums run over the candidates; `counted` adds members that cannot take this request but carry
 * the pool's load (full, or excluded by a retry), so that the average is the pool's. The walk
 * allocates nothing but the result; it is not reentrant per ring, which synchronous code never is.
 */
export function pickWithAffinity<T extends RingMember>(
  ring: HashRing<T>,
  keyHash: number,
  candidates: Candidates<T>,
  loadOf: (b: T) => number,
  loadFactor: number,
  maxHops: number = Number.POSITIVE_INFINITY,
  weightOf: (b: T) => number = configuredWeight,
  counted?: (b: T) => boolean,
): AffinityPick<T> | undefined {
  return ring.pick(keyHash, candidates, loadOf, loadFactor, maxHops, weightOf, counted);
}

// ---------------------------------------------------------------------------------------------
// The key

export type AffinityBy = "prefix" | "header" | "off";

export interface AffinityKeyOptions {
  by: AffinityBy;
  /** by prefix: characters of the canonical prompt text the key covers. */
  prefixChars?: number;
  /** by header: the header carrying the session key, lower case. */
  header?: string;
}

/**
 * 2,048 characters, about 512 tokens: enough to tell system prompts and few-shot preambles
 * apart, short enough to stop inside them, so the user's turn at the end does not enter the key
 * (a key that covered it would scatter every request). Prompts shorter than this are keyed whole.
 */
export const DEFAULT_PREFIX_CHARS = 2048;
export const DEFAULT_AFFINITY_HEADER = "x-session-id";
/** Token ids in a completions prompt count this many characters each against prefixChars. */
export const CHARS_PER_TOKEN_ID = 4;

/** Request headers as Node gives them (names lower case). */
export type HeaderBag = Readonly<Record<string, string | readonly string[] | undefined>>;

/**
 * The affinity key of an OpenAI request, a 32-bit unsigned hash, or undefined when it has none
 * (the caller then balances as without affinity).
 *
 * by prefix: the first `prefixChars` characters of the prompt's canonical text, never tokenized:
 * - chat: for each message in order, its role, U+0000, the text of its content (a string, or
 *   the `text` of each part of an array, other parts such as images skipped), U+0000;
 * - completions: the `prompt` string, or the first element of a `prompt` array (a string, or
 *   token ids, each counting CHARS_PER_TOKEN_ID characters).
 * by header: the header's value (the first when repeated), else the body's `prompt_cache_key`
 * (OpenAI's field for this), else its `user`; empty strings do not count.
 */
export function affinityKey(
  body: unknown,
  options: AffinityKeyOptions,
  headers?: HeaderBag,
): number | undefined {
  switch (options.by) {
    case "off":
      return undefined;
    case "header":
      return sessionKey(body, options.header ?? DEFAULT_AFFINITY_HEADER, headers);
    case "prefix":
      return prefixKey(body, options.prefixChars ?? DEFAULT_PREFIX_CHARS);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function sessionKey(body: unknown, header: string, headers: HeaderBag | undefined): number | undefined {
  if (headers) {
    const raw = headers[header] ?? headers[header.toLowerCase()];
    const value = typeof raw === "string" ? raw : raw?.[0];
    if (value !== undefined && value !== "") return hashString(value);
  }
  if (!isRecord(body)) return undefined;
  const cacheKey = body.prompt_cache_key;
  if (typeof cacheKey === "string" && cacheKey !== "") return hashString(cacheKey);
  const user = body.user;
  if (typeof user === "string" && user !== "") return hashString(user);
  return undefined;
}

const SEPARATOR = "\u0000";

/** What reads a prompt's canonical text: strings and token ids in order, until it is full. */
export interface PromptSink {
  readonly full: boolean;
  text(s: string, isPrompt?: boolean): void;
  tokenId(id: number): void;
}

/** An FNV-1a state fed from successive strings until a character budget runs out. */
class PrefixHash implements PromptSink {
  h = FNV_OFFSET;
  /** Characters fed so far. */
  fed = 0;
  /** Some prompt text or token id was fed (roles and separators alone make no key). */
  keyed = false;
  constructor(readonly limit: number) {}

  get full(): boolean {
    return this.fed >= this.limit;
  }

  text(s: string, isPrompt = true): void {
    const n = Math.min(s.length, this.limit - this.fed);
    if (n <= 0) return;
    this.h = feed(this.h, s, n);
    this.fed += n;
    if (isPrompt) this.keyed = true;
  }

  tokenId(id: number): void {
    if (this.full) return;
    this.h = feedTokenId(this.h, id);
    this.fed += CHARS_PER_TOKEN_ID;
    this.keyed = true;
  }

  digest(): number | undefined {
    return this.keyed ? fmix32(this.h) : undefined;
  }
}

/** A token id as two 16-bit FNV-1a steps. */
export function feedTokenId(h: number, id: number): number {
  const x = id >>> 0;
  return Math.imul(Math.imul(h ^ (x & 0xffff), FNV_PRIME) ^ (x >>> 16), FNV_PRIME);
}

/** The FNV-1a start state, for sinks that hash a prompt's text themselves. */
export const HASH_START = FNV_OFFSET;
/** FNV-1a steps over s[from, to), from state h. */
export function feedRange(h: number, s: string, from: number, to: number): number {
  let x = h | 0;
  for (let i = from; i < to; i++) x = Math.imul(x ^ s.charCodeAt(i), FNV_PRIME);
  return x;
}

/**
 * Feeds a request's canonical prompt text to `sink` (see affinityKey: each chat message's role,
 * U+0000, the text of its content, U+0000; or a completion's first prompt) until the sink is
 * full. False when the body has neither messages nor a prompt.
 */
export function readPrompt(body: unknown, sink: PromptSink): boolean {
  if (!isRecord(body)) return false;
  if (Array.isArray(body.messages)) {
    for (const message of body.messages) {
      if (sink.full) break;
      if (!isRecord(message)) continue;
      if (typeof message.role === "string") sink.text(message.role, false);
      sink.text(SEPARATOR, false);
      const content = message.content;
      if (typeof content === "string") sink.text(content);
      else if (Array.isArray(content)) {
        for (const part of content) {
          if (sink.full) break;
          if (isRecord(part) && typeof part.text === "string") sink.text(part.text);
        }
      }
      sink.text(SEPARATOR, false);
    }
    return true;
  }
  const prompt = body.prompt;
  const first =
    Array.isArray(prompt) && prompt.length > 0 && typeof prompt[0] !== "number" ? prompt[0] : prompt;
  if (typeof first === "string") sink.text(first);
  else if (Array.isArray(first)) {
    for (const id of first) {
      if (sink.full) break;
      if (typeof id === "number") sink.tokenId(id);
    }
  } else return false;
  return true;
}

function prefixKey(body: unknown, prefixChars: number): number | undefined {
  if (!(prefixChars >= 1)) return undefined;
  const hash = new PrefixHash(prefixChars);
  readPrompt(body, hash);
  return hash.digest();
}
