/**
 * The response cache: an in-process LRU bounded in bytes in front of the shared store, and the
 * coordination that makes concurrent identical misses cost one upstream call: one per replica
 * through an in-process flight, and one across replicas through a store lock with expiry.
 * Waiters on another replica's lock poll for the entry; when the lock expires first, they go
 * upstream on their own. The cache is best effort: a store error is a miss, never a failure.
 *
 * The LRU holds entries encoded (the bytes the store holds too), so its bound is what it really
 * holds: a decoded answer is an object tree several times its JSON size, which a byte bound on
 * the JSON does not see. A hit for a streamed request decodes its entry; a hit for a
 * non-streamed one is served from the answer's JSON body, rendered once at its first such hit
 * and kept beside the entry (counted in the bound too), so the usual hit decodes nothing.
 *
 * Followers of an in-process flight wait at most `waitMs` (the pool's first-byte timeout: no
 * longer than the backend itself may take to start answering), then go upstream on their own.
 * When the leader fails, the first follower still waiting becomes the leader, so a failure
 * costs one more upstream call, not one per follower.
 *
 * Logical keys are `cache:<scope>:<model>:<sha256>` (scope and model URI-encoded), so a purge by
 * tenant is one prefix and a purge by model is one prefix per scope.
 */
import { randomUUID } from "node:crypto";
import type { CacheConfig } from "../config/index.js";
import type { Store } from "../store/types.js";
import { type CachedAnswer, decodeEntry, encodeEntry } from "./entry.js";
import { KeyMemo } from "./key-memo.js";
import { ByteLru, type EvictReason } from "./lru.js";
import { streamToJson } from "./render.js";

export type CacheStatus = "HIT" | "MISS" | "STALE" | "BYPASS";

export interface CacheEvents {
  evicted?(reason: EvictReason): void;
  waited?(): void;
  lockTimedOut?(): void;
  storeError?(operation: string): void;
}

/** A cache hit: the JSON body a non-streamed client gets, or the entry itself. */
export interface Hit {
  freshUntil: number;
  /** Rendered for a non-streamed request. */
  body?: Buffer;
  /** Decoded when the body alone does not serve (a streamed request, a follower's answer). */
  answer?: CachedAnswer;
}

export interface Lookup {
  fresh?: Hit;
  stale?: Hit;
}

/** What the memory tier holds per key: the encoded entry, its lifetimes, and the rendered body once asked for. */
interface Stored {
  blob: Buffer;
  freshUntil: number;
  staleUntil: number;
  json?: Buffer;
}

export type Flight =
  | { role: "leader"; finish(answer: CachedAnswer | undefined): Promise<void> }
  | { role: "follower"; answer: CachedAnswer | undefined };

/** The requests waiting on one key's leader in this replica. */
interface FlightState {
  waiters: ((outcome: CachedAnswer | "lead") => void)[];
}

const POLL_MS = 25;

/**
 * The share of the memory bound that remembers the keys of request bodies already keyed
 * (key-memo.ts); the entries get the rest. 1/16 of the default 64 MB is room for about 16,000
 * bodies' keys, for the cost of a few entries.
 */
const KEY_MEMO_SHARE = 1 / 16;

export function entryKey(scope: string, model: string, hash: string): string {
  return `cache:${encodeURIComponent(scope)}:${encodeURIComponent(model)}:${hash}`;
}

export class ResponseCache {
  private readonly lru: ByteLru<Stored>;
  private readonly memo: KeyMemo;
  private readonly flights = new Map<string, FlightState>();
  private readonly owner = randomUUID();
  /** Bytes this replica wrote to the shared store, by key, until they expire (for metrics). */
  private readonly written = new Map<string, { bytes: number; until: number }>();

  constructor(
    private readonly store: Store,
    memoryBytes: number,
    private readonly events: CacheEvents = {},
    private readonly now: () => number = Date.now,
  ) {
    const memoBytes = Math.floor(memoryBytes * KEY_MEMO_SHARE);
    this.memo = new KeyMemo(memoBytes);
    this.lru = new ByteLru<Stored>(memoryBytes - memoBytes, (reason) => this.events.evicted?.(reason));
  }

  /**
   * The key `make` gives for this request body, computed once per distinct bytes (for the same
   * scope, pool and route): `raw` must be the bytes the body `make` keys was parsed from.
   */
  keyOf(scope: string, pool: string, route: string, raw: Buffer | undefined, make: () => string): string {
    return this.memo.keyOf(scope, pool, route, raw, make);
  }

  /** Keys with a flight in progress in this replica. */
  get flightCount(): number {
    return this.flights.size;
  }

  /** Bytes held in this process: the entries and the remembered keys. */
  get memoryBytes(): number {
    return this.lru.bytes + this.memo.bytes;
  }

  /** Entry bytes written to the shared store by this replica and not yet expired. */
  storeBytes(): number {
    if (this.store.kind === "memory") return 0;
    const now = this.now();
    let total = 0;
    for (const [key, w] of this.written) {
      if (w.until <= now) this.written.delete(key);
      else total += w.bytes;
    }
    return total;
  }

  /** The entry, fresh or stale (within its stale window), from memory or the store. */
  lookup(key: string, wantJson: boolean): Lookup | Promise<Lookup> {
    const stored = this.lru.get(key, this.now());
    if (stored || this.store.kind === "memory") return this.hitOf(key, stored, undefined, wantJson);
    return this.fetch(key).then((found) =>
      found
        ? this.hitOf(key, this.remember(key, found.blob, found.entry), found.entry, wantJson)
        : this.hitOf(key, undefined, undefined, wantJson),
    );
  }

  /**
   * A hit on what this replica holds, decided in the same turn: the memory tier answers without
   * a promise (a hit is the cheapest answer the gateway gives, and a promise per request is
   * measurable at its rates).
   */
  private hitOf(
    key: string,
    stored: Stored | undefined,
    decoded: CachedAnswer | undefined,
    wantJson: boolean,
  ): Lookup {
    if (!stored) return {};
    const now = this.now();
    let hit: Hit;
    if (wantJson && stored.json) {
      hit = { freshUntil: stored.freshUntil, body: stored.json };
    } else {
      const entry = decoded ?? decodeEntry(stored.blob);
      if (!entry) return {};
      hit = { freshUntil: stored.freshUntil, answer: entry };
      if (wantJson) {
        hit.body = Buffer.from(JSON.stringify(entry.json ?? streamToJson(entry)));
        // Kept for the next non-streamed hit, and weighed with the entry.
        stored.json = hit.body;
        this.lru.set(key, stored, stored.blob.length + hit.body.length, stored.staleUntil);
      }
    }
    if (now < stored.freshUntil) return { fresh: hit };
    if (now < stored.staleUntil) return { stale: hit };
    return {};
  }

  private remember(key: string, blob: Buffer, entry: CachedAnswer): Stored {
    const stored: Stored = { blob, freshUntil: entry.freshUntil, staleUntil: entry.staleUntil };
    this.lru.set(key, stored, blob.length, entry.staleUntil);
    return stored;
  }

  /**
   * Joins the flight for a missing key. The first caller in this replica leads (and, with a
   * shared store, takes the cross-replica lock); the others wait for its answer, at most waitMs.
   */
  async join(key: string, config: CacheConfig, waitMs: number): Promise<Flight> {
    const flight = this.flights.get(key);
    if (!flight) {
      const state: FlightState = { waiters: [] };
      this.flights.set(key, state);
      return this.lead(key, state, config);
    }
    this.events.waited?.();
    const outcome = await new Promise<CachedAnswer | "lead" | undefined>((resolve) => {
      const waiter = (o: CachedAnswer | "lead") => {
        clearTimeout(timer);
        resolve(o);
      };
      const timer = setTimeout(() => {
        const i = flight.waiters.indexOf(waiter);
        if (i !== -1) flight.waiters.splice(i, 1);
        resolve(undefined);
      }, waitMs);
      flight.waiters.push(waiter);
    });
    if (outcome === "lead") return this.lead(key, flight, config);
    return { role: "follower", answer: outcome };
  }

  private async lead(key: string, flight: FlightState, config: CacheConfig): Promise<Flight> {
    let locked = false;
    if (this.store.kind !== "memory") {
      locked = await this.store.acquireLock(key, this.owner, config.lockTimeout).catch(() => {
        this.events.storeError?.("lock");
        return true; // a store in trouble cannot coordinate: go upstream
      });
      if (!locked) {
        const answer = await this.awaitOther(key, config.lockTimeout);
        if (answer) {
          this.land(key, flight, answer);
          return { role: "follower", answer };
        }
        this.events.lockTimedOut?.();
      }
    }
    const unlock = async () => {
      if (locked) await this.store.releaseLock(key, this.owner).catch(() => undefined);
    };
    let finished = false;
    return {
      role: "leader",
      // Lands once (the first call wins: the request's own end, or its cleanup), and releases
      // the waiters as soon as the answer is in memory, before the store write.
      finish: async (answer) => {
        if (finished) return;
        finished = true;
        const encoded = answer ? this.encodeWithin(answer, config.maxEntrySize) : undefined;
        if (!answer || !encoded) {
          // The lock goes first, so the next leader can take it.
          await unlock();
          this.land(key, flight, undefined);
          return;
        }
        try {
          this.putMemory(key, answer, encoded);
          this.land(key, flight, answer);
          await this.putStore(key, answer, encoded);
        } finally {
          await unlock();
        }
      },
    };
  }

  /** The leader is done: its answer to every waiter, or, without one, the lead to the next. */
  private land(key: string, flight: FlightState, answer: CachedAnswer | undefined): void {
    if (answer) {
      this.flights.delete(key);
      for (const waiter of flight.waiters) waiter(answer);
      flight.waiters.length = 0;
      return;
    }
    const next = flight.waiters.shift();
    if (next) next("lead");
    else this.flights.delete(key);
  }

  /**
   * Stores an answer in both tiers (the store write is best effort); one larger than
   * maxEntrySize is not stored. The answer is encoded once, for its size and the store.
   */
  async put(key: string, answer: CachedAnswer, maxEntrySize: number): Promise<void> {
    const encoded = this.encodeWithin(answer, maxEntrySize);
    if (!encoded) return;
    this.putMemory(key, answer, encoded);
    await this.putStore(key, answer, encoded);
  }

  private encodeWithin(answer: CachedAnswer, maxEntrySize: number): Buffer | undefined {
    const encoded = encodeEntry(answer);
    return encoded.length > maxEntrySize ? undefined : encoded;
  }

  private putMemory(key: string, answer: CachedAnswer, encoded: Buffer): void {
    this.remember(key, encoded, answer);
  }

  private async putStore(key: string, answer: CachedAnswer, bytes: Buffer): Promise<void> {
    if (this.store.kind === "memory") return;
    const ttl = Math.max(1, answer.staleUntil - this.now());
    await this.store.setBlob(key, bytes, ttl).then(
      () => {
        this.written.set(key, { bytes: bytes.length, until: answer.staleUntil });
      },
      () => this.events.storeError?.("set"),
    );
  }

  /** Deletes entries by tenant (scope), by model, or all; returns how many the store held. */
  async purge(filter: { scope?: string; model?: string }, scopes: readonly string[]): Promise<number> {
    const prefixes: string[] = [];
    if (filter.scope !== undefined && filter.model !== undefined) {
      prefixes.push(`cache:${encodeURIComponent(filter.scope)}:${encodeURIComponent(filter.model)}:`);
    } else if (filter.scope !== undefined) {
      prefixes.push(`cache:${encodeURIComponent(filter.scope)}:`);
    } else if (filter.model !== undefined) {
      for (const s of scopes)
        prefixes.push(`cache:${encodeURIComponent(s)}:${encodeURIComponent(filter.model)}:`);
    } else {
      prefixes.push("cache:");
    }
    this.lru.deleteWhere((key) => prefixes.some((p) => key.startsWith(p)));
    for (const key of this.written.keys())
      if (prefixes.some((p) => key.startsWith(p))) this.written.delete(key);
    let removed = 0;
    for (const p of prefixes) removed += await this.store.deleteBlobsByPrefix(p);
    return removed;
  }

  /** An entry from the store, with the blob it came from (what the LRU keeps). */
  private async fetch(key: string): Promise<{ entry: CachedAnswer; blob: Buffer } | undefined> {
    try {
      const blob = await this.store.getBlob(key);
      const entry = blob ? decodeEntry(blob) : undefined;
      return entry && blob ? { entry, blob } : undefined;
    } catch {
      this.events.storeError?.("get");
      return undefined;
    }
  }

  /** Another replica holds the lock: wait for its entry, or for the lock to lapse. */
  private async awaitOther(key: string, lockTimeoutMs: number): Promise<CachedAnswer | undefined> {
    const deadline = this.now() + lockTimeoutMs;
    while (this.now() < deadline) {
      await new Promise((r) => setTimeout(r, POLL_MS));
      const found = await this.fetch(key);
      if (found && this.now() < found.entry.freshUntil) {
        this.remember(key, found.blob, found.entry);
        return found.entry;
      }
    }
    return undefined;
  }
}
