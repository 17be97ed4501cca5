/**
 * One circuit breaker per backend (opossum), the single state of passive health:
 *
 *   closed ──(error rate > errorThresholdPercentage over the rolling window,
 *             at least volumeThreshold calls)──────────────▶ open for resetTimeout
 *   closed ──(outlier detection: consecutive failures)──────▶ open for its ejection time
 *   open ──(time passes)──▶ half-open: exactly one probe request is let through
 *   half-open ──(probe answers)──▶ closed (the backend ramps back in through slow start)
 *   half-open ──(probe fails)────▶ open again (an ejection for its next, longer time)
 *
 * The breaker's call covers connect and first byte only: a long generation is not a failure,
 * and floodgate's own timeouts bound each phase (opossum's timeout is off). Failures: connect
 * errors, timeouts, 5xx and 429 from the backend. Client 4xx never reach here as failures, and
 * a client abort does not count, except during the half-open probe: opossum would take an
 * uncounted error as success and close, but a probe the client abandoned proves nothing.
 * Every call gets its own abort signal from the request (opossum's shared AbortController
 * would abort every call at once), so opossum's is not used.
 */
import CircuitBreaker from "opossum";

export type BreakerState = "closed" | "half_open" | "open";

export interface BreakerSettings {
  enabled: boolean;
  errorThresholdPercentage: number;
  volumeThreshold: number;
  resetTimeout: number;
  rollingWindow: number;
}

/**
 * Thrown inside the breaker's call for an answer that counts as a failure (5xx, 429); the
 * caller still has the answer (its upstream call) and passes it on.
 */
export class FailedAnswer extends Error {
  constructor() {
    super("backend answered with a failure status");
  }
}

/** Thrown by call() when the breaker did not let the call through. */
export class BreakerOpenError extends Error {
  readonly code = "EOPENBREAKER";
}

/** Wraps an error from a call the client abandoned: not the backend's failure. */
export class ClientGone extends Error {
  constructor(readonly original: unknown) {
    super("the client went away");
  }
}

export class BackendBreaker {
  private readonly cb: CircuitBreaker<[() => Promise<unknown>], unknown>;
  /** Date.now() when the breaker next lets a probe through; 0 when closed. */
  private reopenAt = 0;
  /** After an ejection: the duration to re-open for if the probe fails. */
  private ejectionRetryMs: (() => number) | undefined;
  /** Open by an ejection that a passed active health check may end (connect or gateway failures). */
  private healthMayEnd = false;

  constructor(
    private settings: BreakerSettings,
    private readonly onState: (state: BreakerState) => void = () => {},
  ) {
    this.cb = new CircuitBreaker((action: () => Promise<unknown>) => action(), {
      timeout: false,
      errorThresholdPercentage: settings.errorThresholdPercentage,
      volumeThreshold: settings.volumeThreshold,
      resetTimeout: settings.resetTimeout,
      rollingCountTimeout: settings.rollingWindow,
      rollingCountBuckets: 10,
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
      errorFilter: (err) => err instanceof ClientGone && !this.cb.halfOpen,
    });
    this.cb.on("failure", () => {
      // Runs before opossum re-opens on a failed probe: after an ejection, the next open lasts
      // the next (longer) ejection time rather than resetTimeout.
      if (this.cb.halfOpen && this.ejectionRetryMs) this.cb.options.resetTimeout = this.ejectionRetryMs();
    });
    this.cb.on("open", () => {
      // opossum has just read options.resetTimeout to schedule half-open.
      this.reopenAt = Date.now() + this.cb.options.resetTimeout;
      this.cb.options.resetTimeout = this.settings.resetTimeout;
      this.onState("open");
    });
    this.cb.on("halfOpen", () => this.onState("half_open"));
    this.cb.on("close", () => {
      this.reopenAt = 0;
      this.ejectionRetryMs = undefined;
      this.healthMayEnd = false;
      this.onState("closed");
    });
  }

  /** The settings a kept breaker cannot change (see reconfigure). */
  fixedAs(settings: BreakerSettings): boolean {
    return (
      this.settings.rollingWindow === settings.rollingWindow &&
      this.settings.volumeThreshold === settings.volumeThreshold
    );
  }

  get state(): BreakerState {
    if (this.cb.closed) return "closed";
    return this.cb.halfOpen ? "half_open" : "open";
  }

  /** True when a call would be let through now: closed, or half-open with no probe out. */
  get admits(): boolean {
    if (!this.settings.enabled) return true;
    return this.cb.closed || (this.cb.halfOpen && this.cb.pendingClose);
  }

  /** ms until the breaker lets a probe through (0 if it does now). */
  msUntilProbe(): number {
    if (this.admits) return 0;
    return Math.max(0, this.reopenAt - Date.now());
  }

  /** Runs one call through the breaker: its rejection or resolution counts toward health. */
  call<R>(action: () => Promise<R>): Promise<R> {
    if (!this.settings.enabled) return action();
    if (!this.admits) return Promise.reject(new BreakerOpenError("the backend's breaker is open"));
    return this.cb.fire(action) as Promise<R>;
  }

  /**
   * Outlier detection's ejection: open for durationMs whatever the error rate says; if the
   * half-open probe then fails, open again for next(). An open breaker is left as it is.
   */
  eject(durationMs: number, next: () => number, healthMayEnd = false): void {
    if (!this.settings.enabled || this.cb.opened) return;
    this.ejectionRetryMs = next;
    this.cb.options.resetTimeout = durationMs;
    this.cb.open();
    this.healthMayEnd = healthMayEnd;
  }

  /**
   * An active health check passed. An ejection for refused connects or resets/timeouts ends
   * here (Envoy's successful_active_health_check_uneject_host): the backend answers again, and
   * comes back through slow start. A breaker opened for its error rate or for 5xx answers waits
   * for its single half-open probe instead: a backend that answers /health but fails inference
   * must not flap in and out. True when it closed the breaker.
   */
  healthCheckPassed(): boolean {
    if (!this.healthMayEnd || this.cb.closed) return false;
    this.cb.close();
    return true;
  }

  /**
   * A reload's new settings, kept state and all (an open breaker or an ejection stays as it is).
   * opossum fixes the rolling window and the volume threshold at construction: a change of
   * either replaces the backend (see Backend.keeps).
   */
  reconfigure(settings: BreakerSettings): void {
    this.settings = settings;
    this.cb.options.errorThresholdPercentage = settings.errorThresholdPercentage;
    if (!this.cb.opened) this.cb.options.resetTimeout = settings.resetTimeout;
  }

  shutdown(): void {
    this.cb.shutdown();
  }
}
