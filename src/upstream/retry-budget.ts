/**
 * Retry budget (Envoy's): at any moment, retries in flight may be at most
 *     max(minRetryConcurrency, budgetPercent / 100 × requests in flight)
 * in a pool, so a failing fleet sees at most ~budgetPercent more attempts than client requests,
 * never a retry storm. Between attempts, full-jitter exponential backoff (Brooker, "Exponential
 * Backoff And Jitter"): sleep a uniform random time in [0, min(max, base × 2^retry)).
 */

export class RetryBudget {
  /** Client requests in flight in the pool. */
  active = 0;
  /** Retries in flight (from the decision to retry until that attempt settles). */
  retries = 0;

  constructor(
    private budgetPercent: number,
    private minRetryConcurrency: number,
  ) {}

  /** A reload's settings; the counts in flight carry over. */
  reconfigure(budgetPercent: number, minRetryConcurrency: number): void {
    this.budgetPercent = budgetPercent;
    this.minRetryConcurrency = minRetryConcurrency;
  }

  get limit(): number {
    return Math.max(this.minRetryConcurrency, (this.budgetPercent / 100) * this.active);
  }

  /** Takes a retry slot if the budget has room; the caller must call endRetry() after. */
  tryStartRetry(): boolean {
    if (this.retries >= this.limit) return false;
    this.retries++;
    return true;
  }

  endRetry(): void {
    this.retries--;
  }
}

export function backoffMs(
  retry: number,
  baseMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  return random() * Math.min(maxMs, baseMs * 2 ** retry);
}
