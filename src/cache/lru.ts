/**
 * A least-recently-used map bounded by bytes, with per-entry expiry. Pure data structure: time
 * comes in as an argument (ms on whatever clock the caller uses), so tests need no timers.
 *
 * Rules:
 * - The caller says what each entry weighs (e.g. its encoded length); `bytes` is their sum and
 *   never exceeds `maxBytes` after any call returns.
 * - An entry heavier than `maxBytes` is not stored: storing it would evict everything else for
 *   one answer. Such a set also drops the key's older value, which the new one was replacing.
 * - `get` counts as a use and moves the entry to the most-recent end; `set` inserts (or replaces)
 *   at that end. Over the bound, entries leave from the least-recent end ("capacity").
 * - An entry whose `expiresAt` <= now is gone for `get` and removed there ("expired");
 *   `prune(now)` sweeps all of them, so memory held by dead entries can be reclaimed on a timer.
 * - `delete`, `deleteWhere`, `clear` and replacement by `set` are the caller's decisions, not
 *   evictions: `onEvict` only reports what the cache chose to drop, for metrics.
 *
 * A Map iterates in insertion order, so delete + re-insert makes it a recency list with O(1)
 * get and set and no linked list of our own.
 */

export type EvictReason = "capacity" | "expired";

interface Slot<V> {
  value: V;
  bytes: number;
  expiresAt: number;
}

export class ByteLru<V> {
  private readonly map = new Map<string, Slot<V>>();
  private total = 0;
  /** The key at the most-recent end, or undefined when unknown: a get of it reorders nothing. */
  private newest: string | undefined;

  constructor(
    readonly maxBytes: number,
    private readonly onEvict?: (reason: EvictReason, key: string, value: V) => void,
  ) {
    if (!(Number.isFinite(maxBytes) && maxBytes >= 0)) {
      throw new RangeError(`ByteLru: maxBytes must be a finite number >= 0, got ${maxBytes}`);
    }
  }

  /** Sum of the stored entries' bytes. */
  get bytes(): number {
    return this.total;
  }

  get size(): number {
    return this.map.size;
  }

  /** The live value, marked most recently used; undefined when missing or expired at `now`. */
  get(key: string, now: number): V | undefined {
    const slot = this.map.get(key);
    if (slot === undefined) return undefined;
    if (slot.expiresAt <= now) {
      this.remove(key, slot);
      this.onEvict?.("expired", key, slot.value);
      return undefined;
    }
    // Already the most recent (the same entry asked for again): nothing to move.
    if (this.newest !== key) {
      this.map.delete(key);
      this.map.set(key, slot);
      this.newest = key;
    }
    return slot.value;
  }

  /** Whether a live entry exists, without marking it used. */
  has(key: string, now: number): boolean {
    const slot = this.map.get(key);
    return slot !== undefined && slot.expiresAt > now;
  }

  /**
   * Stores (or replaces) the entry as most recently used, then evicts from the least-recent
   * end while over the bound. Returns false when the entry alone exceeds `maxBytes`.
   */
  set(key: string, value: V, bytes: number, expiresAt: number): boolean {
    if (!(Number.isFinite(bytes) && bytes >= 0)) {
      throw new RangeError(`ByteLru: bytes must be a finite number >= 0, got ${bytes}`);
    }
    const old = this.map.get(key);
    if (old !== undefined) this.remove(key, old);
    if (bytes > this.maxBytes) return false;
    this.map.set(key, { value, bytes, expiresAt });
    this.newest = key;
    this.total += bytes;
    this.evictOver();
    return true;
  }

  delete(key: string): boolean {
    const slot = this.map.get(key);
    if (slot === undefined) return false;
    this.remove(key, slot);
    return true;
  }

  /** Deletes every entry the predicate accepts (e.g. one pool's or one tenant's); O(n). */
  deleteWhere(pred: (key: string, value: V) => boolean): number {
    let n = 0;
    // Deleting the current entry while iterating a Map is defined: iteration goes on.
    for (const [key, slot] of this.map) {
      if (pred(key, slot.value)) {
        this.remove(key, slot);
        n++;
      }
    }
    return n;
  }

  /** Removes every entry expired at `now`, reporting each as "expired"; O(n). */
  prune(now: number): number {
    let n = 0;
    for (const [key, slot] of this.map) {
      if (slot.expiresAt <= now) {
        this.remove(key, slot);
        this.onEvict?.("expired", key, slot.value);
        n++;
      }
    }
    return n;
  }

  clear(): void {
    this.map.clear();
    this.newest = undefined;
    this.total = 0;
  }

  /** Keys from least to most recently used (tests, debugging). */
  keys(): string[] {
    return [...this.map.keys()];
  }

  private evictOver(): void {
    while (this.total > this.maxBytes) {
      const oldest = this.map.entries().next();
      if (oldest.done === true) break;
      const [key, slot] = oldest.value;
      this.remove(key, slot);
      this.onEvict?.("capacity", key, slot.value);
    }
  }

  private remove(key: string, slot: Slot<V>): void {
    this.map.delete(key);
    if (key === this.newest) this.newest = undefined;
    this.total -= slot.bytes;
    // Float sums of fractional sizes can leave dust; an empty cache weighs exactly nothing.
    if (this.map.size === 0) this.total = 0;
  }
}
