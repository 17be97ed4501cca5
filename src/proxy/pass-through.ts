/**
 * Pass-through routes: configured path prefixes relayed to a pool as received, whatever their
 * content (a tokenizer endpoint, an engine's own API), bodies streamed both ways and within
 * server.bodyLimit, paths normalised so that they cannot leave their prefix.
 */
import { pipeline, Transform, type TransformCallback } from "node:stream";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { GatewayConfig, RouteConfig } from "../config/index.js";
import type { PathAnswer, RequestContext } from "../context.js";
import { errors } from "../errors.js";
import type { GatewayPath } from "../request-path.js";
import type { Stage } from "../stages/stage.js";
import { type Forwarding, fallbackChain, serve } from "./fallback.js";
import type { ForwardResult } from "./forwarder.js";
import { sendAnswer } from "./send-answer.js";

/** The forward stage of one pass-through route. */
export function passThroughStage(deps: Forwarding, route: RouteConfig): Stage<RequestContext, PathAnswer> {
  const prefix = normalizedPrefix(route);
  return {
    name: "forward",
    async enter(state) {
      const pool = state.target;
      const incoming = state.incoming;
      if (!pool || !incoming) throw new Error("pass-through without its pool");
      const path = passThroughPath(incoming.url, prefix, route.stripPrefix);
      const hasBody = incoming.method !== "GET" && incoming.method !== "HEAD";
      const body = hasBody ? ((state.passBody as ForwardResult["body"] | undefined) ?? null) : null;
      // A streamed upload cannot be sent twice: only bodiless requests may fall back.
      const chain =
        route.fallback && body === null && state.tenant?.fallback !== false
          ? fallbackChain(deps.upstreams, pool)
          : [];
      const declared = body === null ? undefined : Number(incoming.headers["content-length"]);
      const bodyLength = declared !== undefined && Number.isInteger(declared) ? declared : undefined;
      return serve(deps, state, pool, chain, () => ({ path, body, bodyLength, streamAny: true }));
    },
    leave(state) {
      state.exchange?.settle();
    },
  };
}

/** The pass-through prefixes of one config generation, longest first, and each one's path. */
export class PassThroughTable {
  private readonly entries: { prefix: string; route: RouteConfig; path: GatewayPath }[];

  constructor(paths: ReadonlyMap<RouteConfig, GatewayPath>) {
    this.entries = [...paths]
      .map(([route, path]) => ({ prefix: normalizedPrefix(route), route, path }))
      .sort((a, b) => b.prefix.length - a.prefix.length);
  }

  get size(): number {
    return this.entries.length;
  }

  /** The route whose prefix the URL's path is in, or undefined. */
  match(url: string): { prefix: string; route: RouteConfig; path: GatewayPath } | undefined {
    const q = url.indexOf("?");
    const path = q === -1 ? url : url.slice(0, q);
    for (const e of this.entries) {
      if (e.prefix === "" || path === e.prefix || path.startsWith(`${e.prefix}/`)) return e;
    }
    return undefined;
  }
}

/**
 * One catch-all route serves every pass-through prefix through a table lookup: Fastify's routes
 * are fixed once the app is ready, while the table can be swapped whole (a config reload). A
 * URL no prefix takes is the 404 it would have been.
 */
export function registerPassThrough(
  app: FastifyInstance,
  config: GatewayConfig,
  /** The routes of the config generation the request runs on. */
  table: (request: FastifyRequest) => PassThroughTable,
  deps: Pick<Forwarding, "upstreams" | "sendTimeout">,
): void {
  app.register(async (scope) => {
    // Pass-through bodies are streamed to the backend untouched, whatever their type, and
    // within server.bodyLimit like every other body: a declared length over it is refused at
    // once, a chunked body is cut (413) when it passes it.
    const limit = config.server.bodyLimit;
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
    const handler = async (request: FastifyRequest, reply: FastifyReply) => {
      const entry = table(request).match(request.url);
      const pool = entry ? deps.upstreams.pools.get(entry.route.pool) : undefined;
      if (!entry || !pool) throw errors.routeNotFound(request.method, request.url.split("?")[0] ?? "/");
      const state = request.gw;
      state.pool = pool.name;
      state.target = pool;
      state.route = entry.prefix;
      state.incoming = request;
      state.passBody = request.body;
      state.path = entry.path;
      return sendAnswer(reply, state, await entry.path.run(state), deps.sendTimeout);
    };
    scope.all("/", handler);
    scope.all("/*", handler);
  });
}

function normalizedPrefix(route: RouteConfig): string {
  return route.prefix.replace(/\/+$/, "");
}

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
