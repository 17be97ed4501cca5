/**
 * Sends one client request upstream, retrying on another backend while no byte has reached the
 * client, and shapes the answer for the client. Knows nothing of Fastify: the plugin hands it
 * the parts of the request and sends what it returns.
 *
 * Retried (before the response is committed), with full-jitter backoff inside the total
 * timeout: what the pool's `retry.on` names, in Envoy's words (see src/config/retry-on.ts).
 * By default a failed connect, an attempt that got no answer (a reset, a first-byte or idle
 * timeout), any 5xx (the gateway's own 502 for an answer it will not pass on included) and 429,
 * an overloaded inference server's "busy". The same conditions walk the fallback chain
 * (src/proxy/fallback.ts). A backend's Retry-After on a retried status keeps new work away from
 * it until then. Never retried: anything after the first byte went to the client, and bodies
 * that cannot be replayed (streamed uploads).
 *
 * The retry budget applies to retries after overload signals (a retried status, a timeout, a
 * bad answer). A refused connect or a connection reset before any answer is exempt: no backend
 * did the work, it says "this backend is gone", not "the fleet is busy", and a dying backend
 * fails 1/N of the pool's in-flight requests at once, more than a 20% budget covers. Those
 * retries are bounded by `attempts`, and outlier detection ejects the backend at its first
 * refused connect.
 *
 * Non-streamed answers on the OpenAI routes are read whole before anything is sent (they are
 * small, and the backend sends them at the end of generation anyway), up to `response.maxSize`:
 * a backend failing mid-body, an answer too large, or a 2xx that is not a complete JSON object
 * (an HTML error page, a body cut short) is then retried or answered with a proper 502/504,
 * never passed on as a success. Event streams are committed at the backend's first event
 * (configurable: at its headers), so a backend that fails before its first token is retried
 * too; after that they are relayed as they arrive, through a StreamTap that checks they end
 * with `[DONE]`; pass-through bodies are relayed untouched.
 *
 * On the OpenAI routes the backend is asked for `Accept-Encoding: identity`: the gateway parses
 * those bodies, and must never parse a compressed one. An encoded answer there anyway is a bad
 * response.
 */
import type { IncomingHttpHeaders } from "node:http";
import type { Readable } from "node:stream";
import type { Dispatcher } from "undici";
import type { PoolConfig } from "../config/index.js";
import type { RetryWhen } from "../config/retry-on.js";
import { errors, type GatewayError } from "../errors.js";
import type { Backend } from "../upstream/backend.js";
import { BreakerOpenError, ClientGone, FailedAnswer } from "../upstream/breaker.js";
import type { AttemptOutcome } from "../upstream/outlier-detector.js";
import type { UpstreamPool } from "../upstream/pool.js";
import { backoffMs } from "../upstream/retry-budget.js";
import type { Exchange } from "./exchange.js";
import { downstreamResponseHeaders, upstreamRequestHeaders } from "./headers.js";
import { ResponseRelay } from "./relay.js";
import { StreamTap } from "./stream-tap.js";
import { UpstreamCall } from "./upstream-call.js";
import { fromUpstreamError } from "./upstream-errors.js";

export interface ForwardInput {
  pool: UpstreamPool;
  /**
   * The pool's config when the request started: a reload may replace pool.config while the
   * request runs, and the request finishes on the settings it started with. Default: pool.config.
   */
  config?: PoolConfig;
  method: string;
  /** Path and query relative to the backend's base path; always starts with "/". */
  path: string;
  headers: IncomingHttpHeaders;
  body: Buffer | Readable | null;
  /** A streamed body's declared length (Node's parser holds the client to it): sent as is, not chunked. */
  bodyLength?: number;
  requestId: string;
  clientIp: string;
  stripAuthorization: boolean;
  /**
   * Relay any response as it arrives, untouched (pass-through routes); else (the OpenAI routes)
   * read it whole unless SSE, and check what the backend sent.
   */
  streamAny: boolean;
  /** For an event stream's tap: drop the usage-only chunk, record for the cache. */
  tap?: { strip: boolean; recordLimit?: number };
  /** How long a client may read nothing before it is cut off. */
  sendTimeout: number;
  /**
   * Runs once the first slot is held, before the first attempt (the tenant's concurrency lease
   * is taken at dispatch, not while the request waits); a throw gives the slot back. It may set
   * `body` and `json`: they are read after it (the micro-batch stage builds its body then).
   */
  onDispatch?: () => Promise<void>;
  /** The JSON body, for a backend that takes the band as the engine's priority field. */
  json?: Record<string, unknown>;
  /** The request's band (0 = interactive), sent as vLLM's `priority` where a backend opts in. */
  band?: number;
  /** A relayed stream ended; `failure` is set when it ended with an error event. */
  onStreamEnd?(failure: GatewayError | undefined): void;
}

export type ForwardResult =
  | {
      kind: "buffered";
      status: number;
      headers: Record<string, string | string[]>;
      body: Buffer;
      /** A 2xx on an OpenAI route: the body parsed (it was checked to be a JSON object). */
      json?: Record<string, unknown>;
    }
  | {
      kind: "stream";
      status: number;
      headers: Record<string, string | string[]>;
      body: Readable;
      /** An OpenAI event stream's tap: after the end, its usage, recording and completeness. */
      tap?: StreamTap;
    };

export interface ForwardHooks {
  /** The backend answered with headers after this many seconds. */
  onFirstByte?(pool: UpstreamPool, backend: Backend, seconds: number): void;
}

const CONNECT_ERRORS = new Set([
  "ECONNREFUSED",
  "UND_ERR_CONNECT_TIMEOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
]);
/** Failures that mean "the backend is gone", not "the backend is busy": exempt from the budget. */
const GONE_ERRORS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "UND_ERR_SOCKET",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

/** Why an attempt failed in a way another backend might not. */
interface RetryableFailure {
  reason: string;
  /** The backend is gone rather than busy: the retry needs no budget. */
  gone?: boolean;
  /** `retry.on` names it: else it goes to the client as it is. */
  retriable: boolean;
  /** What the client gets if no retry follows. */
  answer: { error: GatewayError } | { result: ForwardResult };
}

export async function forward(
  input: ForwardInput,
  exchange: Exchange,
  hooks: ForwardHooks,
): Promise<ForwardResult> {
  let streaming = false;
  try {
    const result = await tryBackends(input, exchange, hooks);
    streaming = result.kind === "stream";
    return result;
  } finally {
    // The one place an exchange ends here: a relayed stream holds its slot until it ends (the
    // relay settles it then); any other ending is the end of the exchange.
    if (!streaming) exchange.settle();
  }
}

async function tryBackends(
  input: ForwardInput,
  exchange: Exchange,
  hooks: ForwardHooks,
): Promise<ForwardResult> {
  const { pool } = input;
  const config = input.config ?? pool.config;
  const policy = config.retry;
  const replayable = input.body === null || Buffer.isBuffer(input.body);
  // Backends already tried, made at the first retry (most requests never need it).
  let tried: Set<Backend> | undefined;
  exchange.joinBudget(pool.budget);

  for (let retry = 0; ; retry++) {
    const slot = exchange.acquire(pool, tried);
    const backend = slot instanceof Promise ? await waited(slot, exchange) : slot;
    if (retry === 0 && input.onDispatch) {
      try {
        await input.onDispatch();
      } catch (err) {
        exchange.release();
        throw err;
      }
    }
    const outcome = await attempt(input, backend, exchange, hooks);
    if (!("reason" in outcome)) return outcome;

    const answer = outcome.answer;
    const canRetry =
      outcome.retriable &&
      replayable &&
      retry < policy.attempts &&
      exchange.abortReason === undefined &&
      (outcome.gone === true || takeBudget());
    if (!canRetry) {
      if ("error" in answer) throw answer.error;
      return answer.result;
    }
    if (tried) tried.add(backend);
    else tried = new Set([backend]);
    pool.noteRetry(outcome.reason);
    const delay = backoffMs(retry, policy.backoffBase, policy.backoffMax);
    if (delay >= exchange.remainingMs()) {
      if ("error" in answer) throw answer.error;
      return answer.result;
    }
    exchange.release();
    await exchange.pause(delay);
    if (exchange.abortReason !== undefined) {
      throw exchange.abortReason === "total" ? errors.upstreamTimeout("total") : errors.upstreamUnavailable();
    }
  }

  function takeBudget(): boolean {
    if (exchange.takeRetry()) return true;
    pool.noteBudgetExhausted();
    return false;
  }
}

/** The slot a queued request waited for; a wait the client or the total timeout ended says so. */
async function waited(slot: Promise<Backend>, exchange: Exchange): Promise<Backend> {
  try {
    return await slot;
  } catch (err) {
    if (exchange.abortReason === "total") throw errors.upstreamTimeout("total");
    if (exchange.abortReason === "client") throw errors.upstreamUnavailable().causedBy(err);
    throw err;
  }
}

/** One try on one backend: a result to send, or a failure another backend might not have. */
async function attempt(
  input: ForwardInput,
  backend: Backend,
  exchange: Exchange,
  hooks: ForwardHooks,
): Promise<ForwardResult | RetryableFailure> {
  const { pool } = input;
  const config = input.config ?? pool.config;
  const requestBody = engineBody(input, backend) ?? input.body;
  const headers = upstreamRequestHeaders(input.headers, {
    requestId: input.requestId,
    clientIp: input.clientIp,
    stripAuthorization: input.stripAuthorization,
    extra: backend.extraHeaders,
    contentLength: Buffer.isBuffer(requestBody) ? requestBody.length : input.bodyLength,
    identity: !input.streamAny,
  });
  const sentAt = performance.now();
  const call = new UpstreamCall();
  exchange.track(call);
  const options: Dispatcher.DispatchOptions = {
    path: backend.basePath + input.path,
    method: input.method as Dispatcher.HttpMethod,
    headers,
    body: requestBody,
  };
  try {
    // The breaker sees connect and first byte only: the call resolves at the response headers.
    await backend.breaker.call(async () => {
      try {
        await call.start(backend.dispatcher, options, config.timeouts.firstByte);
      } catch (err) {
        throw exchange.abortReason === "client" ? new ClientGone(err) : err;
      }
      if (call.statusCode >= 500 || call.statusCode === 429) throw new FailedAnswer();
    });
  } catch (err) {
    if (err instanceof FailedAnswer) {
      // The failure status is the answer: read on below.
    } else if (err instanceof BreakerOpenError) {
      // Lost a race for the half-open probe: another backend, at no cost to the budget.
      return {
        reason: "breaker_open",
        gone: true,
        retriable: true,
        answer: { error: errors.noBackendAvailable(pool.name, pool.retryAfterMs()) },
      };
    } else {
      return failed(err instanceof ClientGone ? err.original : err);
    }
  }
  exchange.firstByteAt = performance.now();
  hooks.onFirstByte?.(pool, backend, (exchange.firstByteAt - sentAt) / 1000);

  const status = call.statusCode;
  const retried = config.retry.when.statuses.has(status);
  if (retried) {
    const wait = retryAfterMs(call.headers);
    if (wait !== undefined) pool.noteRetryAfter(backend, wait);
  }
  pool.record(backend, status >= 500 ? "http_5xx" : status >= 400 ? "http_4xx" : "success");

  const sse = isEventStream(call.headers);
  if (!input.streamAny && isEncoded(call.headers)) {
    call.abort(new Error("encoded answer"));
    return failed(
      errors
        .upstreamBadResponse()
        .causedBy(new Error(`the backend sent content-encoding ${call.headers["content-encoding"]}`)),
    );
  }
  if (status < 300 && (input.streamAny || sse)) {
    // Stream commit point: hold the response until the first event, so a backend that fails
    // before its first token is retried instead of breaking the client's stream.
    const awaitsCommit = sse && config.retry.streamCommit === "first_event" && !input.streamAny;
    const response = config.response;
    const tap =
      sse && !input.streamAny
        ? new StreamTap({
            strip: input.tap?.strip,
            recordLimit: input.tap?.recordLimit,
            maxEventSize: response.maxEventSize,
          })
        : undefined;
    const relay = new ResponseRelay(
      call,
      exchange,
      sse,
      (r) => {
        if (r.failure && exchange.abortReason !== "client") pool.record(backend, "gateway_failure");
        input.onStreamEnd?.(r.failure);
      },
      awaitsCommit,
      input.sendTimeout,
      tap,
      response.requireDone,
    );
    if (awaitsCommit) {
      try {
        await relay.started;
      } catch (err) {
        relay.discard();
        return failed(err);
      }
    }
    // A pass-through body keeps its length: a cut-off copy is then detectable by the client.
    return {
      kind: "stream",
      status,
      headers: downstreamResponseHeaders(call.headers, !sse),
      body: relay,
      tap,
    };
  }

  const maxSize = config.response.maxSize;
  let body: Buffer;
  try {
    body = call.completeBody() ?? (await call.body(maxSize));
  } catch (err) {
    return failed(err);
  }
  let json: Record<string, unknown> | undefined;
  if (!input.streamAny && status < 300) {
    // An OpenAI answer reported as a success must be one: a complete JSON object.
    json = body.length <= maxSize ? parseObject(body) : undefined;
    if (json === undefined) {
      return failed(
        errors
          .upstreamBadResponse()
          .causedBy(new Error(`a ${status} answer that is not a JSON object of at most ${maxSize} bytes`)),
      );
    }
  }
  exchange.bytesOut = body.length;
  const result: ForwardResult = {
    kind: "buffered",
    status,
    headers: downstreamResponseHeaders(call.headers, false),
    body,
    json,
  };
  if (retried) return { reason: `status_${status}`, retriable: true, answer: { result } };
  return result;

  function failed(err: unknown): RetryableFailure {
    const error = fromUpstreamError(err, exchange.abortReason);
    if (exchange.abortReason !== undefined || error.statusCode < 500) {
      // The client left, the total timeout passed, or the client's own body failed (too
      // large): nothing to retry, and not the backend's fault.
      return { reason: "aborted", retriable: false, answer: { error } };
    }
    const kind: AttemptOutcome = CONNECT_ERRORS.has(errorCode(err)) ? "connect_failure" : "gateway_failure";
    pool.record(backend, kind);
    return {
      reason: kind,
      gone: GONE_ERRORS.has(errorCode(err)),
      retriable: retriesFailure(config.retry.when, error) === true,
      answer: { error },
    };
  }
}

/**
 * Whether `retry.on` names the failed attempt this error reports; undefined when it reports
 * none (the pool refused: no backend, its queue), which retry.on does not govern.
 */
export function retriesFailure(when: RetryWhen, error: GatewayError): boolean | undefined {
  switch (error.code) {
    case "upstream_connect_timeout":
      return when.connectFailure;
    case "upstream_unavailable":
      return CONNECT_ERRORS.has(errorCode(error.upstreamCause)) ? when.connectFailure : when.reset;
    case "upstream_first_byte_timeout":
    case "upstream_idle_timeout":
      return when.reset;
    case "upstream_bad_response":
      return when.badResponse;
    default:
      return undefined;
  }
}

/**
 * vLLM serves a lower `priority` first when started with `--scheduling-policy priority`, and
 * refuses the field otherwise. A backend that opts in (`enginePriority`) gets the request's band
 * there; for any other vLLM backend a client's own `priority` is dropped, so that no tenant can
 * promote itself inside the engine. Undefined: the body goes as it is.
 */
function engineBody(input: ForwardInput, backend: Backend): Buffer | undefined {
  const json = input.json;
  if (backend.engine !== "vllm" || json === undefined) return undefined;
  if (backend.config.enginePriority)
    return Buffer.from(JSON.stringify({ ...json, priority: input.band ?? 0 }));
  if (!("priority" in json)) return undefined;
  const { priority: _dropped, ...rest } = json;
  return Buffer.from(JSON.stringify(rest));
}

function errorCode(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : "";
}

/** Retry-After in seconds or as an HTTP date, or OpenAI-style retry-after-ms. */
export function retryAfterMs(headers: Record<string, string | string[] | undefined>): number | undefined {
  const ms = headers["retry-after-ms"];
  if (typeof ms === "string" && Number.isFinite(Number(ms)) && Number(ms) >= 0) return Number(ms);
  const value = headers["retry-after"];
  if (typeof value !== "string") return undefined;
  if (/^\d+(\.\d+)?$/.test(value.trim())) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

function parseObject(body: Buffer): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(body.toString("utf8"));
    return value !== null && typeof value === "object" && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

function isEncoded(headers: Record<string, string | string[] | undefined>): boolean {
  const encoding = headers["content-encoding"];
  return encoding !== undefined && encoding !== "identity" && encoding !== "";
}

function isEventStream(headers: Record<string, string | string[] | undefined>): boolean {
  const type = headers["content-type"];
  return typeof type === "string" && type.startsWith("text/event-stream");
}
