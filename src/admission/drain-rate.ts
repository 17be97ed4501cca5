/**
 * How fast a pool frees slots, measured per busy slot: completions per slot-second while slots
 * are busy, so the figure holds whether the pool is half idle or saturated, and times the slot
 * count it gives the pool's drain rate under load (what a queue waits on).
 *
 * The busy time is the integral of slots in use over time, advanced at every take and release.
 * Every `sampleMs`, a sample completions ÷ busy slot-seconds joins an exponentially weighted
 * moving average with time constant `tauMs` (a sample's weight is 1 - e^(-elapsed/tau), so the
 * average forgets at the same pace whatever the traffic). Until `minCompletions` slots have
 * been freed the rate is the prior and `measured` is false: a refusal that says "you would
 * wait too long" must rest on a measurement.
 */

export interface DrainRateOptions {
  /** Completions per slot-second assumed before any measurement. */
  prior: number;
  sampleMs: number;
  tauMs: number;
  minCompletions: number;
}

export const DRAIN_RATE_DEFAULTS: DrainRateOptions = {
  prior: 1,
  sampleMs: 1000,
  tauMs: 10_000,
  minCompletions: 5,
};

export class DrainRate {
  private perSlot: number;
  private busySlotMs = 0;
  private completions = 0;
  private lastAt: number;
  private sampleFrom: number;
  private seen = 0;
  /** Slots handed to each band in the current sample, and each band's moving share of them. */
  private readonly taken: number[];
  private readonly shares: number[];
  private sharesSeeded = false;

  constructor(
    now: number,
    private readonly options: DrainRateOptions = DRAIN_RATE_DEFAULTS,
  ) {
    this.perSlot = options.prior;
    this.lastAt = now;
    this.sampleFrom = now;
    this.taken = [0, 0, 0];
    this.shares = [0, 0, 0];
  }

  /**
   * The share of freed slots that bands above `band` take (moving average): a request of `band`
   * is served from what is left, since a higher band that arrives later still goes first.
   */
  higherShare(band: number): number {
    let share = 0;
    for (let b = 0; b < band; b++) share += this.shares[b] ?? 0;
    return share;
  }

  /** A measurement rather than the prior. */
  get measured(): boolean {
    return this.seen >= this.options.minCompletions;
  }

  /** Completions per busy slot-second. */
  get perSlotPerSecond(): number {
    return this.perSlot;
  }

  /**
   * Slots are about to change from `inUse`; `completed` when one is being given back, `band`
   * when one is being handed to a request of that band.
   */
  note(now: number, inUse: number, completed: boolean, band = -1): void {
    if (band >= 0) this.taken[band] = (this.taken[band] ?? 0) + 1;
    const dt = now - this.lastAt;
    if (dt > 0) {
      this.busySlotMs += inUse * dt;
      this.lastAt = now;
    }
    if (completed) {
      this.completions++;
      this.seen++;
    }
    const elapsed = now - this.sampleFrom;
    if (elapsed < this.options.sampleMs || this.busySlotMs < this.options.sampleMs) return;
    const sample = this.completions / (this.busySlotMs / 1000);
    if (this.seen === this.completions) {
      // The first sample with a completion replaces the prior rather than blending with a guess.
      if (this.completions > 0) this.perSlot = sample;
    } else {
      const weight = 1 - Math.exp(-elapsed / this.options.tauMs);
      this.perSlot += weight * (sample - this.perSlot);
    }
    const taken = this.taken.reduce((a, b) => a + b, 0);
    if (taken > 0) {
      // The first sample replaces the starting zeros rather than blending with them.
      const weight = this.sharesSeeded ? 1 - Math.exp(-elapsed / this.options.tauMs) : 1;
      this.sharesSeeded = true;
      this.taken.forEach((n, b) => {
        this.shares[b] = (this.shares[b] ?? 0) + weight * (n / taken - (this.shares[b] ?? 0));
        this.taken[b] = 0;
      });
    }
    this.completions = 0;
    this.busySlotMs = 0;
    this.sampleFrom = now;
  }
}
