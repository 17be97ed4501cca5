/** A hand-driven clock for the batch scheduler: time moves only when a test advances it. */
import type { ScheduleFn } from "../../../src/sim/batch-scheduler.js";

interface Entry {
  at: number;
  order: number;
  fn: () => void;
  cancelled: boolean;
}

export class ManualClock {
  now = 0;
  private entries: Entry[] = [];
  private order = 0;

  readonly schedule: ScheduleFn = (fn, ms) => {
    const entry: Entry = { at: this.now + ms, order: this.order++, fn, cancelled: false };
    this.entries.push(entry);
    return () => {
      entry.cancelled = true;
    };
  };

  get pending(): number {
    return this.entries.filter((e) => !e.cancelled).length;
  }

  /** Runs every timer due up to now + ms, in time order, then sets now to that time. */
  advance(ms: number): void {
    const target = this.now + ms;
    for (;;) {
      const next = this.nextDue(target);
      if (next === undefined) break;
      this.entries.splice(this.entries.indexOf(next), 1);
      this.now = next.at;
      next.fn();
    }
    this.now = target;
  }

  /** Runs timers until none is left (bounded, so a bug cannot hang the test). */
  runAll(maxSteps = 100_000): void {
    for (let i = 0; i < maxSteps; i++) {
      const next = this.nextDue(Number.POSITIVE_INFINITY);
      if (next === undefined) return;
      this.advance(next.at - this.now);
    }
    throw new Error("ManualClock.runAll: timers never ran out");
  }

  private nextDue(limit: number): Entry | undefined {
    let best: Entry | undefined;
    for (const e of this.entries) {
      if (e.cancelled || e.at > limit) continue;
      if (best === undefined || e.at < best.at || (e.at === best.at && e.order < best.order)) best = e;
    }
    return best;
  }
}
