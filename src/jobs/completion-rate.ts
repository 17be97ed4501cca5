/**
 * The Retry-After of a job that is not done yet: when to look again.
 *
 * A queued job waits for the jobs ahead of it: the queue's depth divided by the rate at which
 * the fleet's runners finish jobs. The rate is measured here, on this replica, over the last
 * minute (finishes / time, the time counted from this replica's start when that is shorter, and
 * at least a second so one quick finish does not make the rate huge), and multiplied by the
 * replicas that run jobs (all of them, when they share a Redis queue; this one alone on a memory
 * queue). A running job is done in about the mean run time less what it has run. Bounded to
 * [250 ms, 10 min]: a client neither spins nor goes away for an hour on a bad guess; with no
 * finish seen yet, 1 s.
 */

const WINDOW_MS = 60_000;
const MIN_SPAN_MS = 1000;
export const MIN_RETRY_MS = 250;
export const MAX_RETRY_MS = 600_000;
export const NO_HISTORY_RETRY_MS = 1000;
/** Weight of the newest run in the mean run time. */
const DURATION_WEIGHT = 0.2;

export class CompletionRate {
  /** When each finish in the window happened (monotonic ms), oldest first. */
  private readonly finishes: number[] = [];
  private head = 0;
  private meanDurationMs: number | undefined;
  private readonly startedAt: number;

  constructor(private readonly now: () => number = () => performance.now()) {
    this.startedAt = now();
  }

  /** A run ended (its answer stored) after durationMs. */
  completed(durationMs: number): void {
    this.finishes.push(this.now());
    this.meanDurationMs =
      this.meanDurationMs === undefined
        ? durationMs
        : this.meanDurationMs + DURATION_WEIGHT * (durationMs - this.meanDurationMs);
  }

  /** Jobs this replica finished per ms over the window; undefined before the first. */
  perMs(): number | undefined {
    const now = this.now();
    while (this.head < this.finishes.length && (this.finishes[this.head] as number) < now - WINDOW_MS) {
      this.head++;
    }
    // The array is compacted now and then, not on every expiry.
    if (this.head > 1024 && this.head * 2 > this.finishes.length) {
      this.finishes.splice(0, this.head);
      this.head = 0;
    }
    const count = this.finishes.length - this.head;
    if (count === 0) return undefined;
    const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - this.startedAt));
    return count / span;
  }

  /** For a queued job with `ahead` jobs due before or beside it, on a fleet of `replicas` runners. */
  queuedMs(ahead: number, replicas: number): number {
    const rate = this.perMs();
    if (rate === undefined) return NO_HISTORY_RETRY_MS;
    return bound(Math.max(1, ahead) / (rate * Math.max(1, replicas)));
  }

  /** For a job that has been running elapsedMs. */
  runningMs(elapsedMs: number): number {
    if (this.meanDurationMs === undefined) return NO_HISTORY_RETRY_MS;
    return bound(this.meanDurationMs - elapsedMs);
  }
}

function bound(ms: number): number {
  return Math.round(Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, ms)));
}
