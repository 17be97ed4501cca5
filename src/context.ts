/**
 * What the stages learn about a request, for the stages after them, their way back, and the
 * access log: the state that the request path (src/stages/stage.ts) runs on.
 */
import type { IncomingHttpHeaders } from "node:http";
import type { ApiKeys, Tenant } from "./auth/api-keys.js";
import type { Flight, Hit } from "./cache/response-cache.js";
import type { GatewayConfig, RouteConfig } from "./config/index.js";
import type { GatewayError } from "./errors.js";
import type { Exchange } from "./proxy/exchange.js";
import type { ForwardResult } from "./proxy/forwarder.js";
import type { PassThroughTable } from "./proxy/pass-through.js";
import type { Lease } from "./ratelimit/concurrency.js";
import type { Reservation, TokenAsk } from "./ratelimit/token-budget.js";
import type { PathProgress, RequestPath } from "./stages/stage.js";
import type { UpstreamPool } from "./upstream/pool.js";

export type Json = Record<string, unknown>;

/** What a request path answers with: a backend's answer, or a cached one. */
export type PathAnswer = ForwardResult | { kind: "cached"; hit: Hit };

/** The parts of the HTTP request the stages read (no Fastify types). */
export interface Incoming {
  id: string;
  method: string;
  url: string;
  ip: string;
  headers: IncomingHttpHeaders;
  /** The JSON body as received (forwarded as is when nothing rewrites it). */
  rawBody: Buffer | undefined;
}

/** The request path one config makes (src/app.ts builds one per config, a reload the next). */
export interface Generation {
  readonly number: number;
  readonly config: GatewayConfig;
  readonly apiKeys: ApiKeys;
  readonly openai: RequestPath<RequestContext, PathAnswer>;
  /** A job's submission on the OpenAI routes (Prefer: respond-async). */
  readonly submit: RequestPath<RequestContext, PathAnswer>;
  readonly passThrough: ReadonlyMap<RouteConfig, RequestPath<RequestContext, PathAnswer>>;
  readonly table: PassThroughTable;
}

export interface RequestContext extends PathProgress {
  /** The config generation the request runs on, from arrival to its end. */
  generation: Generation | undefined;
  /** performance.now() when the request arrived. */
  startedAt: number;
  /** The route template, set by the handlers (Fastify's routeOptions builds an object per read). */
  route: string | undefined;
  tenant: Tenant | undefined;
  /** A short digest of the API key: limits can count per key without ever storing one. */
  keyId: string | undefined;
  /**
   * A job's run (src/jobs/runner.ts), on behalf of the tenant that submitted it: the submission
   * already counted against the request limits, and admission never refuses it on its estimate.
   */
  deferred: boolean;
  model: string | undefined;
  /** The pool that serves the request (its name, for logs and metrics). */
  pool: string | undefined;
  stream: boolean;
  /** What the response cache did: HIT, MISS, STALE or BYPASS (cache-enabled pools only). */
  cache: string | undefined;
  /** The fallback pool that served the request, if the model's own pool could not. */
  fallback: string | undefined;
  /** The exchange of the pool being tried. */
  exchange: Exchange | undefined;
  /** Milliseconds spent waiting for a backend slot (admission queues). */
  queuedMs: number;
  /** Milliseconds backend slots were held by the exchanges of pools tried before this one. */
  upstreamMs: number;
  /** Runs once the first backend slot is held (the concurrency lease is taken at dispatch). */
  dispatch: (() => Promise<void>) | undefined;
  /** The error sent to the client (or ending its stream), for the log and the way back. */
  error: GatewayError | undefined;

  /** The request path this request runs, and how far it got. */
  path: RequestPath<RequestContext, PathAnswer> | undefined;
  incoming: Incoming | undefined;
  /** The parsed OpenAI body (route stage on). */
  body: Json | undefined;
  /** A pass-through route's body, as Fastify handed it (a stream, or nothing). */
  passBody: unknown;
  /** The pool the route stage chose. */
  target: UpstreamPool | undefined;
  /** Response headers the stages set (limits, budgets, cache status, fallback). */
  headers: Record<string, string> | undefined;
  /** The answer the path produced. */
  answer: PathAnswer | undefined;
  /** performance.now() when a cached answer was written (its first token, for the metrics). */
  answeredAt: number | undefined;
  /** The whole response reached the client's socket (set when the connection is done). */
  delivered: boolean;

  // What each stage took, for its own way back.
  /** The token reservation the request-limits stage took beside the limits, for the token-budget stage. */
  tokenAsk: TokenAsk | undefined;
  reservation: Reservation | undefined;
  lease: Lease | undefined;
  flight: Extract<Flight, { role: "leader" }> | undefined;
  /** An expired entry still good enough when no backend can serve (staleIfError). */
  staleForError: Hit | undefined;
  /** The body sent upstream, when a stage rewrote it (usage asked for on the client's behalf). */
  upstreamBody: Json | undefined;
  /** An event stream's tap options: strip the usage chunk, record for the cache. */
  tap: { strip: boolean; recordLimit?: number } | undefined;
}

export function newContext(): RequestContext {
  return {
    generation: undefined,
    startedAt: performance.now(),
    route: undefined,
    tenant: undefined,
    keyId: undefined,
    deferred: false,
    model: undefined,
    pool: undefined,
    stream: false,
    fallback: undefined,
    cache: undefined,
    exchange: undefined,
    queuedMs: 0,
    upstreamMs: 0,
    dispatch: undefined,
    error: undefined,
    path: undefined,
    entered: 0,
    running: false,
    closed: false,
    unwound: false,
    incoming: undefined,
    body: undefined,
    passBody: undefined,
    target: undefined,
    headers: undefined,
    answer: undefined,
    answeredAt: undefined,
    delivered: false,
    tokenAsk: undefined,
    reservation: undefined,
    lease: undefined,
    flight: undefined,
    staleForError: undefined,
    upstreamBody: undefined,
    tap: undefined,
  };
}

declare module "fastify" {
  interface FastifyRequest {
    gw: RequestContext;
    rawBody: Buffer | undefined;
  }
}
