/**
 * The order in which requests waiting for a pool's slots get them: band, then fairness between
 * tenants, then deadline. A data structure only (no timers, no backends): admission.ts decides
 * when a slot is free and what a refusal says.
 *
 * Bands are strict priorities: a request of a lower band is handed a slot only when no request
 * of a higher band is waiting. Retries (a backend answered 429/503 after the request left the
 * queue) wait at the front of their band, in arrival order: they were admitted once already.
 *
 * Within a band, tenants share slots by Start-time Fair Queuing (Goyal, Vin and Cheng, "Start-time
 * Fair Queuing: a scheduling algorithm for integrated services packet switching networks", 1996),
 * with each request costing one slot. Each tenant f is a flow with weight w_f and tags S_f, F_f:
 *
 *     when f becomes backlogged:   S_f = max(V, F_f)
 *     serve the flow with least S_f; then   V = S_f,   F_f = S_f + 1 / w_f,
 *     and, while f stays backlogged,        S_f = F_f.
 *
 * While two flows stay backlogged, the slots W they receive follow their weights within one
 * request each: |W_f / w_f - W_g / w_g| <= 1 / w_f + 1 / w_g. A flow that was idle starts at V:
 * it banks no credit for the time it sent nothing, and pays nothing for what it used before.
 * SFQ needs no request sizes (unknown before an LLM answers) and orders by tags alone, so a
 * flooding tenant's thousandth request waits behind a light tenant's first.
 *
 * Within a tenant, earliest deadline first (ties in arrival order).
 *
 * Removal (a client leaving, a deadline passing, an eviction) is O(1): the entry is marked and
 * skipped when it reaches a heap's top; a heap of mostly removed entries is rebuilt.
 */

export const BAND_NAMES = ["interactive", "batch", "background"] as const;
export type BandName = (typeof BAND_NAMES)[number];

/** What the queue orders by. `waiting` turns false once it leaves the queue, for any reason. */
export interface QueueEntry {
  /** 0 = interactive (highest), 1 = batch, 2 = background. */
  readonly band: number;
  readonly tenant: string;
  readonly weight: number;
  /** Monotonic ms by which it must be handed a slot. */
  readonly deadline: number;
  readonly retry: boolean;
  /** Arrival order, unique per queue (set by push). */
  seq: number;
  waiting: boolean;
}

class Flow<T extends QueueEntry> {
  readonly heap: T[] = [];
  live = 0;
  start = 0;
  finish = 0;
  constructor(public weight: number) {}
}

class Band<T extends QueueEntry> {
  /** Retries, in arrival order, from `head` on. */
  front: T[] = [];
  head = 0;
  frontLive = 0;
  readonly flows = new Map<string, Flow<T>>();
  /** Backlogged flows. */
  readonly active = new Set<Flow<T>>();
  /** SFQ's virtual time: the start tag of the last request served. */
  virtual = 0;
  live = 0;
  /** Every entry in arrival order, for "the newest of this band" (eviction). */
  arrivals: T[] = [];
}

export class AdmissionQueue<T extends QueueEntry> {
  private readonly bands: Band<T>[] = BAND_NAMES.map(() => new Band<T>());
  private seq = 0;
  total = 0;

  size(band: number): number {
    return this.bands[band]?.live ?? 0;
  }

  /** Requests waiting in this band and the bands above it. */
  sizeAtOrAbove(band: number): number {
    let n = 0;
    for (let b = 0; b <= band; b++) n += this.size(b);
    return n;
  }

  push(entry: T): void {
    const band = this.band(entry.band);
    entry.seq = this.seq++;
    entry.waiting = true;
    band.live++;
    this.total++;
    band.arrivals.push(entry);
    if (entry.retry) {
      band.front.push(entry);
      band.frontLive++;
      return;
    }
    let flow = band.flows.get(entry.tenant);
    if (!flow) {
      flow = new Flow(entry.weight);
      band.flows.set(entry.tenant, flow);
    }
    flow.weight = entry.weight;
    if (flow.live === 0) {
      flow.start = Math.max(band.virtual, flow.finish);
      band.active.add(flow);
    }
    flow.live++;
    heapPush(flow.heap, entry);
  }

  /**
   * The next request to hand a slot, highest band first; `mayTake(band)` says whether a slot
   * may go to that band now (a reserve held for a higher one). Undefined when nothing may.
   */
  pop(mayTake: (band: number) => boolean = () => true): T | undefined {
    for (let b = 0; b < this.bands.length; b++) {
      const band = this.bands[b] as Band<T>;
      if (band.live === 0) continue;
      // A band with requests waiting blocks every band below it.
      return mayTake(b) ? this.popBand(band) : undefined;
    }
    return undefined;
  }

  /** Takes a waiting entry out (client gone, deadline passed, evicted). */
  remove(entry: T): void {
    if (!entry.waiting) return;
    entry.waiting = false;
    const band = this.band(entry.band);
    if (entry.retry) {
      band.frontLive--;
    } else {
      const flow = band.flows.get(entry.tenant);
      if (flow) {
        flow.live--;
        if (flow.live === 0) band.active.delete(flow);
        if (flow.heap.length > 32 && flow.heap.length > 2 * flow.live) rebuild(flow.heap);
      }
    }
    this.left(band);
    if (band.arrivals.length > 32 && band.arrivals.length > 2 * band.live) {
      band.arrivals = band.arrivals.filter((e) => e.waiting);
    }
  }

  /** The newest request waiting in the lowest band that has one below `above`, for eviction. */
  newestBelow(above: number): T | undefined {
    for (let b = this.bands.length - 1; b > above; b--) {
      const band = this.bands[b] as Band<T>;
      if (band.live === 0) continue;
      for (let i = band.arrivals.length - 1; i >= 0; i--) {
        const e = band.arrivals[i] as T;
        if (e.waiting) return e;
      }
    }
    return undefined;
  }

  /**
   * How many waiting requests would be handed a slot before a new one of this band and tenant:
   * every one in the bands above, the retries of its band, its own tenant's backlog, and of
   * each other tenant of the band what SFQ serves while this tenant's backlog drains
   * (its backlog + 1 requests, times the weight ratio, at most what that tenant has waiting).
   */
  ahead(bandIndex: number, tenant: string, weight: number, retry = false): number {
    let n = 0;
    for (let b = 0; b < bandIndex; b++) n += this.size(b);
    const band = this.bands[bandIndex];
    if (!band) return n;
    n += band.frontLive;
    if (retry) return n;
    const own = band.flows.get(tenant)?.live ?? 0;
    n += own;
    for (const [name, flow] of band.flows) {
      if (name === tenant || flow.live === 0) continue;
      n += Math.min(flow.live, Math.ceil(((own + 1) * flow.weight) / weight));
    }
    return n;
  }

  /** Every waiting entry (shutdown, or a pool that can no longer serve). */
  *entries(): IterableIterator<T> {
    for (const band of this.bands) for (const e of band.arrivals) if (e.waiting) yield e;
  }

  private popBand(band: Band<T>): T | undefined {
    while (band.frontLive > 0 && band.head < band.front.length) {
      const e = band.front[band.head++] as T;
      if (!e.waiting) continue;
      band.frontLive--;
      if (band.head > 32 && band.head * 2 > band.front.length) {
        band.front = band.front.slice(band.head);
        band.head = 0;
      }
      return this.taken(band, e);
    }
    let best: Flow<T> | undefined;
    for (const f of band.active) if (!best || f.start < best.start) best = f;
    if (!best) return undefined;
    const e = heapPopWaiting(best.heap);
    if (!e) {
      // Cannot happen (live counts the heap's waiting entries); keep the structure sound.
      band.active.delete(best);
      best.live = 0;
      return undefined;
    }
    band.virtual = best.start;
    best.finish = best.start + 1 / best.weight;
    best.live--;
    if (best.live > 0) best.start = best.finish;
    else band.active.delete(best);
    return this.taken(band, e);
  }

  private taken(band: Band<T>, e: T): T {
    e.waiting = false;
    this.left(band);
    return e;
  }

  private left(band: Band<T>): void {
    band.live--;
    this.total--;
    if (band.live === 0) {
      // An empty band has no backlog to be fair about: its tags start over.
      band.flows.clear();
      band.active.clear();
      band.virtual = 0;
      band.front = [];
      band.head = 0;
      band.frontLive = 0;
      band.arrivals = [];
    }
  }

  private band(index: number): Band<T> {
    const band = this.bands[index];
    if (!band) throw new RangeError(`no band ${index}`);
    return band;
  }
}

// A binary min-heap on (deadline, seq).

function before(a: QueueEntry, b: QueueEntry): boolean {
  return a.deadline < b.deadline || (a.deadline === b.deadline && a.seq < b.seq);
}

function heapPush<T extends QueueEntry>(heap: T[], e: T): void {
  heap.push(e);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (!before(heap[i] as T, heap[parent] as T)) break;
    swap(heap, i, parent);
    i = parent;
  }
}

function heapPopWaiting<T extends QueueEntry>(heap: T[]): T | undefined {
  while (heap.length > 0) {
    const top = heap[0] as T;
    const last = heap.pop() as T;
    if (heap.length > 0) {
      heap[0] = last;
      siftDown(heap, 0);
    }
    if (top.waiting) return top;
  }
  return undefined;
}

function siftDown<T extends QueueEntry>(heap: T[], start: number): void {
  let i = start;
  for (;;) {
    const l = 2 * i + 1;
    const r = l + 1;
    let m = i;
    if (l < heap.length && before(heap[l] as T, heap[m] as T)) m = l;
    if (r < heap.length && before(heap[r] as T, heap[m] as T)) m = r;
    if (m === i) return;
    swap(heap, i, m);
    i = m;
  }
}

function rebuild<T extends QueueEntry>(heap: T[]): void {
  let n = 0;
  for (const e of heap) if (e.waiting) heap[n++] = e;
  heap.length = n;
  for (let i = (n >> 1) - 1; i >= 0; i--) siftDown(heap, i);
}

function swap<T>(a: T[], i: number, j: number): void {
  const t = a[i] as T;
  a[i] = a[j] as T;
  a[j] = t;
}
