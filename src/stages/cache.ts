/**
 * The response cache: a fresh entry answers here (past auth and the request limits, before any
 * token is reserved: a hit costs no GPU time, so it costs no tokens); an entry past its TTL may
 * answer while it is refreshed in the background (staleWhileRevalidate), or wait for the
 * forward stage to need it (staleIfError). A miss joins the key's flight: a follower answers
 * with its leader's answer, and the leader goes on upstream, recording, and stores what it got
 * on the way back (a complete 200 only; anything else lands the flight empty, and the next
 * follower leads).
 */

import { BAND_NAMES } from "../admission/queue.js";
import type { CachedAnswer } from "../cache/entry.js";
import { cacheKey, isCacheable } from "../cache/key.js";
import { answerFromJson, answerFromStream, cacheDirectives } from "../cache/respond.js";
import {
  type CacheStatus,
  entryKey,
  type Hit,
  type Lookup,
  type ResponseCache,
} from "../cache/response-cache.js";
import type { PathAnswer, RequestContext } from "../context.js";
import type { Metrics } from "../metrics/metrics.js";
import { Exchange } from "../proxy/exchange.js";
import { type ForwardHooks, forward } from "../proxy/forwarder.js";
import type { OpenAIRoute } from "../proxy/routes.js";
import type { UpstreamPool } from "../upstream/pool.js";
import { setHeaders } from "./route.js";
import type { Stage } from "./stage.js";
import { tapStream } from "./stream-usage.js";

export interface CacheStageDeps {
  cache: ResponseCache;
  metrics: Metrics;
  hooks: ForwardHooks;
  stripAuthorization: boolean;
  sendTimeout: number;
}

const BACKGROUND = BAND_NAMES.indexOf("background");

export function cacheStage(deps: CacheStageDeps): Stage<RequestContext, PathAnswer> {
  /** Keys being refreshed in the background: one refresh per key at a time. */
  const refreshing = new Set<string>();
  return {
    name: "cache",
    enter(state) {
      const pool = state.target;
      const body = state.body;
      const route = state.route as OpenAIRoute | undefined;
      if (!pool?.config.cache.enabled || !body || !route) return undefined;
      const config = pool.config.cache;
      const directives = cacheDirectives(state.incoming?.headers["cache-control"]);
      if (directives.noStore || !isCacheable(body, config.rule, route).ok) {
        markCache(state, deps.metrics, "BYPASS");
        return undefined;
      }
      const scope = config.scope === "shared" ? "shared" : (state.tenant?.id ?? "anonymous");
      const model = state.model ?? "";
      // The model is the body's own, so it is a function of the bytes too (key-memo.ts).
      const key = deps.cache.keyOf(scope, pool.name, route, state.incoming?.rawBody, () =>
        entryKey(scope, model, cacheKey({ scope, pool: pool.name, model, route, body })),
      );
      if (directives.noCache) return miss(state, pool, key);
      const found = deps.cache.lookup(key, !state.stream);
      // A hit in this replica's memory answers in the same turn; the store's answer comes later.
      if (found instanceof Promise) return found.then((f) => afterLookup(state, pool, route, key, f));
      return afterLookup(state, pool, route, key, found);
    },
    // A buffered answer is complete as it passes: the requests waiting on it get it now. A
    // stream is complete only at its end, on the way back. (finish lands once.)
    answered(state) {
      if (state.flight && state.answer?.kind !== "stream") void state.flight.finish(storable(state));
    },
    leave(state) {
      const flight = state.flight;
      if (flight) void flight.finish(storable(state));
    },
  };

  function afterLookup(
    state: RequestContext,
    pool: UpstreamPool,
    route: OpenAIRoute,
    key: string,
    found: Lookup,
  ): PathAnswer | Promise<PathAnswer | undefined> {
    if (found.fresh) return cached(state, deps.metrics, found.fresh, "HIT");
    const config = pool.config.cache;
    if (found.stale) {
      const age = Date.now() - found.stale.freshUntil;
      if (age < config.staleWhileRevalidate) {
        refresh(state, pool, route, key);
        return cached(state, deps.metrics, found.stale, "STALE");
      }
      if (age < config.staleIfError) state.staleForError = found.stale;
    }
    return miss(state, pool, key);
  }

  /** No usable entry: join the key's flight, as its leader or as a follower of the leader's answer. */
  async function miss(
    state: RequestContext,
    pool: UpstreamPool,
    key: string,
  ): Promise<PathAnswer | undefined> {
    const config = pool.config.cache;
    const flight = await deps.cache.join(key, config, pool.config.timeouts.firstByte);
    if (flight.role === "follower" && flight.answer) {
      return cached(
        state,
        deps.metrics,
        { freshUntil: flight.answer.freshUntil, answer: flight.answer },
        "HIT",
      );
    }
    if (flight.role === "leader") {
      state.flight = flight;
      tapStream(state, config.maxEntrySize);
    }
    markCache(state, deps.metrics, "MISS");
    return undefined;
  }

  /** stale-while-revalidate: one refresh per key at a time, with no client waiting on it. */
  function refresh(state: RequestContext, pool: UpstreamPool, route: OpenAIRoute, key: string): void {
    const incoming = state.incoming;
    if (!incoming || !state.body) return;
    if (refreshing.has(key)) return;
    refreshing.add(key);
    const body = Buffer.from(JSON.stringify({ ...state.body, stream: false, stream_options: undefined }));
    const model = state.model ?? "";
    void (async () => {
      // Nobody waits for a refresh: it takes a slot only when no one else wants it.
      const exchange = new Exchange(pool.config.timeouts.total, {
        band: BACKGROUND,
        tenant: state.tenant?.id ?? "",
        weight: 1,
        deadline: performance.now() + pool.config.admission.bands.background.maxWait,
        patient: false,
      });
      const result = await forward(
        {
          pool,
          method: "POST",
          path: route,
          headers: { ...incoming.headers },
          body,
          requestId: incoming.id,
          clientIp: incoming.ip,
          stripAuthorization: deps.stripAuthorization,
          streamAny: false,
          sendTimeout: deps.sendTimeout,
        },
        exchange,
        deps.hooks,
      );
      // A backend that streams although asked not to: nobody reads it, so free it at once.
      if (result.kind === "stream") result.body.destroy();
      else if (result.status === 200 && result.json) {
        const answer = answerFromJson(
          { route, model, config: pool.config.cache, now: Date.now() },
          result.json,
        );
        await deps.cache.put(key, answer, pool.config.cache.maxEntrySize);
      }
    })()
      .catch(() => undefined)
      .finally(() => refreshing.delete(key));
  }
}

/** What the leader's answer leaves for the cache: a complete 200, or nothing. */
function storable(state: RequestContext): CachedAnswer | undefined {
  const answer = state.answer;
  const pool = state.target;
  const route = state.route as OpenAIRoute | undefined;
  if (!answer || answer.kind === "cached" || answer.status !== 200 || !pool || !route) return undefined;
  const common = { route, model: state.model ?? "", config: pool.config.cache, now: Date.now() };
  if (answer.kind === "buffered") return answer.json ? answerFromJson(common, answer.json) : undefined;
  const tap = answer.tap;
  const complete = tap?.done === true && state.error === undefined;
  return complete ? answerFromStream(common, tap?.events, tap?.usage) : undefined;
}

export function markCache(state: RequestContext, metrics: Metrics, status: CacheStatus): void {
  setHeaders(state, { "x-floodgate-cache": status });
  state.cache = status;
  metrics.observeCache(state.pool ?? "", status);
}

export function cached(state: RequestContext, metrics: Metrics, hit: Hit, status: CacheStatus): PathAnswer {
  markCache(state, metrics, status);
  return { kind: "cached", hit };
}
