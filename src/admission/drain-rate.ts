/**
 * How fast a pool frees slots, measured per busy slot: completions per slot-second while a slot
 * is busy, which is 1 / the mean time a request holds its slot. The figure holds whether the
 * pool is half idle or saturated, and times the slot count it gives the pool's drain rate under
 * load (what a queue waits on).
 *
 * It is measured per completion, not per window of wall time: each slot given back brings its
 * hold time, averaged over the last `window` completions (an exponential moving average by
 * count, a running mean until then). A window of seconds mixes bursts (slots filled together
 * finish together) into its samples and lags a slowdown by its time constant; the count-based
 * mean follows a slowdown within a few dozen completions. Until `minCompletions` slots have been
 * given back the rate is the prior and `measured` is false: a refusal that says "you would wait
 * too long" must rest on a measurement.
 *
 * It also keeps the share of slots each band takes (a moving average over `tauMs`), for the
 * lower bands' estimates: a higher band that arrives later still goes first.
 */

export interface DrainRateOptions {
  /** Completions per slot-second assumed before any measurement. */
  prior: number;
  /** Completions the mean hold time is averaged over. */
  window: number;
  minCompletions: number;
  /** Band shares: one sample per `sampleMs`, averaged with time constant `tauMs`. */
  sampleMs: number;
  tauMs: number;
}

export const DRAIN_RATE_DEFAULTS: DrainRateOptions = {
  prior: 1,
  window: 32,
  minCompletions: 5,
  sampleMs: 1000,
  tauMs: 10_000,
};

export class DrainRate {
  private holdMs: number;
  private seen = 0;
  /** Slots handed to each band in the current sample, and each band's moving share of them. */
  private readonly taken = [0, 0, 0];
  private readonly shares = [0, 0, 0];
  private sharesSeeded = false;
  /** Per band, each tenant's slots in the current sample and its moving share of the band's. */
  private readonly tenants = [0, 1, 2].map(() => new Map<string, { n: number; share: number }>());
  private sampleFrom: number;

  constructor(
    now: number,
    private readonly options: DrainRateOptions = DRAIN_RATE_DEFAULTS,
  ) {
    this.holdMs = 1000 / options.prior;
    this.sampleFrom = now;
  }

  /** A measurement rather than the prior. */
  get measured(): boolean {
    return this.seen >= this.options.minCompletions;
  }

  /** Completions per busy slot-second. */
  get perSlotPerSecond(): number {
    return 1000 / this.holdMs;
  }

  /** A slot held for `holdMs` was given back. */
  completed(holdMs: number): void {
    this.seen++;
    const k = Math.min(this.seen, this.options.window);
    this.holdMs += (Math.max(1, holdMs) - this.holdMs) / k;
  }

  /**
   * The share of slots that bands above `band` take (moving average): a request of `band` is
   * served from what is left.
   */
  higherShare(band: number): number {
    let share = 0;
    for (let b = 0; b < band; b++) share += this.shares[b] ?? 0;
    return share;
  }

  /**
   * The share of its band's slots that tenants other than `tenant` take: under fair queuing a
   * light tenant's later arrivals still go before a flooding tenant's backlog.
   */
  othersShare(band: number, tenant: string): number {
    const tenants = this.tenants[band];
    if (!tenants) return 0;
    // Only a tenant taking at least an equal share is behind the others' later arrivals; a
    // lighter one is served first by fair queuing (its place in the queue already says so).
    const own = tenants.get(tenant)?.share ?? 0;
    if (own * Math.max(1, tenants.size) < 1) return 0;
    let share = 0;
    for (const [name, t] of tenants) if (name !== tenant) share += t.share;
    return Math.min(1, share);
  }

  /** A slot was handed to a request of `band` (and `tenant`). */
  handed(now: number, band: number, tenant = ""): void {
    this.taken[band] = (this.taken[band] ?? 0) + 1;
    const tenants = this.tenants[band];
    if (tenants) {
      const t = tenants.get(tenant);
      if (t) t.n++;
      else tenants.set(tenant, { n: 1, share: 0 });
    }
    const elapsed = now - this.sampleFrom;
    if (elapsed < this.options.sampleMs) return;
    const total = this.taken.reduce((a, b) => a + b, 0);
    // The first sample replaces the starting zeros rather than blending with them.
    const weight = this.sharesSeeded ? 1 - Math.exp(-elapsed / this.options.tauMs) : 1;
    this.sharesSeeded = true;
    this.taken.forEach((n, b) => {
      this.shares[b] = (this.shares[b] ?? 0) + weight * (n / total - (this.shares[b] ?? 0));
      const tenants = this.tenants[b];
      if (tenants && n > 0) {
        for (const [name, t] of tenants) {
          t.share += weight * (t.n / n - t.share);
          t.n = 0;
          if (t.share < 0.001) tenants.delete(name);
        }
      }
      this.taken[b] = 0;
    });
    this.sampleFrom = now;
  }
}
