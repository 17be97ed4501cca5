/**
 * Sends one client request to one backend and shapes the answer for the client. Knows nothing
 * of Fastify: the plugin hands it the parts of the request and sends what it returns.
 *
 * Non-streamed answers on the OpenAI routes are read whole before anything is sent (they are
 * small, and the backend sends them at the end of generation anyway): a backend failing
 * mid-body then gives the client a proper 502/504 instead of a cut-off body, and later stages
 * (usage settlement, cache store, retries) see the complete answer. Event streams and
 * pass-through routes are relayed as they arrive.
 */
import type { IncomingHttpHeaders } from "node:http";
import type { Readable } from "node:stream";
import type { Dispatcher } from "undici";
import { errors, type GatewayError } from "../errors.js";
import type { Backend } from "../upstream/backend.js";
import type { UpstreamPool } from "../upstream/pool.js";
import type { Exchange } from "./exchange.js";
import { downstreamResponseHeaders, upstreamRequestHeaders } from "./headers.js";
import { ResponseRelay } from "./relay.js";
import { toGatewayError } from "./upstream-errors.js";

export interface ForwardInput {
  pool: UpstreamPool;
  method: string;
  /** Path and query relative to the backend's base path; always starts with "/". */
  path: string;
  headers: IncomingHttpHeaders;
  body: Buffer | Readable | null;
  requestId: string;
  clientIp: string;
  stripAuthorization: boolean;
  /** Relay the response as it arrives (pass-through routes); else read it whole unless SSE. */
  streamAny: boolean;
  /** Called when the client connection closes early, to abort the upstream exchange. */
  onClientClose: (abort: () => void) => void;
}

export type ForwardResult =
  | { kind: "buffered"; status: number; headers: Record<string, string | string[]>; body: Buffer }
  | { kind: "stream"; status: number; headers: Record<string, string | string[]>; body: Readable };

export interface ForwardHooks {
  /** The backend answered with headers after this many seconds. */
  onFirstByte?(pool: UpstreamPool, backend: Backend, seconds: number): void;
  /** A relayed stream ended; `failure` is set when it ended with an error event. */
  onStreamEnd?(failure: GatewayError | undefined, bytes: number): void;
}

export async function forward(
  input: ForwardInput,
  exchange: Exchange,
  hooks: ForwardHooks,
): Promise<ForwardResult> {
  const backend = input.pool.pick();
  if (!backend) {
    exchange.settle();
    throw errors.noBackendAvailable(input.pool.name, 1000);
  }
  exchange.occupy(backend);
  input.onClientClose(() => {
    exchange.abort("client");
    exchange.settle();
  });

  const contentLength = Buffer.isBuffer(input.body) ? input.body.length : undefined;
  const headers = upstreamRequestHeaders(input.headers, {
    requestId: input.requestId,
    clientIp: input.clientIp,
    stripAuthorization: input.stripAuthorization,
    extra: backend.extraHeaders,
    contentLength,
  });
  const sentAt = performance.now();
  let response: Dispatcher.ResponseData;
  try {
    response = await backend.dispatcher.request({
      path: backend.basePath + input.path,
      method: input.method as Dispatcher.HttpMethod,
      headers,
      body: input.body,
      signal: exchange.signal,
    });
  } catch (err) {
    exchange.settle();
    throw toGatewayError(err, exchange.abortReason);
  }
  exchange.firstByteAt = performance.now();
  hooks.onFirstByte?.(input.pool, backend, (exchange.firstByteAt - sentAt) / 1000);

  const status = response.statusCode;
  const sse = isEventStream(response.headers);
  if (input.streamAny || sse) {
    const relay = new ResponseRelay(response.body, exchange, sse, (r) =>
      hooks.onStreamEnd?.(r.failure, exchange.bytesOut),
    );
    // A pass-through body keeps its length: a cut-off copy is then detectable by the client.
    return {
      kind: "stream",
      status,
      headers: downstreamResponseHeaders(response.headers, !sse),
      body: relay,
    };
  }
  let body: Buffer;
  try {
    body = Buffer.from(await response.body.arrayBuffer());
  } catch (err) {
    throw toGatewayError(err, exchange.abortReason);
  } finally {
    exchange.settle();
  }
  exchange.bytesOut = body.length;
  return { kind: "buffered", status, headers: downstreamResponseHeaders(response.headers, false), body };
}

function isEventStream(headers: Record<string, string | string[] | undefined>): boolean {
  const type = headers["content-type"];
  return typeof type === "string" && type.startsWith("text/event-stream");
}
