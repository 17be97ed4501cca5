/**
 * Rate-limit headers: the IETF draft's RateLimit-Limit / -Remaining / -Reset (seconds), and
 * OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens}, whose reset is a duration
 * such as "20ms", "1.5s" or "6m0s" (what the OpenAI SDKs and dashboards parse).
 */

export interface LimitState {
  limit: number;
  remaining: number;
  /** ms until the limit is fully available again. */
  resetMs: number;
}

export function formatReset(ms: number): string {
  const value = Math.max(0, Math.ceil(ms));
  if (value < 1000) return `${value}ms`;
  if (value < 60_000) return `${Number((value / 1000).toFixed(3))}s`;
  // Rounded to whole seconds before splitting: 179.6 s is 3m0s, never 2m60s.
  const total = Math.round(value / 1000);
  return `${Math.floor(total / 60)}m${total % 60}s`;
}

/** `limitText`: String(state.limit), when the caller keeps it (one per limit, not per request). */
export function requestHeaders(state: LimitState, limitText = String(state.limit)): Record<string, string> {
  const remaining = String(Math.max(0, Math.floor(state.remaining)));
  return {
    "ratelimit-limit": limitText,
    "ratelimit-remaining": remaining,
    "ratelimit-reset": String(Math.ceil(state.resetMs / 1000)),
    "x-ratelimit-limit-requests": limitText,
    "x-ratelimit-remaining-requests": remaining,
    "x-ratelimit-reset-requests": formatReset(state.resetMs),
  };
}

export function tokenHeaders(state: LimitState): Record<string, string> {
  return {
    "x-ratelimit-limit-tokens": String(state.limit),
    "x-ratelimit-remaining-tokens": String(Math.max(0, Math.floor(state.remaining))),
    "x-ratelimit-reset-tokens": formatReset(state.resetMs),
  };
}
