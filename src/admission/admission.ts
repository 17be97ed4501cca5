/**
 * Admission control for one pool: a request that finds no free slot waits for one instead of
 * being refused, in the order of queue.ts, and is refused at once (not after waiting out its
 * deadline) when the wait it faces cannot fit its deadline.
 *
 *   acquire ─▶ nothing waits ahead and a backend has a free slot ─▶ that slot, synchronously
 *           └▶ the pool cannot serve at all (no healthy backend) ─▶ no_backend_available (the
 *              caller falls back); else the band is full ─▶ queue_full; the estimated wait is
 *              past the deadline ─▶ queue_deadline_unmeetable; the pool's queue is full ─▶ the
 *              newest request of the lowest band below is evicted (queue_evicted), or
 *              queue_full when there is none; else a Ticket that waits
 *   release ─▶ the freed slot goes to the head of the queue (the wake-up is the release itself)
 *
 * The wait estimate is (requests ahead + 1) ÷ the drain rate left to the band, with requests
 * ahead from the queue's order and the drain rate measured (drain-rate.ts) less the share of
 * freed slots the bands above it take; an arrival waits only if the estimate is within 90% of
 * the time to its deadline (ESTIMATE_HEADROOM). Refusals say when to come back: the
 * estimated time until the work now waiting at or above the band has drained, with up to 20%
 * jitter so that refused clients do not return in one wave, capped at a minute (or the band's
 * maxWait, if longer).
 *
 * A lower band takes a slot only when no higher band waits, and never one of the slots the
 * `reserve` keeps for the interactive band.
 */
import type { AdmissionConfig } from "../config/index.js";
import { errors, type GatewayError } from "../errors.js";
import type { AffinityKey } from "../upstream/affinity.js";
import { DrainRate } from "./drain-rate.js";
import { AdmissionQueue, BAND_NAMES, type BandName, type QueueEntry } from "./queue.js";

/** What admission needs of a pool. */
export interface SlotSource<B> {
  readonly name: string;
  /**
   * A slot on the backend the balancer picks, or undefined when none has one free. With an
   * affinity key, on the key's backend; with `hops` as well, only on its home or that many
   * ring successors within their load bounds.
   */
  take(exclude?: ReadonlySet<B>, key?: AffinityKey, hops?: number): B | undefined;
  /** A slot take() gave was handed to a request (metrics). */
  selected?(b: B): void;
  /** How long a queued request with an affinity key waits for its own backends; 0: not at all. */
  readonly affinityGraceMs?: number;
  /** This key's grace (ms), when it depends on the key (what a miss would cost it); else affinityGraceMs. */
  affinityGraceFor?(key: AffinityKey): number;
  /** Ring successors past the home that count as its own backends. */
  readonly affinityHops?: number;
  /**
   * A keyed arrival whose own backends cannot take it now waits for them too (the grace), rather
   * than taking another backend at once: where the pool knows its prefix is cached (a model of
   * the engines' caches), so that another backend would recompute it.
   */
  readonly affinityParksArrivals?: boolean;
  /** Gives back a slot take() gave, unused (no completion). */
  untake(b: B): void;
  /** Some backend could serve if it had a free slot (healthy, not drained). */
  servable(): boolean;
  /** Slots in use, and the slots of the backends that can serve. */
  inUse(): number;
  capacity(): number;
  /** When to come back if nothing can serve (breakers, Retry-After of backends). */
  unavailableRetryAfterMs(): number;
}

export interface AdmissionRequest<B> {
  band: number;
  tenant: string;
  weight: number;
  /** Monotonic ms by which a slot must be handed over. */
  deadline: number;
  /** A retry after a backend's 429/503: front of its band, same deadline. */
  retry: boolean;
  /** Work a job runs: never refused on the estimate, only by its deadline or a full queue. */
  patient: boolean;
  exclude?: ReadonlySet<B>;
  /** The request's prefix-affinity key (src/upstream/affinity.ts), when its pool has affinity. */
  affinity?: AffinityKey;
}

export const ADMISSION_OUTCOMES = [
  "immediate",
  "after_wait",
  "queue_full",
  "deadline_unmeetable",
  "evicted",
  "timed_out",
  "cancelled",
  "no_backend",
  "shutting_down",
] as const;
export type AdmissionOutcome = (typeof ADMISSION_OUTCOMES)[number];
const OUTCOME_INDEX = new Map<AdmissionOutcome, number>(ADMISSION_OUTCOMES.map((o, i) => [o, i]));

export interface AdmissionEvents {
  /** Every decision (metrics read `Admission.decisions` instead, at scrape time). */
  decided?(pool: string, band: BandName, outcome: AdmissionOutcome): void;
  /** A request left the queue (any way) after waiting this long. */
  waited?(pool: string, band: BandName, seconds: number): void;
}

/** The error codes of load refusals (a pool may send them down its fallback chain). */
export const LOAD_REFUSALS: ReadonlySet<string> = new Set([
  "queue_full",
  "queue_deadline_unmeetable",
  "queue_evicted",
  "queue_timeout",
]);

const RETRY_AFTER_CAP_MS = 60_000;
/**
 * An arrival is admitted to wait when its estimated wait is within this share of the time to
 * its deadline. The estimate is a mean: a request admitted right at its deadline would miss it
 * about half the time and fail slowly (queue_timeout) instead of being refused at once. The
 * 10% margin costs a slightly shorter queue, which under overload still keeps every slot busy.
 */
const ESTIMATE_HEADROOM = 0.9;
/** A lower band's share of freed slots is never counted as less than this (no infinite waits). */
const MIN_BAND_SHARE = 0.05;
const RETRY_AFTER_MIN_MS = 10;

/** A request waiting for a slot. */
export class Ticket<B> implements QueueEntry {
  readonly band: number;
  readonly tenant: string;
  readonly weight: number;
  readonly deadline: number;
  readonly retry: boolean;
  readonly exclude: ReadonlySet<B> | undefined;
  readonly key: AffinityKey | undefined;
  seq = 0;
  waiting = false;
  /** Its turn came, and it waits until graceUntil for a slot on its own backends (affinity). */
  parked = false;
  graceUntil = 0;
  timer: NodeJS.Timeout | undefined;
  readonly promise: Promise<B>;
  /** Called with the slot as it is handed over, before the promise resolves. */
  onGrant: ((b: B) => void) | undefined;
  private resolve!: (b: B) => void;
  private reject!: (err: Error) => void;

  constructor(
    request: AdmissionRequest<B>,
    readonly enqueuedAt: number,
    private readonly admission: Admission<B>,
  ) {
    this.band = request.band;
    this.tenant = request.tenant;
    this.weight = request.weight;
    this.deadline = request.deadline;
    this.retry = request.retry;
    this.exclude = request.exclude;
    this.key = request.affinity;
    this.promise = new Promise<B>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  /** The client left or the exchange timed out: out of the queue now, rejected with err. */
  cancel(err: Error): void {
    this.admission.cancel(this, err);
  }

  grant(b: B): void {
    clearTimeout(this.timer);
    this.onGrant?.(b);
    this.resolve(b);
  }

  fail(err: Error): void {
    clearTimeout(this.timer);
    this.reject(err);
  }
}

export class Admission<B> {
  readonly queue = new AdmissionQueue<Ticket<B>>();
  readonly drain: DrainRate;
  /**
   * Decisions so far, [band][index in ADMISSION_OUTCOMES]: plain numbers that the metrics read
   * when scraped, so that the fast path pays one increment, not a labelled counter's lookup.
   */
  readonly decisions: number[][] = BAND_NAMES.map(() => ADMISSION_OUTCOMES.map(() => 0));
  private pumping = false;
  /**
   * Keyed requests whose turn came while their own backends (the key's home and its next
   * successors within their bounds) had no free slot: each waits up to the grace for one of
   * them, ahead of the queue, and after it takes any backend. Slots they pass up go on to the
   * queue behind them, so a pool never idles a slot a waiting request could use for longer
   * than the grace. In the order their turn came; at most as many as the pool's slots. With
   * cache models (affinityParksArrivals), an arrival that finds the queue empty and a free slot
   * only on backends that do not hold its prefix waits here too.
   */
  private readonly parked: Ticket<B>[] = [];
  private graceTimer: NodeJS.Timeout | undefined;
  /** When each slot in use was taken, oldest first (takes happen in time order). */
  private readonly starts: number[] = [];
  /** When the last slot was taken: its holder gives it back with released(lastTake). */
  lastTake = 0;

  constructor(
    private readonly source: SlotSource<B>,
    private config: AdmissionConfig,
    private readonly now: () => number,
    private readonly events: AdmissionEvents = {},
    private readonly random: () => number = Math.random,
  ) {
    this.drain = new DrainRate(now());
  }

  get enabled(): boolean {
    return this.config.enabled;
  }

  /**
   * A reload's settings. Requests already waiting keep the deadline they entered with (their
   * config generation) until dispatch; the new bounds apply to those that arrive from now.
   */
  reconfigure(config: AdmissionConfig): void {
    this.config = config;
    if (this.waitingTotal > 0) this.pump();
  }

  /** A slot now, a Ticket to wait on, or a refusal thrown (GatewayError). */
  acquire(request: AdmissionRequest<B>): B | Ticket<B> {
    const band = request.band;
    if (this.queue.ahead(band, request.tenant, request.weight, true) === 0 && this.mayTake(band)) {
      const parks =
        request.affinity !== undefined &&
        (this.source.affinityGraceMs ?? 0) > 0 &&
        this.source.affinityParksArrivals === true;
      const hops = parks ? (this.source.affinityHops ?? 0) : undefined;
      const b = this.take(request.exclude, band, request.tenant, request.affinity, hops);
      if (b !== undefined) {
        this.decided(band, "immediate");
        this.source.selected?.(b);
        return b;
      }
      // Its own backends cannot take it but another could: it waits for them (parked, as a
      // queued request whose turn came), or takes that other one when as many wait so already
      // as the pool has slots. With no slot free anywhere, it queues as any request does.
      const free = parks ? this.take(request.exclude) : undefined;
      if (free !== undefined) {
        this.untake(free);
        const now = this.now();
        const grace = this.graceFor(request.affinity, this.source.affinityGraceMs ?? 0);
        if (grace > 0 && this.parked.length < Math.max(1, this.source.capacity()) && now < request.deadline) {
          const ticket = new Ticket(request, now, this);
          ticket.timer = setTimeout(() => this.expire(ticket), request.deadline - now);
          this.park(ticket, Math.min(request.deadline, now + grace));
          this.scheduleGrace();
          return ticket;
        }
        const picked = this.take(request.exclude, band, request.tenant, request.affinity);
        if (picked !== undefined) {
          this.decided(band, "immediate");
          this.source.selected?.(picked);
          return picked;
        }
      }
    }
    if (!this.source.servable()) {
      this.decided(band, "no_backend");
      throw errors.noBackendAvailable(this.source.name, this.source.unavailableRetryAfterMs());
    }
    if (!this.config.enabled) {
      // No queue: the fast 503 of a full pool, which its fallback chain may take.
      this.decided(band, "no_backend");
      throw errors.noBackendAvailable(this.source.name, this.retryAfterMs(band));
    }
    const now = this.now();
    const settings = this.settings(band);
    if (this.queue.size(band) >= settings.maxQueue) return this.refuse(band, "queue_full");
    // Arrived (or came back for a retry) with its deadline already past: it cannot be met.
    if (now >= request.deadline) return this.refuse(band, "deadline_unmeetable", 0);
    if (!request.patient && this.drain.measured) {
      const wait = this.estimateMs(
        this.queue.ahead(band, request.tenant, request.weight, request.retry),
        band,
        request.tenant,
      );
      if (wait > (request.deadline - now) * ESTIMATE_HEADROOM)
        return this.refuse(band, "deadline_unmeetable", wait);
    }
    if (this.queue.total >= this.config.maxQueue) {
      const victim = this.queue.newestBelow(band);
      if (!victim) return this.refuse(band, "queue_full");
      this.drop(victim, "evicted", this.refusal("evicted", victim.band));
    }
    const ticket = new Ticket(request, now, this);
    this.queue.push(ticket);
    ticket.timer = setTimeout(() => this.expire(ticket), request.deadline - now);
    return ticket;
  }

  /**
   * A slot taken at `takenAt` (the lastTake of its take) was given back: the drain rate counts
   * it, and the queue's head may take it.
   */
  released(takenAt: number): void {
    this.forgetStart(takenAt);
    this.drain.completed(this.now() - takenAt);
    if (this.waitingTotal > 0) this.pump();
  }

  /** A backend's health, breaker or membership changed: serve the queue, or send it elsewhere. */
  poolChanged(): void {
    if (this.waitingTotal === 0) return;
    if (!this.source.servable()) {
      const retryAfter = this.source.unavailableRetryAfterMs();
      this.refuseAll("no_backend", () => errors.noBackendAvailable(this.source.name, retryAfter));
    } else {
      this.pump();
    }
  }

  /** Shutdown: every waiting request is told to come back (never dropped). */
  shutdown(): void {
    this.refuseAll("shutting_down", () => errors.shuttingDown());
  }

  cancel(ticket: Ticket<B>, err: Error): void {
    if (ticket.waiting || ticket.parked) this.drop(ticket, "cancelled", err);
  }

  /** Requests waiting for a slot: in the queue, and those whose turn came (parked). */
  get waitingTotal(): number {
    return this.queue.total + this.parked.length;
  }

  /** Requests waiting in a band, parked ones included. */
  waiting(band: number): number {
    let n = this.queue.size(band);
    for (const t of this.parked) if (t.band === band) n++;
    return n;
  }

  /** Requests waiting at or above a band, parked ones included. */
  private waitingAtOrAbove(band: number): number {
    let n = this.queue.sizeAtOrAbove(band);
    for (const t of this.parked) if (t.band <= band) n++;
    return n;
  }

  /** When a client refused in this band should come back (ms). */
  retryAfterMs(band: number): number {
    const ms = this.estimateMs(this.waitingAtOrAbove(band), band);
    const cap = Math.max(RETRY_AFTER_CAP_MS, this.settings(band).maxWait);
    const jittered = ms * (1 + 0.2 * this.random());
    return Math.round(Math.min(cap, Math.max(RETRY_AFTER_MIN_MS, jittered)));
  }

  /**
   * Expected ms until `ahead` waiting requests and then one more of `band` have been handed
   * slots, less the share of freed slots the bands above take.
   *
   * With H = 1 / (completions per busy slot-second), the mean time a slot is held, and the n
   * slots in use ordered oldest first, slot i is expected to free after max(0, H - age_i), and
   * every H after that. Request k (0-based) of the queue gets the k-th of those moments:
   *     wait(k) = floor(k / n) × H + max(0, H - age_(k mod n))
   * Under a smooth drain (slot ages spread evenly) this is (k + 1) × H / n, the drain rate's
   * estimate; when slots were filled together, as after a surge starts on an idle pool, they
   * free together too, and the second wave waits a whole H more, which the rate alone misses.
   */
  estimateMs(ahead: number, band = 0, tenant?: string): number {
    const perSlot = this.drain.perSlotPerSecond;
    const others = tenant === undefined ? 0 : this.drain.othersShare(band, tenant);
    const share = Math.max(MIN_BAND_SHARE, (1 - this.drain.higherShare(band)) * (1 - others));
    if (perSlot <= 0) return Number.POSITIVE_INFINITY;
    const hold = 1000 / perSlot;
    const n = this.starts.length;
    if (n === 0) {
      const capacity = this.source.capacity();
      return capacity > 0 ? ((ahead + 1) * hold) / capacity / share : Number.POSITIVE_INFINITY;
    }
    const age = this.now() - (this.starts[ahead % n] ?? 0);
    return (Math.floor(ahead / n) * hold + Math.max(0, hold - age)) / share;
  }

  /** Slots freed per second with every slot busy: per busy slot × the slots that can serve. */
  drainPerSecond(): number {
    return this.drain.perSlotPerSecond * this.source.capacity();
  }

  status(): AdmissionStatus {
    const waiting = {} as Record<BandName, number>;
    const estimatedWaitMs = {} as Record<BandName, number | null>;
    BAND_NAMES.forEach((name, band) => {
      waiting[name] = this.waiting(band);
      const ms = this.estimateMs(this.waitingAtOrAbove(band), band);
      estimatedWaitMs[name] = Number.isFinite(ms) ? Math.round(ms) : null;
    });
    return {
      enabled: this.config.enabled,
      waiting,
      estimatedWaitMs,
      slotsInUse: this.source.inUse(),
      slotCapacity: this.source.capacity(),
      drainPerSecond: Math.round(this.drainPerSecond() * 100) / 100,
      drainMeasured: this.drain.measured,
    };
  }

  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      if (this.parked.length > 0) this.serveParked();
      const grace = this.source.affinityGraceMs ?? 0;
      while (this.queue.total > 0) {
        const inUse = this.source.inUse();
        const b = this.take(undefined);
        if (b === undefined) return;
        const ticket = this.queue.pop((band) => this.mayTakeWith(band, inUse));
        if (!ticket) {
          this.untake(b);
          return;
        }
        if (ticket.key !== undefined && grace > 0) {
          this.untake(b);
          this.placeKeyed(ticket, grace);
          continue;
        }
        let slot = b;
        if (ticket.exclude?.has(b)) {
          // A retry would rather not go back where it just failed: another free slot if any.
          const other = this.take(ticket.exclude);
          if (other !== undefined && !ticket.exclude.has(other)) {
            this.untake(b);
            slot = other;
          } else if (other !== undefined) {
            this.untake(other);
          }
        }
        this.hand(ticket, slot);
      }
    } finally {
      this.pumping = false;
      this.scheduleGrace();
    }
  }

  /**
   * A keyed request whose turn came (a slot is free somewhere): a slot on its own backends, else
   * it waits for one (parked), else, when as many wait so already as the pool has slots, any.
   */
  private placeKeyed(ticket: Ticket<B>, grace: number): void {
    let slot = this.take(ticket.exclude, -1, "", ticket.key, this.source.affinityHops ?? 0);
    const wait = this.graceFor(ticket.key, grace);
    if (slot === undefined && wait > 0 && this.parked.length < Math.max(1, this.source.capacity())) {
      this.park(ticket, Math.min(ticket.deadline, this.now() + wait));
      return;
    }
    slot ??= this.take(ticket.exclude, -1, "", ticket.key) ?? this.take(ticket.exclude);
    // Cannot be undefined (a slot was free a moment ago); were it so, waiting is never wrong.
    if (slot === undefined) this.park(ticket, this.now());
    else this.hand(ticket, slot);
  }

  private graceFor(key: AffinityKey | undefined, grace: number): number {
    return key !== undefined && this.source.affinityGraceFor ? this.source.affinityGraceFor(key) : grace;
  }

  private park(ticket: Ticket<B>, graceUntil: number): void {
    ticket.parked = true;
    ticket.graceUntil = graceUntil;
    this.parked.push(ticket);
  }

  /** Parked requests, first come first: a slot on their own backends, or any once past the grace. */
  private serveParked(): void {
    const now = this.now();
    const grace = this.source.affinityGraceMs ?? 0;
    const hops = this.source.affinityHops ?? 0;
    for (let i = 0; i < this.parked.length; ) {
      const ticket = this.parked[i] as Ticket<B>;
      const late = grace === 0 || now >= ticket.graceUntil;
      const b = this.take(ticket.exclude, -1, "", ticket.key, late ? undefined : hops);
      if (b === undefined) {
        // No slot anywhere: nobody behind it can have one either.
        if (late) return;
        i++;
        continue;
      }
      this.parked.splice(i, 1);
      ticket.parked = false;
      this.hand(ticket, b);
    }
  }

  /** Wakes the queue when the first parked request that is not yet late reaches its grace. */
  private scheduleGrace(): void {
    clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
    const now = this.now();
    let next = Number.POSITIVE_INFINITY;
    for (const t of this.parked) if (t.graceUntil > now && t.graceUntil < next) next = t.graceUntil;
    if (!Number.isFinite(next)) return;
    this.graceTimer = setTimeout(() => {
      this.graceTimer = undefined;
      this.pump();
    }, next - now);
  }

  private hand(ticket: Ticket<B>, b: B): void {
    this.left(ticket, "after_wait");
    this.drain.handed(this.now(), ticket.band, ticket.tenant);
    this.source.selected?.(b);
    ticket.grant(b);
  }

  private take(
    exclude: ReadonlySet<B> | undefined,
    band = -1,
    tenant = "",
    key?: AffinityKey,
    hops?: number,
  ): B | undefined {
    const b = this.source.take(exclude, key, hops);
    if (b !== undefined) {
      const now = this.now();
      if (band >= 0) this.drain.handed(now, band, tenant);
      this.starts.push(now);
      this.lastTake = now;
    }
    return b;
  }

  /** Gives back a slot take() just gave, unused (within the same pump: its start is the last). */
  private untake(b: B): void {
    this.starts.pop();
    this.source.untake(b);
  }

  private forgetStart(takenAt: number): void {
    const starts = this.starts;
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((starts[mid] ?? 0) < takenAt) lo = mid + 1;
      else hi = mid;
    }
    starts.splice(Math.min(lo, starts.length - 1), 1);
  }

  private mayTake(band: number): boolean {
    return this.mayTakeWith(band, this.source.inUse());
  }

  /** Band 0 may take any free slot; a lower one none of the reserved share. */
  private mayTakeWith(band: number, inUse: number): boolean {
    if (band === 0 || this.config.reserve === 0) return true;
    const capacity = this.source.capacity();
    return inUse + 1 <= capacity - Math.floor((capacity * this.config.reserve) / 100);
  }

  private expire(ticket: Ticket<B>): void {
    if (!ticket.waiting && !ticket.parked) return;
    const waited = this.now() - ticket.enqueuedAt;
    this.drop(ticket, "timed_out", this.refusal("timed_out", ticket.band, waited));
  }

  private refuse(band: number, outcome: "queue_full" | "deadline_unmeetable", wait = 0): never {
    this.decided(band, outcome);
    throw this.refusal(outcome, band, wait);
  }

  private refusal(
    why: "queue_full" | "deadline_unmeetable" | "evicted" | "timed_out",
    band: number,
    waitMs = 0,
  ): GatewayError {
    const name = BAND_NAMES[band] ?? "interactive";
    return errors.queueRefused(why, this.source.name, name, this.retryAfterMs(band), waitMs);
  }

  /** A waiting ticket leaves the queue refused. */
  private drop(ticket: Ticket<B>, outcome: AdmissionOutcome, error: Error): void {
    this.queue.remove(ticket);
    if (ticket.parked) {
      ticket.parked = false;
      const i = this.parked.indexOf(ticket);
      if (i !== -1) this.parked.splice(i, 1);
    }
    this.left(ticket, outcome);
    ticket.fail(error);
  }

  private refuseAll(outcome: AdmissionOutcome, error: () => GatewayError): void {
    for (const ticket of [...this.parked, ...this.queue.entries()]) this.drop(ticket, outcome, error());
    this.scheduleGrace();
  }

  private left(ticket: Ticket<B>, outcome: AdmissionOutcome): void {
    const band = BAND_NAMES[ticket.band] ?? "interactive";
    this.events.waited?.(this.source.name, band, (this.now() - ticket.enqueuedAt) / 1000);
    this.decided(ticket.band, outcome);
  }

  private decided(band: number, outcome: AdmissionOutcome): void {
    const row = this.decisions[band];
    const i = OUTCOME_INDEX.get(outcome) ?? 0;
    if (row) row[i] = (row[i] ?? 0) + 1;
    this.events.decided?.(this.source.name, BAND_NAMES[band] ?? "interactive", outcome);
  }

  private settings(band: number): { maxWait: number; maxQueue: number } {
    const name = BAND_NAMES[band] ?? "interactive";
    return this.config.bands[name];
  }
}

export interface AdmissionStatus {
  enabled: boolean;
  waiting: Record<BandName, number>;
  estimatedWaitMs: Record<BandName, number | null>;
  slotsInUse: number;
  slotCapacity: number;
  drainPerSecond: number;
  drainMeasured: boolean;
}
