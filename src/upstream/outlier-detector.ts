/**
 * Passive outlier detection (Envoy's): a backend whose answers go bad in a row is ejected for
 *     min(maxEjectionTime, baseEjectionTime × n)     n = the number of times it has been ejected,
 * never more than maxEjectionPercent of the pool at once (at least one may always be ejected).
 * Counted in a row: 5xx answers (consecutive5xx), resets and timeouts (consecutiveGatewayFailure),
 * refused or timed-out connects (consecutiveConnectFailure, 1 by default: a refused connection is
 * not a fluke, and the dead backend must get no new requests within a second). Any other answer,
 * 4xx included, ends a run. n decays to 0 once a backend has stayed in for maxEjectionTime.
 *
 * An ejection opens the backend's circuit breaker for that time (see breaker.ts): the breaker is
 * the one state of passive health, with two ways in (its own error rate, or these consecutive
 * runs) and one way out (a single half-open probe that succeeds; a failed probe after an
 * ejection re-opens it for the next, longer ejection time). Active health checks are the other
 * input: a backend is served only while it is healthy and its breaker lets it through, and it
 * comes back through slow start.
 */
import type { OutlierDetectionConfig } from "../config/index.js";
import type { BalancerBackend } from "./backend.js";

export type AttemptOutcome = "success" | "http_5xx" | "gateway_failure" | "connect_failure";
export type EjectionReason =
  | "consecutive_5xx"
  | "consecutive_gateway_failure"
  | "consecutive_connect_failure";

export interface OutlierBackend extends BalancerBackend {
  consecutive5xx: number;
  consecutiveGatewayFailures: number;
  consecutiveConnectFailures: number;
  ejections: number;
  /** When the last ejection ends (bookkeeping for decay); 0 if never ejected. */
  ejectedUntil: number;
  /** healthMayEnd: a passed active health check ends it (connect and gateway failures). */
  eject(durationMs: number, next: () => number, healthMayEnd?: boolean): void;
}

export class OutlierDetector {
  constructor(
    private readonly config: OutlierDetectionConfig,
    private readonly backends: () => readonly OutlierBackend[],
    private readonly onEject: (
      b: OutlierBackend,
      reason: EjectionReason,
      durationMs: number,
    ) => void = () => {},
    private readonly nowOf: () => number = () => performance.now(),
  ) {}

  record(b: OutlierBackend, outcome: AttemptOutcome, now: number): void {
    switch (outcome) {
      case "success":
        b.consecutive5xx = 0;
        b.consecutiveGatewayFailures = 0;
        b.consecutiveConnectFailures = 0;
        return;
      case "http_5xx":
        b.consecutiveGatewayFailures = 0;
        b.consecutiveConnectFailures = 0;
        if (++b.consecutive5xx >= this.config.consecutive5xx) this.eject(b, "consecutive_5xx", now);
        return;
      case "gateway_failure":
        b.consecutiveConnectFailures = 0;
        if (++b.consecutiveGatewayFailures >= this.config.consecutiveGatewayFailure) {
          this.eject(b, "consecutive_gateway_failure", now);
        }
        return;
      case "connect_failure":
        // A connect failure is also a gateway failure: a backend that alternates refused connects
        // and resets is still ejected by the gateway-failure run.
        ++b.consecutiveGatewayFailures;
        if (++b.consecutiveConnectFailures >= this.config.consecutiveConnectFailure) {
          this.eject(b, "consecutive_connect_failure", now);
        } else if (b.consecutiveGatewayFailures >= this.config.consecutiveGatewayFailure) {
          this.eject(b, "consecutive_gateway_failure", now);
        }
        return;
    }
  }

  /** How many more backends may be ejected now (any backend its breaker keeps out counts). */
  ejectionRoom(now: number): number {
    let live = 0;
    let ejected = 0;
    for (const b of this.backends()) {
      if (b.drained) continue;
      live++;
      if (!b.admits(now)) ejected++;
    }
    const cap = Math.max(1, Math.floor((this.config.maxEjectionPercent * live) / 100));
    return cap - ejected;
  }

  private eject(b: OutlierBackend, reason: EjectionReason, now: number): void {
    if (!this.config.enabled || !b.admits(now)) return;
    b.consecutive5xx = 0;
    b.consecutiveGatewayFailures = 0;
    b.consecutiveConnectFailures = 0;
    if (this.ejectionRoom(now) <= 0) return;
    if (b.ejections > 0 && now - b.ejectedUntil > this.config.maxEjectionTime) b.ejections = 0;
    const duration = this.nextDuration(b, now);
    const healthMayEnd = this.config.unejectOnHealthCheck && reason !== "consecutive_5xx";
    b.eject(duration, () => this.nextDuration(b, this.nowOf()), healthMayEnd);
    this.onEject(b, reason, duration);
  }

  /** Counts one more ejection and returns its length: base × n, capped. */
  private nextDuration(b: OutlierBackend, now: number): number {
    b.ejections++;
    const duration = Math.min(this.config.maxEjectionTime, this.config.baseEjectionTime * b.ejections);
    b.ejectedUntil = now + duration;
    return duration;
  }
}
