/**
 * Wires the request path into Fastify: the OpenAI routes (model → pool → rate limits → token
 * reservation → concurrency lease → forward, with the pool's fallback chain → settle),
 * GET /v1/models, and the configured pass-through prefixes.
 */
import { pipeline, type Readable, Transform, type TransformCallback } from "node:stream";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { CachedAnswer } from "../cache/entry.js";
import { cacheKey, isCacheable } from "../cache/key.js";
import { answerFromJson, answerFromStream, cacheDirectives, render } from "../cache/respond.js";
import { type CacheStatus, entryKey, type Flight, type ResponseCache } from "../cache/response-cache.js";
import { SingleFlight } from "../cache/single-flight.js";
import type { GatewayConfig, RouteConfig } from "../config/index.js";
import { errors, GatewayError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import type { ConcurrencyLimits } from "../ratelimit/concurrency.js";
import { requestHeaders, tokenHeaders } from "../ratelimit/headers.js";
import type { RequestLimits } from "../ratelimit/request-limits.js";
import type { Reservation, TokenBudgets } from "../ratelimit/token-budget.js";
import { estimateTokens, usageTotal } from "../tokens/estimate.js";
import type { UpstreamPool, Upstreams } from "../upstream/pool.js";
import { Exchange } from "./exchange.js";
import { type ForwardHooks, type ForwardInput, type ForwardResult, forward } from "./forwarder.js";
import { OPENAI_ROUTES, type OpenAIRoute } from "./routes.js";
import { guardSlowReader, SLICE, SlicedBody } from "./send-timeout.js";
import type { StreamTap } from "./stream-tap.js";

export interface ProxyDeps {
  config: GatewayConfig;
  upstreams: Upstreams;
  metrics: Metrics;
  authEnabled: boolean;
  limits: RequestLimits;
  budgets: TokenBudgets;
  concurrency: ConcurrencyLimits;
  cache: ResponseCache;
}

interface FallbackTarget {
  pool: UpstreamPool;
  model: string;
}

/** What one try at a pool sends. */
interface Outbound {
  path: string;
  body: ForwardResult["body"] | null;
  streamAny: boolean;
  tap?: ForwardInput["tap"];
}

type Json = Record<string, unknown>;

export function registerProxy(app: FastifyInstance, deps: ProxyDeps): void {
  const refreshes = new SingleFlight<void>();
  const hooks: ForwardHooks = {
    onFirstByte: (pool, backend, seconds) => deps.metrics.observeFirstByte(pool.name, backend.name, seconds),
  };

  const modelList = {
    object: "list",
    data: deps.upstreams
      .models()
      .map(({ model, pool }) => ({ id: model, object: "model", created: 0, owned_by: pool })),
  };
  app.get("/v1/models", async () => modelList);

  for (const route of OPENAI_ROUTES) {
    app.post(route, async (request, reply) => {
      const body = request.body;
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        throw errors.invalidRequest("The request body must be a JSON object.");
      }
      const json = body as Json;
      const model = json.model;
      if (typeof model !== "string" || model === "") {
        throw errors.invalidRequest("You must provide a model parameter.", "model");
      }
      const ctx = request.gw;
      ctx.model = model;
      const pool = deps.upstreams.forModel(model);
      if (!pool) throw errors.modelNotFound(model);
      ctx.pool = pool.name;
      ctx.stream = json.stream === true;

      ctx.route = route;
      // Stages that are off cost nothing: no await, no promise turn.
      if (deps.limits.enabled) await checkRequestLimits(request, reply);

      // Cache: a hit is answered here, past auth and the request limits, before any token is
      // reserved (it costs no GPU time, so it costs no tokens).
      const cache = pool.config.cache.enabled ? openCache(request, reply, pool, route, json) : undefined;
      let leader: Extract<Flight, { role: "leader" }> | undefined;
      let staleForError: CachedAnswer | undefined;
      if (cache) {
        const found = cache.revalidate ? {} : await deps.cache.lookup(cache.key);
        if (found.fresh) return sendCached(request, reply, pool, found.fresh, "HIT");
        if (found.stale) {
          const age = Date.now() - found.stale.freshUntil;
          if (age < pool.config.cache.staleWhileRevalidate) {
            refreshInBackground(request, pool, route, json, cache.key);
            return sendCached(request, reply, pool, found.stale, "STALE");
          }
          if (age < pool.config.cache.staleIfError) staleForError = found.stale;
        }
        const flight = await deps.cache.join(cache.key, pool.config.cache, pool.config.timeouts.firstByte);
        if (flight.role === "follower" && flight.answer)
          return sendCached(request, reply, pool, flight.answer, "HIT");
        if (flight.role === "leader") {
          leader = flight;
          // However this request ends, the flight must land, or its waiters would hang.
          request.gw.cleanups.push(() => void flight.finish(undefined));
        }
        markCache(request, reply, pool, "MISS");
      }

      let reservation: Reservation | undefined;
      if (deps.budgets.has(ctx.tenant) || deps.concurrency.has(ctx.tenant)) {
        try {
          reservation = await reserveTokens(request, reply, route, json);
          await takeConcurrencySlot(request, reservation);
        } catch (err) {
          void leader?.finish(undefined);
          throw err;
        }
      }

      // Settling tokens and recording for the cache both need a stream's usage: it is asked for
      // on the client's behalf when it did not ask (and then removed from what it receives).
      let upstreamJson = json;
      let tap: Outbound["tap"];
      if ((reservation || leader) && ctx.stream) {
        const options = isJson(json.stream_options) ? json.stream_options : {};
        const asked = options.include_usage === true;
        if (!asked) upstreamJson = { ...json, stream_options: { ...options, include_usage: true } };
        tap = { strip: !asked, recordLimit: leader ? pool.config.cache.maxEntrySize : undefined };
      }
      const path = route + queryOf(request.url);
      const chain = ctx.tenant?.fallback === false ? [] : fallbackChain(pool);
      let result: ForwardResult;
      try {
        result = await serve(request, reply, pool, chain, (target) => ({
          path,
          body: target
            ? withModel(upstreamJson, target.model)
            : upstreamJson === json
              ? (request.rawBody ?? null)
              : Buffer.from(JSON.stringify(upstreamJson)),
          streamAny: false,
          tap,
        }));
      } catch (err) {
        await reservation?.settle(0);
        void leader?.finish(undefined);
        if (staleForError && cannotServe(err, request))
          return sendCached(request, reply, pool, staleForError, "STALE");
        throw err;
      }
      if (staleForError && result.kind === "buffered" && RETRYABLE_STATUS.has(result.status)) {
        void leader?.finish(undefined);
        await reservation?.settle(0);
        return sendCached(request, reply, pool, staleForError, "STALE");
      }
      if (reservation) settleWhenDone(request, reservation, result);
      if (leader) recordWhenDone(request, leader, pool, route, model, result);
      return send(reply, result, deps.config.server.sendTimeout);
    });
  }

  /** Whether this request may use the cache, and its key; marks it BYPASS when it may not. */
  function openCache(
    request: FastifyRequest,
    reply: FastifyReply,
    pool: UpstreamPool,
    route: OpenAIRoute,
    json: Json,
  ): { key: string; revalidate: boolean } | undefined {
    const directives = cacheDirectives(request.headers["cache-control"]);
    const config = pool.config.cache;
    if (directives.noStore || !isCacheable(json, config.rule, route).ok) {
      markCache(request, reply, pool, "BYPASS");
      return undefined;
    }
    const scope = config.scope === "shared" ? "shared" : (request.gw.tenant?.id ?? "anonymous");
    const model = request.gw.model ?? "";
    const hash = cacheKey({ scope, pool: pool.name, model, route, body: json });
    return { key: entryKey(scope, model, hash), revalidate: directives.noCache };
  }

  function markCache(
    request: FastifyRequest,
    reply: FastifyReply,
    pool: UpstreamPool,
    status: CacheStatus,
  ): void {
    reply.header("x-floodgate-cache", status);
    request.gw.cache = status;
    deps.metrics.observeCache(pool.name, status);
  }

  function sendCached(
    request: FastifyRequest,
    reply: FastifyReply,
    pool: UpstreamPool,
    answer: CachedAnswer,
    status: CacheStatus,
  ): FastifyReply {
    markCache(request, reply, pool, status);
    const body = request.body as Json;
    const options = isJson(body.stream_options) ? body.stream_options : {};
    const out = render(
      answer,
      request.gw.stream,
      options.include_usage === true,
      pool.config.cache.replay === "paced",
    );
    reply.code(200).header("content-type", out.contentType);
    if (request.gw.stream) reply.header("cache-control", "no-cache");
    reply.send(out.body);
    guardSlowReader(reply.raw, deps.config.server.sendTimeout);
    return reply;
  }

  /** Stores a complete 200 answer when it ends; anything else lands the flight empty. */
  function recordWhenDone(
    request: FastifyRequest,
    leader: Extract<Flight, { role: "leader" }>,
    pool: UpstreamPool,
    route: OpenAIRoute,
    model: string,
    result: ForwardResult,
  ): void {
    const common = { route, model, config: pool.config.cache, now: Date.now() };
    if (result.status !== 200) {
      void leader.finish(undefined);
    } else if (result.kind === "buffered") {
      void leader.finish(result.json ? answerFromJson(common, result.json) : undefined);
    } else {
      const tap = result.tap;
      whenStreamDone(request, () => {
        const complete = tap?.done === true && request.gw.error === undefined;
        void leader.finish(
          complete ? answerFromStream({ ...common, now: Date.now() }, tap?.events, tap?.usage) : undefined,
        );
      });
    }
  }

  /** stale-while-revalidate: one refresh per key at a time, with no client waiting on it. */
  function refreshInBackground(
    request: FastifyRequest,
    pool: UpstreamPool,
    route: OpenAIRoute,
    json: Json,
    key: string,
  ): void {
    const headers = { ...request.headers };
    const body = Buffer.from(JSON.stringify({ ...json, stream: false, stream_options: undefined }));
    const requestId = request.id;
    const clientIp = request.ip;
    const model = request.gw.model ?? "";
    void refreshes
      .run(key, async () => {
        const exchange = new Exchange(pool.config.timeouts.total);
        const result = await forward(
          {
            pool,
            method: "POST",
            path: route,
            headers,
            body,
            requestId,
            clientIp,
            stripAuthorization: deps.authEnabled,
            streamAny: false,
            sendTimeout: deps.config.server.sendTimeout,
          },
          exchange,
          hooks,
        );
        // A backend that streams although asked not to: nobody reads it, so free it at once.
        if (result.kind === "stream") result.body.destroy();
        else if (result.status === 200 && result.json) {
          const answer = answerFromJson(
            { route, model, config: pool.config.cache, now: Date.now() },
            result.json,
          );
          if (answer) await deps.cache.put(key, answer, pool.config.cache.maxEntrySize);
        }
      })
      .catch(() => undefined);
  }

  async function checkRequestLimits(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (!deps.limits.enabled) return;
    const state = await deps.limits.check(request);
    if (state) reply.headers(requestHeaders(state));
  }

  async function reserveTokens(
    request: FastifyRequest,
    reply: FastifyReply,
    route: OpenAIRoute,
    json: Json,
  ): Promise<Reservation | undefined> {
    const tenant = request.gw.tenant;
    if (!tenant || !deps.budgets.has(tenant)) return undefined;
    const estimate = estimateTokens(route, json, deps.config.tokens.defaultMaxTokens);
    const reservation = await deps.budgets.reserve(tenant, estimate.total);
    if (reservation) reply.headers(tokenHeaders(reservation.state));
    return reservation;
  }

  async function takeConcurrencySlot(
    request: FastifyRequest,
    reservation: Reservation | undefined,
  ): Promise<void> {
    const tenant = request.gw.tenant;
    if (!tenant || !deps.concurrency.has(tenant)) return;
    try {
      const lease = await deps.concurrency.acquire(tenant);
      if (lease) request.gw.cleanups.push(() => lease.release());
    } catch (err) {
      await reservation?.settle(0);
      throw err;
    }
  }

  /** Buffered answers settle now, streams when they end; a failed answer used nothing. */
  function settleWhenDone(request: FastifyRequest, reservation: Reservation, result: ForwardResult): void {
    if (result.kind === "stream") {
      const tap: StreamTap | undefined = result.tap;
      whenStreamDone(request, () => void reservation.settle(tap?.total));
      // The client may leave before the stream ends: the reservation then stands.
      request.gw.cleanups.push(() => void reservation.settle(tap?.total));
      return;
    }
    if (result.status >= 300) {
      void reservation.settle(0);
      return;
    }
    void reservation.settle(usageTotal(result.json?.usage));
  }

  /**
   * Forwards to the pool, then down its fallback chain while a pool cannot serve. An answer the
   * client may keep (or a stream that started) ends the walk.
   */
  async function serve(
    request: FastifyRequest,
    reply: FastifyReply,
    pool: UpstreamPool,
    chain: FallbackTarget[],
    build: (target: FallbackTarget | undefined) => Outbound,
  ): Promise<ForwardResult> {
    for (let i = 0; ; i++) {
      const target = i === 0 ? undefined : chain[i - 1];
      const targetPool = target?.pool ?? pool;
      let result: ForwardResult;
      try {
        result = await forwardFor(request, targetPool, build(target));
      } catch (err) {
        if (i < chain.length && cannotServe(err, request)) continue;
        throw err;
      }
      if (i < chain.length && result.kind === "buffered" && RETRYABLE_STATUS.has(result.status)) continue;
      if (target) markFallback(reply, pool.name, targetPool.name, request);
      return result;
    }
  }

  /** A pool's fallback chain with each target's model: the configured one, else its first. */
  function fallbackChain(pool: UpstreamPool): FallbackTarget[] {
    const out: FallbackTarget[] = [];
    for (const entry of pool.config.fallback) {
      const name = typeof entry === "string" ? entry : entry.pool;
      const target = deps.upstreams.pools.get(name);
      if (!target) continue; // rejected by config validation
      const model = (typeof entry === "string" ? undefined : entry.model) ?? target.config.models[0] ?? "";
      out.push({ pool: target, model });
    }
    return out;
  }

  function markFallback(reply: FastifyReply, from: string, to: string, request: FastifyRequest): void {
    reply.header("x-floodgate-fallback", to);
    request.gw.fallback = to;
    deps.metrics.observeFallback(from, to);
  }

  function forwardFor(request: FastifyRequest, pool: UpstreamPool, out: Outbound): Promise<ForwardResult> {
    const exchange = new Exchange(pool.config.timeouts.total);
    request.gw.exchange = exchange;
    return forward(
      {
        pool,
        method: request.method,
        path: out.path,
        headers: request.headers,
        body: out.body,
        requestId: request.id,
        clientIp: request.ip,
        stripAuthorization: deps.authEnabled,
        streamAny: out.streamAny,
        tap: out.tap,
        sendTimeout: deps.config.server.sendTimeout,
        onStreamEnd: (failure) => {
          request.gw.error = failure;
          request.gw.streamEnded = true;
          request.gw.onStreamDone?.();
        },
      },
      exchange,
      hooks,
    );
  }

  if (deps.config.routes.length > 0) {
    app.register(async (scope) => {
      // Pass-through bodies are streamed to the backend untouched, whatever their type, and
      // within server.bodyLimit like every other body: a declared length over it is refused at
      // once, a chunked body is cut (413) when it passes it.
      const limit = deps.config.server.bodyLimit;
      scope.removeAllContentTypeParsers();
      scope.addContentTypeParser("*", (request, payload, done) => {
        const declared = request.headers["content-length"];
        if (declared === undefined) {
          const limited = new BodyLimit(limit);
          pipeline(payload, limited, () => undefined);
          return done(null, limited);
        }
        if (Number(declared) > limit) return done(errors.bodyTooLarge(limit), undefined);
        done(null, payload);
      });
      for (const route of deps.config.routes) registerPassThrough(scope, route);
    });
  }

  function registerPassThrough(scope: FastifyInstance, route: RouteConfig): void {
    const pool = deps.upstreams.pools.get(route.pool);
    if (!pool) return; // rejected by config validation
    const prefix = route.prefix.replace(/\/+$/, "");
    const handler = async (request: FastifyRequest, reply: FastifyReply) => {
      request.gw.pool = pool.name;
      request.gw.route = prefix;
      const path = passThroughPath(request.url, prefix, route.stripPrefix);
      if (deps.limits.enabled) await checkRequestLimits(request, reply);
      const hasBody = request.method !== "GET" && request.method !== "HEAD";
      const body = hasBody ? ((request.body as ForwardResult["body"] | undefined) ?? null) : null;
      // A streamed upload cannot be sent twice: only bodiless requests may fall back.
      const chain =
        route.fallback && body === null && request.gw.tenant?.fallback !== false ? fallbackChain(pool) : [];
      const result = await serve(request, reply, pool, chain, () => ({ path, body, streamAny: true }));
      return send(reply, result, deps.config.server.sendTimeout);
    };
    scope.all(prefix === "" ? "/" : prefix, handler);
    scope.all(`${prefix}/*`, handler);
  }
}

const RETRYABLE_STATUS = new Set([429, 502, 503, 504]);

/** Passes a body through until it exceeds `limit` bytes, then fails with a 413. */
class BodyLimit extends Transform {
  private seen = 0;
  constructor(private readonly limit: number) {
    super();
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.limit) callback(errors.bodyTooLarge(this.limit));
    else callback(null, chunk);
  }
}

/**
 * The pool could not serve, so the next pool in the chain should try: no backend could take
 * the request, or every try failed before a byte reached the client. Not when the client left,
 * and not after the total timeout (a fallback would double the client's wait).
 */
function cannotServe(err: unknown, request: FastifyRequest): boolean {
  if (!(err instanceof GatewayError) || request.gw.exchange?.abortReason !== undefined) return false;
  return RETRYABLE_STATUS.has(err.statusCode) && err.code !== "upstream_total_timeout";
}

/**
 * Runs fn when the request's relayed stream ends, or at once if it has already: a short stream
 * that arrives in one read ends while the relay is built, before the handler has its result.
 */
function whenStreamDone(request: FastifyRequest, fn: () => void): void {
  const ctx = request.gw;
  if (ctx.streamEnded) {
    fn();
    return;
  }
  const previous = ctx.onStreamDone;
  ctx.onStreamDone = previous
    ? () => {
        previous();
        fn();
      }
    : fn;
}

function isJson(value: unknown): value is Json {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** The request body for a fallback pool: the same request, asking for its model. */
function withModel(body: Json, model: string): Buffer {
  return Buffer.from(JSON.stringify({ ...body, model }));
}

/** Sends an answer, watching for a client that stops taking it (see send-timeout.ts). */
function send(reply: FastifyReply, result: ForwardResult, sendTimeout: number): FastifyReply {
  reply.code(result.status).headers(result.headers);
  if (result.kind === "buffered" && result.body.length <= SLICE) {
    reply.send(result.body);
    guardSlowReader(reply.raw, sendTimeout);
    return reply;
  }
  let body: Readable;
  if (result.kind === "buffered") {
    reply.header("content-length", String(result.body.length));
    body = new SlicedBody(result.body, sendTimeout);
  } else {
    body = result.body;
  }
  // The body is watched while it has data to give; then what the socket still holds.
  body.once("end", () => guardSlowReader(reply.raw, sendTimeout));
  return reply.send(body);
}

function queryOf(url: string): string {
  const q = url.indexOf("?");
  return q === -1 ? "" : url.slice(q);
}

/**
 * The backend path for a pass-through request. Dot segments (also percent-encoded) are resolved
 * first, and a path that then leaves the prefix is refused: `/tokenize/../admin` must not reach
 * the backend's /admin. Leading `//` cannot name another host: the backend's origin is fixed.
 */
export function passThroughPath(url: string, prefix: string, stripPrefix: boolean): string {
  const q = url.indexOf("?");
  const rawPath = q === -1 ? url : url.slice(0, q);
  const query = q === -1 ? "" : url.slice(q);
  if (!rawPath.startsWith("/")) throw errors.invalidRequest("The request target must be a path.");
  const normalized = new URL(`http://gateway${rawPath.replace(/^\/+/, "/")}`).pathname;
  if (normalized !== prefix && !normalized.startsWith(`${prefix}/`) && prefix !== "") {
    throw errors.invalidRequest("The request path leaves the route's prefix.");
  }
  const rest = stripPrefix ? normalized.slice(prefix.length) : normalized;
  return (rest.startsWith("/") ? rest : `/${rest}`) + query;
}
