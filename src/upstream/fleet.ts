/**
 * Backend slots shared by the replicas of a fleet (`store: redis`, `store.slots.shared`).
 *
 * Shared: the backends with a configured maxConcurrency, the backend's own capacity. A backend
 * without one is capped by each replica's connection pool (maxConnections), which is no
 * capacity of the backend: it is not shared, and a pool of such backends makes no Redis call.
 *
 * Each replica holds, per backend, a claim: the slots it may use. Every `store.slots.sync` (and
 * soon after a request starts waiting) it trades claims with the others in ONE Redis call per
 * pool (FLEET_SYNC_LUA), which keeps the invariant atomically: on each backend the live claims
 * sum to at most its maxConcurrency. Requests are then admitted locally against the claim, with
 * no Redis call on the request path, so a replica's queue, order and estimates stay local.
 *
 * What a replica asks for (its want) comes from everyone's last reported demand, the same
 * computation on every replica:
 *   1. demand of replica j in band k: D_jk = in flight + waiting, in that band;
 *   2. the pool's slots S = Σ maxConcurrency go to the bands in order (interactive first), and
 *      within a band max-min fair between replicas (water-filling, in whole slots);
 *   3. slots no demand takes are split evenly (headroom: a request that arrives at an idle
 *      replica starts at once);
 *   4. replica j's target T_j is spread over the backends: its in-flight stays where it is, and
 *      the free slots of each backend go to the replicas below target in proportion to what
 *      they lack (largest remainder). A replica above its target (its band lost to a higher
 *      one elsewhere) wants less than it has in flight: it dispatches nothing more there, and
 *      the slots its requests free go to the others at their next sync.
 * So the next free slot of the fleet goes to the highest band waiting anywhere, within one sync
 * of the release (the replica whose request ended stops using it at once).
 *
 * Bound: the claims never sum above a backend's slots while Redis answers, so the requests in
 * flight on it, summed over replicas, never exceed maxConcurrency. A replica whose claim
 * shrinks keeps its requests in flight; they count as its claim until they end. A replica that
 * stops syncing loses its claims after `store.slots.lease` (its requests died with it: the
 * backend aborts them when the connections close); a live one renews every sync, so a long
 * stream never loses its slot to a timer.
 *
 * Redis down: each replica uses floor(maxConcurrency / N) slots per backend (at least 1), N the
 * live replicas seen at the last sync (`store.replicas` before any), as the rate limits do; the
 * syncs after it returns trade claims again from the requests then in flight. A restarted Redis
 * has forgotten the claims, so for one lease after the return each replica still keeps to its
 * outage part (every live replica records what it holds meanwhile): the return adds no burst.
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import type { FleetState, Store } from "../store/types.js";
import type { Backend } from "./backend.js";
import type { UpstreamPool, Upstreams } from "./pool.js";

export interface FleetSettings {
  /** ms between two syncs. */
  sync: number;
  /** ms after which a replica that stopped syncing loses its claims. */
  lease: number;
  /** Replicas assumed before any sync succeeded (store.replicas). */
  replicas: number;
}

/** A replica's report, with its id for a deterministic order. */
export interface Report extends FleetState {
  r: string;
  /** In flight per band. */
  f: number[];
}

const BANDS = 3;

export class FleetSlots {
  readonly id = randomUUID();
  /** Live replicas at the last sync, this one included. */
  replicas: number;
  /** The last sync failed: shares are the fallback floor(slots / replicas). */
  storeDown = false;
  /** Redis calls made (one per pool per sync), for the overhead report. */
  calls = 0;
  private readonly others = new Map<UpstreamPool, Report[]>();
  /** What each pool last reported, and when: an unchanged report waits for the heartbeat. */
  private readonly lastSent = new Map<UpstreamPool, { report: string; at: number }>();
  private tickOnly = false;
  private timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /** Until then (after the store came back) shares stay within the outage's part. */
  private warmUntil = 0;
  /** When the store went down (the last sync failed since). */
  private downSince = Number.NEGATIVE_INFINITY;
  /** Live replicas when it went down: the outage's part is split among them. */
  private downReplicas = 1;

  constructor(
    private readonly store: Required<Pick<Store, "syncFleet">>,
    private readonly upstreams: Upstreams,
    private readonly settings: FleetSettings,
    private readonly logger: Logger,
  ) {
    this.replicas = settings.replicas;
  }

  /** Applies the fallback shares, syncs once, then every `sync` ms. */
  async start(): Promise<void> {
    for (const pool of this.upstreams.pools.values()) this.fallback(pool);
    await this.sync();
    this.timer = setInterval(() => void this.sync(true), this.settings.sync);
    this.timer.unref();
  }

  /** A request started waiting: trade slots soon rather than at the next tick. */
  nudge(): void {
    if (this.soon || this.stopped) return;
    this.soon = setTimeout(
      () => {
        this.soon = undefined;
        void this.sync();
      },
      Math.min(10, this.settings.sync),
    );
    this.soon.unref();
  }

  /** Stops syncing; a last sync with nothing in flight gives this replica's slots back at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.soon);
    await this.running;
    await Promise.all(
      [...this.upstreams.pools.values()].map((pool) => this.syncPool(pool, true).catch(() => undefined)),
    );
  }

  /**
   * One sync of every pool; a sync asked for while one runs follows it. A tick of the timer
   * skips a pool whose report has not changed while no other replica waits, down to one call per
   * lease / 3 (the heartbeat): an idle fleet costs Redis a call a second per replica, not ten.
   */
  sync(tick = false): Promise<void> {
    if (this.running) {
      this.again = true;
      this.tickOnly &&= tick;
      return this.running;
    }
    this.tickOnly = tick;
    this.running = (async () => {
      do {
        this.again = false;
        const pools = [...this.upstreams.pools.values()];
        const quiet = this.tickOnly && !this.storeDown;
        this.tickOnly = true;
        const results = await Promise.allSettled(pools.map((pool) => this.syncPool(pool, false, quiet)));
        const failed = results.find((r) => r.status === "rejected");
        this.setStoreDown(failed !== undefined, failed?.status === "rejected" ? failed.reason : undefined);
        if (failed) for (const pool of pools) this.fallback(pool);
        for (const pool of this.others.keys()) {
          if (this.upstreams.pools.has(pool.name)) continue;
          this.others.delete(pool);
          this.lastSent.delete(pool);
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /**
   * Shared backends of a pool: those with a configured maxConcurrency. A backend without one is
   * capped by this replica's connections (maxConnections) alone, not a capacity of the backend
   * that replicas could share: it costs no sync, and a pool with none costs no Redis call.
   */
  private shared(pool: UpstreamPool): Backend[] {
    return pool.backends.filter((b) => b.sharedSlots);
  }

  private async syncPool(pool: UpstreamPool, leaving: boolean, quiet = false): Promise<void> {
    const backends = this.shared(pool);
    if (backends.length === 0) return;
    const mine = this.report(pool, backends, leaving);
    const sent = JSON.stringify([mine.d, mine.f, mine.b]);
    const last = this.lastSent.get(pool);
    // Waiting anywhere (here, or at a replica that may need this one's slots) trades every tick.
    const waits = (r: FleetState) => r.d.some((n) => n > 0);
    const othersWait = waits(mine) || (this.others.get(pool) ?? []).some(waits);
    const now = performance.now();
    if (quiet && last?.report === sent && !othersWait && now - last.at < this.settings.lease / 3) return;
    this.lastSent.set(pool, { report: sent, at: now });
    const slots: Record<string, number> = {};
    for (const b of backends) slots[b.name] = b.maxConcurrency;
    this.calls++;
    const reply = await this.store.syncFleet(`fleet:${pool.name}`, this.id, mine, slots, this.settings.lease);
    if (leaving) return;
    const others = reply.others as Report[];
    this.others.set(pool, others);
    this.replicas = others.length + 1;
    // Just back from an outage, Redis may have lost what the others hold: keep to the outage's
    // part until every live replica has synced again (one lease). The part of the replicas seen
    // before the outage: a restarted Redis knows only those that synced since, and a replica
    // still cut off runs on its part meanwhile.
    const warming = performance.now() < this.warmUntil;
    const partOf = Math.max(this.replicas, this.downReplicas);
    for (const b of backends) {
      const granted = reply.granted[b.name] ?? 0;
      b.share = warming ? Math.min(granted, Math.max(1, Math.floor(b.maxConcurrency / partOf))) : granted;
      let elsewhere = 0;
      for (const o of others) elsewhere += o.b[b.name]?.[1] ?? 0;
      b.othersInFlight = elsewhere;
      b.fairShare = Math.max(1, Math.floor(b.maxConcurrency / this.replicas));
    }
    // A claim that grew may serve the queue now.
    pool.admission.poolChanged();
  }

  /** This replica's report, with the claim it wants per backend. */
  private report(pool: UpstreamPool, backends: Backend[], leaving: boolean): Report {
    const admission = pool.admission;
    const mine: Report = {
      r: this.id,
      d: [admission.waiting(0), admission.waiting(1), admission.waiting(2)],
      f: [...pool.bandInFlight],
      b: {},
    };
    const wants = leaving ? undefined : plan(mine, this.others.get(pool) ?? [], backends);
    for (const b of backends) mine.b[b.name] = [wants?.get(b.name) ?? b.inFlight, b.inFlight];
    return mine;
  }

  private fallback(pool: UpstreamPool): void {
    // Just cut off, the others may still run what their claims let them: keep within the last
    // claim for one lease, then take the part (their old requests have mostly ended by then).
    const fresh = performance.now() < this.downSince + this.settings.lease;
    for (const b of this.shared(pool)) {
      const part = Math.max(1, Math.floor(b.maxConcurrency / this.replicas));
      b.share = fresh && Number.isFinite(b.share) ? Math.min(part, b.share) : part;
      b.fairShare = part;
      b.othersInFlight = 0;
    }
  }

  private setStoreDown(down: boolean, reason: unknown): void {
    if (down === this.storeDown) return;
    this.storeDown = down;
    if (down) {
      this.downSince = performance.now();
      this.downReplicas = this.replicas;
      this.logger.warn(
        { replicas: this.replicas, err: reason instanceof Error ? reason.message : String(reason) },
        "shared backend slots: store unavailable, using maxConcurrency / replicas per backend",
      );
    } else {
      this.warmUntil = performance.now() + this.settings.lease;
      this.logger.info({ replicas: this.replicas }, "shared backend slots: store back, sharing again");
    }
    for (const pool of this.upstreams.pools.values()) pool.admission.poolChanged();
  }
}

/**
 * The claim this replica wants per backend, from everyone's reports (see the header). Every
 * replica computes the same split from the same reports, so the wants fit the slots.
 */
export function plan(
  mine: Report,
  others: readonly Report[],
  backends: readonly Pick<Backend, "name" | "maxConcurrency">[],
): Map<string, number> {
  const all = [mine, ...others].sort((a, b) => (a.r < b.r ? -1 : a.r > b.r ? 1 : 0));
  const n = all.length;
  const me = all.indexOf(mine);
  const inFlight = (j: number, name: string): number => all[j]?.b[name]?.[1] ?? 0;

  // 1-3: each replica's target over the pool, band by band, then the headroom.
  let left = 0;
  for (const b of backends) left += b.maxConcurrency;
  const target = new Array<number>(n).fill(0);
  for (let k = 0; k < BANDS && left > 0; k++) {
    const demand = all.map((r) => (r.f[k] ?? 0) + (r.d[k] ?? 0));
    left -= waterFill(demand, left, target);
  }
  for (let j = 0; j < n && left > 0; j++) {
    target[j] = (target[j] ?? 0) + Math.floor(left / n) + (j < left % n ? 1 : 0);
  }

  // 4: in-flight stays; free slots go to those below target, in proportion to the gap.
  const held = all.map((_, j) => backends.reduce((sum, b) => sum + inFlight(j, b.name), 0));
  const gap = all.map((_, j) => Math.max(0, (target[j] ?? 0) - (held[j] ?? 0)));
  const wants = new Map<string, number>();
  const mineHeld = held[me] ?? 0;
  const mineTarget = target[me] ?? 0;
  for (const b of backends) {
    let used = 0;
    for (let j = 0; j < n; j++) used += inFlight(j, b.name);
    const free = Math.max(0, b.maxConcurrency - used);
    const given = largestRemainder(free, gap);
    const own = inFlight(me, b.name);
    // Above target: keep what runs, take nothing new (a proportional cut, rounded down).
    const kept = mineHeld > mineTarget ? Math.floor((own * mineTarget) / mineHeld) : own;
    wants.set(b.name, kept + (given[me] ?? 0));
  }
  return wants;
}

/** Max-min fair split of `slots` whole slots by demand; adds to `into`, returns slots given. */
function waterFill(demand: readonly number[], slots: number, into: number[]): number {
  const total = demand.reduce((a, b) => a + b, 0);
  if (total <= slots) {
    demand.forEach((d, j) => {
      into[j] = (into[j] ?? 0) + d;
    });
    return total;
  }
  const got = demand.map(() => 0);
  let remaining = slots;
  while (remaining > 0) {
    const open = demand.map((_d, j) => j).filter((j) => (got[j] ?? 0) < (demand[j] ?? 0));
    const each = Math.floor(remaining / open.length);
    if (each === 0) {
      // Fewer slots than replicas still asking: one each, in order.
      for (const j of open.slice(0, remaining)) got[j] = (got[j] ?? 0) + 1;
      break;
    }
    for (const j of open) {
      const add = Math.min(each, (demand[j] ?? 0) - (got[j] ?? 0));
      got[j] = (got[j] ?? 0) + add;
      remaining -= add;
    }
  }
  got.forEach((g, j) => {
    into[j] = (into[j] ?? 0) + g;
  });
  return slots;
}

/** `count` whole slots split in proportion to `weights` (largest remainder, ties in order). */
function largestRemainder(count: number, weights: readonly number[]): number[] {
  const total = weights.reduce((a, b) => a + b, 0);
  if (count === 0 || total === 0) return weights.map(() => 0);
  const exact = weights.map((w) => (count * w) / total);
  const out = exact.map(Math.floor);
  let rest = count - out.reduce((a, b) => a + b, 0);
  const order = exact
    .map((e, j) => [e - Math.floor(e), j] as const)
    .sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (const [, j] of order) {
    if (rest-- <= 0) break;
    out[j] = (out[j] ?? 0) + 1;
  }
  return out;
}
