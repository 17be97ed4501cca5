/**
 * A pool's retry conditions (`retry.on`), in Envoy's vocabulary, and their compiled form: the
 * set of statuses and the kinds of failed attempt that another backend (or the next pool, or a
 * stale cache entry) may answer instead. Compiled once when the config is decoded, so the
 * request path asks a Set and three booleans.
 */

export const RetryConditions = [
  "connect-failure",
  "reset",
  "5xx",
  "gateway-error",
  "retriable-4xx",
  "retriable-status-codes",
] as const;
export type RetryCondition = (typeof RetryConditions)[number];

export interface RetryWhen {
  /** Statuses a backend answers with that are retried (and walked past to a fallback pool). */
  readonly statuses: ReadonlySet<number>;
  /** The connect failed: refused, unreachable, timed out, or the name did not resolve. */
  readonly connectFailure: boolean;
  /** No answer came: the connection was reset or closed, or a first-byte or idle timeout. */
  readonly reset: boolean;
  /** The gateway's own 502 for an answer it will not pass on (not JSON, too large, no event). */
  readonly badResponse: boolean;
}

const GATEWAY_ERRORS = [502, 503, 504];
/** Envoy's retriable-4xx: a conflict another backend may not have. */
const RETRIABLE_4XX = [409];

export function compileRetryOn(on: readonly RetryCondition[], statusCodes: readonly number[]): RetryWhen {
  const has = new Set(on);
  const statuses = new Set<number>();
  if (has.has("5xx")) for (let s = 500; s <= 599; s++) statuses.add(s);
  if (has.has("gateway-error")) for (const s of GATEWAY_ERRORS) statuses.add(s);
  if (has.has("retriable-4xx")) for (const s of RETRIABLE_4XX) statuses.add(s);
  if (has.has("retriable-status-codes")) for (const s of statusCodes) statuses.add(s);
  // As in Envoy: 5xx and gateway-error also cover attempts that got no answer at all, and a
  // reset covers a connect that failed (the backend did not answer either).
  const answerless = has.has("5xx") || has.has("gateway-error");
  const reset = answerless || has.has("reset");
  return {
    statuses,
    connectFailure: reset || has.has("connect-failure"),
    reset,
    badResponse: answerless,
  };
}
