/**
 * Wires the forwarder into Fastify: the OpenAI routes (model → pool), GET /v1/models, and the
 * configured pass-through prefixes.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { GatewayConfig, RouteConfig } from "../config/index.js";
import { errors, GatewayError } from "../errors.js";
import type { Metrics } from "../metrics/metrics.js";
import type { UpstreamPool, Upstreams } from "../upstream/pool.js";
import { Exchange } from "./exchange.js";
import { type ForwardHooks, type ForwardResult, forward } from "./forwarder.js";

export const OPENAI_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] as const;

export interface ProxyDeps {
  config: GatewayConfig;
  upstreams: Upstreams;
  metrics: Metrics;
  authEnabled: boolean;
}

export function registerProxy(app: FastifyInstance, deps: ProxyDeps): void {
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
      const model = (body as { model?: unknown }).model;
      if (typeof model !== "string" || model === "") {
        throw errors.invalidRequest("You must provide a model parameter.", "model");
      }
      const ctx = request.gw;
      ctx.model = model;
      const pool = deps.upstreams.forModel(model);
      if (!pool) throw errors.modelNotFound(model);
      ctx.pool = pool.name;
      ctx.stream = (body as { stream?: unknown }).stream === true;
      const path = route + queryOf(request.url);
      const chain = ctx.tenant?.fallback === false ? [] : fallbackChain(pool);
      const json = body as Record<string, unknown>;
      return serve(request, reply, pool, chain, (target) => ({
        path,
        body: target ? withModel(json, target.model) : (request.rawBody ?? null),
        streamAny: false,
      }));
    });
  }

  /**
   * Forwards to the pool, then down its fallback chain while a pool cannot serve. A pass-through
   * stream that started, or any answer the client may keep, ends the walk.
   */
  async function serve(
    request: FastifyRequest,
    reply: FastifyReply,
    pool: UpstreamPool,
    chain: { pool: UpstreamPool; model: string }[],
    build: (target: { pool: UpstreamPool; model: string } | undefined) => {
      path: string;
      body: ForwardResult["body"] | null;
      streamAny: boolean;
    },
  ): Promise<FastifyReply> {
    for (let i = 0; ; i++) {
      const target = i === 0 ? undefined : chain[i - 1];
      const targetPool = target?.pool ?? pool;
      const { path, body, streamAny } = build(target);
      let result: ForwardResult;
      try {
        result = await forwardFor(request, targetPool, path, body, streamAny);
      } catch (err) {
        if (i < chain.length && cannotServe(err, request)) continue;
        throw err;
      }
      if (i < chain.length && result.kind === "buffered" && RETRYABLE_STATUS.has(result.status)) continue;
      if (target) markFallback(reply, pool.name, targetPool.name, request);
      return send(reply, result);
    }
  }

  /** A pool's fallback chain with each target's model: the configured one, else its first. */
  function fallbackChain(pool: UpstreamPool): { pool: UpstreamPool; model: string }[] {
    const out: { pool: UpstreamPool; model: string }[] = [];
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

  async function forwardFor(
    request: FastifyRequest,
    pool: UpstreamPool,
    path: string,
    body: ForwardResult["body"] | null,
    streamAny: boolean,
  ): Promise<ForwardResult> {
    const exchange = new Exchange(pool.config.timeouts.total);
    request.gw.exchange = exchange;
    request.gw.onClientClose = () => {
      exchange.abort("client");
      exchange.settle();
    };
    return forward(
      {
        pool,
        method: request.method,
        path,
        headers: request.headers,
        body,
        requestId: request.id,
        clientIp: request.ip,
        stripAuthorization: deps.authEnabled,
        streamAny,
      },
      exchange,
      {
        ...hooks,
        onStreamEnd: (failure) => {
          request.gw.error = failure;
        },
      },
    );
  }

  if (deps.config.routes.length > 0) {
    app.register(async (scope) => {
      // Pass-through bodies are streamed to the backend untouched, whatever their type.
      scope.removeAllContentTypeParsers();
      scope.addContentTypeParser("*", (_request, payload, done) => done(null, payload));
      for (const route of deps.config.routes) registerPassThrough(scope, route);
    });
  }

  function registerPassThrough(scope: FastifyInstance, route: RouteConfig): void {
    const pool = deps.upstreams.pools.get(route.pool);
    if (!pool) return; // rejected by config validation
    const prefix = route.prefix.replace(/\/+$/, "");
    const handler = async (request: FastifyRequest, reply: FastifyReply) => {
      request.gw.pool = pool.name;
      const path = passThroughPath(request.url, prefix, route.stripPrefix);
      const hasBody = request.method !== "GET" && request.method !== "HEAD";
      const body = hasBody ? ((request.body as ForwardResult["body"] | undefined) ?? null) : null;
      // A streamed upload cannot be sent twice: only bodiless requests may fall back.
      const chain =
        route.fallback && body === null && request.gw.tenant?.fallback !== false ? fallbackChain(pool) : [];
      return serve(request, reply, pool, chain, () => ({ path, body, streamAny: true }));
    };
    scope.all(prefix === "" ? "/" : prefix, handler);
    scope.all(`${prefix}/*`, handler);
  }
}

const RETRYABLE_STATUS = new Set([429, 502, 503, 504]);

/**
 * The pool could not serve, so the next pool in the chain should try: no backend could take
 * the request, or every try failed before a byte reached the client. Not when the client left,
 * and not after the total timeout (a fallback would double the client's wait).
 */
function cannotServe(err: unknown, request: FastifyRequest): boolean {
  if (!(err instanceof GatewayError) || request.gw.exchange?.abortReason !== undefined) return false;
  return RETRYABLE_STATUS.has(err.statusCode) && err.code !== "upstream_total_timeout";
}

/** The request body for a fallback pool: the same request, asking for its model. */
function withModel(body: Record<string, unknown>, model: string): Buffer {
  return Buffer.from(JSON.stringify({ ...body, model }));
}

function send(reply: FastifyReply, result: ForwardResult): FastifyReply {
  return reply.code(result.status).headers(result.headers).send(result.body);
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
