/**
 * One client request's life upstream, across retries: the abort that stops the backend's work
 * when the client leaves or the total timeout passes, the backend slot of the current attempt,
 * and what runs once when it is all over.
 *
 * Aborting ends the current upstream call directly (no AbortController or signal listeners:
 * an event that rarely fires should cost nothing on every request).
 */
import type { Backend } from "../upstream/backend.js";
import type { UpstreamPool } from "../upstream/pool.js";
import type { RetryBudget } from "../upstream/retry-budget.js";
import type { UpstreamCall } from "./upstream-call.js";

export type AbortReason = "client" | "total";

export class Exchange {
  private timer: NodeJS.Timeout | undefined;
  /** The backend slot of the current attempt. */
  private slot: { pool: UpstreamPool; backend: Backend } | undefined;
  /** The pool's retry budget, counting this request as active until it settles. */
  private budget: RetryBudget | undefined;
  /** Retries this request holds in the budget. */
  private retriesHeld = 0;
  private readonly deadline: number;
  /** The upstream call in progress, ended by abort(). */
  private call: UpstreamCall | undefined;
  /** Ends a pause() early. */
  private wake: (() => void) | undefined;
  abortReason: AbortReason | undefined;
  /** The backend of the last attempt, kept for the access log. */
  backendName: string | undefined;
  /** performance.now() when the answering backend's headers arrived. */
  firstByteAt: number | undefined;
  bytesOut = 0;
  attempts = 0;

  constructor(totalTimeoutMs: number) {
    this.deadline = performance.now() + totalTimeoutMs;
    this.timer = setTimeout(() => this.abort("total"), totalTimeoutMs);
  }

  /** The call of the current attempt; if the exchange was aborted already, it ends at once. */
  track(call: UpstreamCall): void {
    this.call = call;
    if (this.abortReason !== undefined) call.abort(abortError(this.abortReason));
  }

  /** Resolves after ms, or at once when the exchange is aborted meanwhile. */
  pause(ms: number): Promise<void> {
    if (this.abortReason !== undefined) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake?.(), ms);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }

  get settled(): boolean {
    return this.timer === undefined;
  }

  remainingMs(): number {
    return this.deadline - performance.now();
  }

  abort(reason: AbortReason): void {
    if (this.abortReason !== undefined || this.settled) return;
    this.abortReason = reason;
    this.call?.abort(abortError(reason));
    this.wake?.();
  }

  /** Takes a slot in the pool for the next attempt; undefined when no backend has one free. */
  acquire(pool: UpstreamPool, exclude?: ReadonlySet<Backend>): Backend | undefined {
    this.release();
    const backend = pool.acquire(exclude);
    if (!backend) return undefined;
    this.slot = { pool, backend };
    this.backendName = backend.name;
    this.attempts++;
    return backend;
  }

  /** The current attempt is over: its backend slot goes back to the pool. */
  release(): void {
    const slot = this.slot;
    if (!slot) return;
    this.slot = undefined;
    slot.pool.release(slot.backend);
  }

  /** Counts the request in the pool's retry budget until it settles. */
  joinBudget(budget: RetryBudget): void {
    this.budget = budget;
    budget.active++;
  }

  /** Takes a retry from the budget (given back at settle); false when it has none left. */
  takeRetry(): boolean {
    if (!this.budget?.tryStartRetry()) return false;
    this.retriesHeld++;
    return true;
  }

  /** Idempotent: the response finished, failed, or the client left. */
  settle(): void {
    if (this.settled) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.release();
    const budget = this.budget;
    if (budget) {
      budget.active--;
      for (; this.retriesHeld > 0; this.retriesHeld--) budget.endRetry();
    }
  }
}

function abortError(reason: AbortReason): Error {
  return new Error(reason === "client" ? "the client went away" : "the total timeout passed");
}
