/** What the stages learn about a request, for the stages after them and for the access log. */
import type { Tenant } from "./auth/api-keys.js";
import type { GatewayError } from "./errors.js";
import type { Exchange } from "./proxy/exchange.js";

export interface RequestContext {
  /** performance.now() when the request arrived. */
  startedAt: number;
  /** The route template, set by the handlers (Fastify's routeOptions builds an object per read). */
  route: string | undefined;
  tenant: Tenant | undefined;
  /** A short digest of the API key: limits can count per key without ever storing one. */
  keyId: string | undefined;
  model: string | undefined;
  pool: string | undefined;
  stream: boolean;
  /** What the response cache did: HIT, MISS, STALE or BYPASS (cache-enabled pools only). */
  cache: string | undefined;
  /** The fallback pool that served the request, if the model's own pool could not. */
  fallback: string | undefined;
  exchange: Exchange | undefined;
  /** The error sent to the client (or ending its stream), for the log. */
  error: GatewayError | undefined;
  /** Run when a relayed stream ends (token settlement); see whenStreamDone in the proxy. */
  onStreamDone: (() => void) | undefined;
  /** The relayed stream has ended (it can before the handler gets its result). */
  streamEnded: boolean;
  /** Run once when the client connection closes, however the request ended (lease release). */
  cleanups: (() => void)[];
}

export function newContext(): RequestContext {
  return {
    startedAt: performance.now(),
    route: undefined,
    tenant: undefined,
    keyId: undefined,
    model: undefined,
    pool: undefined,
    stream: false,
    fallback: undefined,
    cache: undefined,
    exchange: undefined,
    error: undefined,
    onStreamDone: undefined,
    streamEnded: false,
    cleanups: [],
  };
}

declare module "fastify" {
  interface FastifyRequest {
    gw: RequestContext;
    rawBody: Buffer | undefined;
  }
  interface FastifyContextConfig {
    /** Routes that need no API key: health probes. */
    public?: boolean;
  }
}
