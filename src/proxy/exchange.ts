/**
 * One client request's life upstream, across retries: the abort that stops the backend's work
 * when the client leaves or the total timeout passes, the backend slot of the current attempt,
 * and what runs once when it is all over.
 *
 * Aborting ends the current upstream call directly (no AbortController or signal listeners:
 * an event that rarely fires should cost nothing on every request).
 */
import { type AdmissionRequest, Ticket } from "../admission/admission.js";
import type { Backend } from "../upstream/backend.js";
import type { UpstreamPool } from "../upstream/pool.js";
import type { RetryBudget } from "../upstream/retry-budget.js";
import type { UpstreamCall } from "./upstream-call.js";

export type AbortReason = "client" | "total";

/** The admission request of every attempt, but for the retry flag and the backends to avoid. */
export type Admit = Omit<AdmissionRequest<Backend>, "retry" | "exclude">;

export class Exchange {
  private timer: NodeJS.Timeout | undefined;
  /** The backend slot of the current attempt. */
  private slot:
    | { pool: UpstreamPool; backend: Backend; takenAt: number; band: number; heldAt: number }
    | undefined;
  /** The pool's retry budget, counting this request as active until it settles. */
  private budget: RetryBudget | undefined;
  /** Retries this request holds in the budget. */
  private retriesHeld = 0;
  private readonly deadline: number;
  /** The upstream call in progress, ended by abort(). */
  private call: UpstreamCall | undefined;
  /** The admission ticket while the request waits for a slot. */
  private ticket: Ticket<Backend> | undefined;
  /** Time spent waiting in admission queues. */
  queuedMs = 0;
  /** Time backend slots were held: the upstream's part of the request (the rest is floodgate's). */
  upstreamMs = 0;
  /** Ends a pause() early. */
  private wake: (() => void) | undefined;
  abortReason: AbortReason | undefined;
  /** The backend of the last attempt, kept for the access log. */
  backendName: string | undefined;
  /** performance.now() when the answering backend's headers arrived. */
  firstByteAt: number | undefined;
  bytesOut = 0;
  attempts = 0;

  /**
   * Who waits, in which band, until when, if no slot is free (src/admission): one object for
   * every attempt, its retry flag and the backends to avoid set per attempt.
   */
  private readonly request: AdmissionRequest<Backend>;

  constructor(totalTimeoutMs: number, admit: Admit) {
    this.deadline = performance.now() + totalTimeoutMs;
    this.timer = setTimeout(() => this.abort("total"), totalTimeoutMs);
    this.request = {
      band: admit.band,
      tenant: admit.tenant,
      weight: admit.weight,
      deadline: admit.deadline,
      patient: admit.patient,
      affinity: admit.affinity,
      retry: false,
      exclude: undefined,
    };
  }

  get band(): number {
    return this.request.band;
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
    this.ticket?.cancel(abortError(reason));
    this.wake?.();
  }

  /**
   * A slot in the pool for the next attempt: at once when one is free, else after waiting in the
   * pool's admission queue (a promise, only then). Throws (or rejects with) the refusal. A retry
   * keeps the request's deadline and waits at the front of its band.
   */
  acquire(pool: UpstreamPool, exclude?: ReadonlySet<Backend>): Backend | Promise<Backend> {
    this.release();
    const request = this.request;
    request.retry = this.attempts > 0;
    request.exclude = exclude;
    const got = pool.acquire(request);
    if (!(got instanceof Ticket)) {
      this.hold(pool, got);
      return got;
    }
    const since = performance.now();
    this.ticket = got;
    got.onGrant = (backend) => {
      this.ticket = undefined;
      this.queuedMs += performance.now() - since;
      this.hold(pool, backend);
    };
    if (this.abortReason !== undefined) got.cancel(abortError(this.abortReason));
    return got.promise.catch((err: unknown) => {
      this.ticket = undefined;
      this.queuedMs += performance.now() - since;
      throw err;
    });
  }

  private hold(pool: UpstreamPool, backend: Backend): void {
    this.slot = {
      pool,
      backend,
      takenAt: pool.admission.lastTake,
      band: this.band,
      heldAt: performance.now(),
    };
    pool.bandInFlight[this.band] = (pool.bandInFlight[this.band] ?? 0) + 1;
    this.backendName = backend.name;
    this.attempts++;
  }

  /** The current attempt is over: its backend slot goes back to the pool. */
  release(): void {
    const slot = this.slot;
    if (!slot) return;
    this.slot = undefined;
    this.upstreamMs += performance.now() - slot.heldAt;
    slot.pool.bandInFlight[slot.band] = (slot.pool.bandInFlight[slot.band] ?? 1) - 1;
    slot.pool.release(slot.backend, slot.takenAt);
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
