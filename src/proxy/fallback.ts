/**
 * Forwarding to a pool, then down its fallback chain while a pool cannot serve: no backend could
 * take the request, or every try failed before a byte reached the client in a way the pool's
 * `retry.on` names (the same conditions its forwarder retries). An answer the client may keep
 * (or a stream that started) ends the walk; so do the client leaving and the total timeout (a
 * fallback would double the client's wait).
 */

import { LOAD_REFUSALS } from "../admission/admission.js";
import { admitFor } from "../admission/admit.js";
import type { RetryWhen } from "../config/retry-on.js";
import type { RequestContext } from "../context.js";
import { GatewayError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import { setHeaders } from "../stages/route.js";
import type { UpstreamPool, Upstreams } from "../upstream/pool.js";
import { Exchange } from "./exchange.js";
import {
  type ForwardHooks,
  type ForwardInput,
  type ForwardResult,
  forward,
  retriesFailure,
} from "./forwarder.js";

export interface Forwarding {
  upstreams: Upstreams;
  metrics: Metrics;
  hooks: ForwardHooks;
  /** The gateway consumed the client's credentials: they must not reach the backend. */
  stripAuthorization: boolean;
  sendTimeout: number;
}

export interface FallbackTarget {
  pool: UpstreamPool;
  model: string;
}

/** What one try at a pool sends. */
export type Outbound = Pick<ForwardInput, "path" | "body" | "bodyLength" | "streamAny" | "tap" | "json">;

/** A pool's fallback chain with each target's model: the configured one, else its first. */
export function fallbackChain(upstreams: Upstreams, pool: UpstreamPool): FallbackTarget[] {
  const out: FallbackTarget[] = [];
  for (const entry of pool.config.fallback) {
    const name = typeof entry === "string" ? entry : entry.pool;
    const target = upstreams.pools.get(name);
    if (!target) continue; // rejected by config validation
    const model = (typeof entry === "string" ? undefined : entry.model) ?? target.config.models[0] ?? "";
    out.push({ pool: target, model });
  }
  return out;
}

export async function serve(
  deps: Forwarding,
  state: RequestContext,
  pool: UpstreamPool,
  chain: readonly FallbackTarget[],
  build: (target: FallbackTarget | undefined) => Outbound,
): Promise<ForwardResult> {
  for (let i = 0; ; i++) {
    const target = i === 0 ? undefined : chain[i - 1];
    const targetPool = target?.pool ?? pool;
    let result: ForwardResult;
    try {
      result = await forwardTo(deps, state, targetPool, build(target));
    } catch (err) {
      noteQueued(state);
      const when = targetPool.config.retry.when;
      if (i < chain.length && cannotServe(err, state, when) && mayOverflow(err, targetPool)) {
        leavePool(state);
        continue;
      }
      throw err;
    }
    noteQueued(state);
    const retried = targetPool.config.retry.when.statuses;
    if (i < chain.length && result.kind === "buffered" && retried.has(result.status)) {
      leavePool(state);
      continue;
    }
    if (target) {
      setHeaders(state, { "x-floodgate-fallback": targetPool.name });
      state.fallback = targetPool.name;
      deps.metrics.observeFallback(pool.name, targetPool.name);
    }
    return result;
  }
}

function forwardTo(
  deps: Forwarding,
  state: RequestContext,
  pool: UpstreamPool,
  out: Outbound,
): Promise<ForwardResult> {
  const incoming = state.incoming;
  if (!incoming) throw new Error("a request path without its request");
  const config = pool.config;
  const exchange = new Exchange(config.timeouts.total, admitFor(state, pool));
  state.exchange = exchange;
  return forward(
    {
      pool,
      config,
      method: incoming.method,
      path: out.path,
      headers: incoming.headers,
      body: out.body,
      bodyLength: out.bodyLength,
      requestId: incoming.id,
      clientIp: incoming.ip,
      stripAuthorization: deps.stripAuthorization,
      streamAny: out.streamAny,
      tap: out.tap,
      sendTimeout: deps.sendTimeout,
      onStreamEnd: (failure) => {
        state.error = failure;
      },
      onDispatch: state.dispatch,
      json: out.json,
      band: exchange.band,
    },
    exchange,
    deps.hooks,
  );
}

/** The next pool gets its own exchange: this one's upstream time stays with the request. */
function leavePool(state: RequestContext): void {
  state.upstreamMs += state.exchange?.upstreamMs ?? 0;
}

/** A request that waited for a slot says how long, to the client and the log. */
export function noteQueued(state: RequestContext): void {
  const ms = state.exchange?.queuedMs ?? 0;
  if (ms <= 0) return;
  state.queuedMs += ms;
  setHeaders(state, { "x-floodgate-queue-ms": String(Math.round(state.queuedMs)) });
}

/** A refusal for load walks down the chain only where the pool says so (`admission.overflow`). */
export function mayOverflow(err: unknown, pool: UpstreamPool): boolean {
  return (
    !(err instanceof GatewayError && LOAD_REFUSALS.has(err.code)) ||
    pool.config.admission.overflow === "fallback"
  );
}

/**
 * The pool could not serve, so the next pool (or a stale answer) may: see the top. `when` is
 * that pool's compiled `retry.on`.
 */
export function cannotServe(err: unknown, state: RequestContext, when: RetryWhen): boolean {
  if (!(err instanceof GatewayError) || state.exchange?.abortReason !== undefined) return false;
  // A limit of the client's own (its tenant's concurrency, taken at dispatch) is not the pool's.
  if (err.type === "rate_limit_exceeded" || err.code === "upstream_total_timeout") return false;
  // No attempt failed: the pool itself refused (no backend, a full queue), whatever retry.on says.
  return retriesFailure(when, err) ?? err.statusCode === 503;
}
