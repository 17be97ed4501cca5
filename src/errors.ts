/**
 * The one catalogue of errors floodgate produces. Every error leaves as OpenAI's shape,
 * `{"error":{"message","type","code","param"}}`, and those a client should retry carry
 * `retry-after` (seconds), `retry-after-ms` and `x-should-retry`, which the official OpenAI
 * SDKs read to pace their retries.
 */

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "rate_limit_exceeded"
  | "server_error";

export interface OpenAIErrorBody {
  error: { message: string; type: ErrorType; code: string; param: string | null };
}

export class GatewayError extends Error {
  constructor(
    readonly statusCode: number,
    readonly type: ErrorType,
    readonly code: string,
    message: string,
    /** When set, the client is told to come back after this long. */
    readonly retryAfterMs?: number,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = "GatewayError";
  }

  /** The failure underneath (an undici or socket error), for the log; never sent to the client. */
  upstreamCause: unknown;

  /** This error, noting what caused it. */
  causedBy(cause: unknown): this {
    this.upstreamCause = cause;
    return this;
  }

  /** Headers that describe the refusal (the state of the limit that refused), sent with it. */
  private extraHeaders: Record<string, string> | undefined;

  /** This error, with these headers sent beside the retry hints. */
  withHeaders(headers: Record<string, string>): this {
    this.extraHeaders = { ...this.extraHeaders, ...headers };
    return this;
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, code: this.code, param: this.param } };
  }

  headers(): Record<string, string> {
    const retry: Record<string, string> =
      this.retryAfterMs === undefined
        ? { "x-should-retry": "false" }
        : {
            "retry-after": String(Math.max(1, Math.ceil(this.retryAfterMs / 1000))),
            "retry-after-ms": String(Math.max(0, Math.round(this.retryAfterMs))),
            "x-should-retry": "true",
          };
    return this.extraHeaders ? { ...this.extraHeaders, ...retry } : retry;
  }
}

/** Retry hint for transient upstream faults: soon, but not in a tight loop. */
const UPSTREAM_RETRY_MS = 1000;

export const errors = {
  invalidJson: (detail: string) =>
    new GatewayError(
      400,
      "invalid_request_error",
      "invalid_json",
      `The request body is not valid JSON: ${detail}`,
    ),
  invalidRequest: (message: string, param: string | null = null) =>
    new GatewayError(400, "invalid_request_error", "invalid_request", message, undefined, param),
  unsupportedMediaType: (type: string) =>
    new GatewayError(
      415,
      "invalid_request_error",
      "unsupported_media_type",
      `Content-Type ${type} is not supported here: send application/json.`,
    ),
  bodyTooLarge: (limit: number) =>
    new GatewayError(
      413,
      "invalid_request_error",
      "request_too_large",
      `The request body exceeds ${limit} bytes.`,
    ),
  headersTooLarge: () =>
    new GatewayError(
      431,
      "invalid_request_error",
      "request_header_fields_too_large",
      "The request headers are too large.",
    ),
  missingApiKey: () =>
    new GatewayError(
      401,
      "authentication_error",
      "missing_api_key",
      "No API key provided. Send it as 'Authorization: Bearer <key>'.",
    ),
  invalidApiKey: () =>
    new GatewayError(401, "authentication_error", "invalid_api_key", "The API key provided is not valid."),
  adminForbidden: (why: string) => new GatewayError(403, "permission_error", "admin_forbidden", why),
  /** The admin API's own credential: not an API key, and the message must not send anyone looking for one. */
  missingAdminToken: () =>
    new GatewayError(
      401,
      "authentication_error",
      "missing_admin_token",
      "No admin token provided. The admin API takes the configured admin.token, sent as 'Authorization: Bearer <admin.token>'.",
    ),
  invalidAdminToken: () =>
    new GatewayError(
      401,
      "authentication_error",
      "invalid_admin_token",
      "The admin token provided is wrong: the admin API takes the configured admin.token, sent as 'Authorization: Bearer <admin.token>'.",
    ),
  modelNotFound: (model: string) =>
    new GatewayError(
      404,
      "invalid_request_error",
      "model_not_found",
      `The model '${model}' does not exist or you do not have access to it.`,
      undefined,
      "model",
    ),
  rateLimited: (kind: "requests" | "tokens" | "concurrency", detail: string, retryAfterMs: number) =>
    new GatewayError(
      429,
      "rate_limit_exceeded",
      `${kind}_limit_exceeded`,
      `Rate limit reached for ${kind}: ${detail}. Retry after ${Math.ceil(retryAfterMs)} ms.`,
      retryAfterMs,
    ),
  /** The request alone needs more tokens than the budget can ever hold: retrying cannot help. */
  tokensExceedBudget: (needed: number, burst: number, defaultMaxTokens?: number) =>
    new GatewayError(
      429,
      "rate_limit_exceeded",
      "tokens_exceed_budget",
      defaultMaxTokens === undefined
        ? `The request may use ${needed} tokens, more than this key's token budget of ${burst}. Lower max_tokens or shorten the prompt.`
        : `The request may use ${needed} tokens, more than this key's token budget of ${burst}: it did not set max_tokens, so the gateway reserved its default max_tokens (tokens.defaultMaxTokens: ${defaultMaxTokens}) for the answer. Set max_tokens on the request, or ask the operator to raise the budget or lower tokens.defaultMaxTokens.`,
    ),
  /** A tenant's unfinished jobs are at jobs.maxPerTenant: come back when some have run. */
  tooManyJobs: (cap: number, retryAfterMs: number) =>
    new GatewayError(
      429,
      "rate_limit_exceeded",
      "too_many_jobs",
      `You have ${cap} unfinished jobs, the most allowed (jobs.maxPerTenant); retry after ${Math.ceil(retryAfterMs)} ms, when some have run.`,
      retryAfterMs,
    ),
  /** Absent, expired, or another tenant's: all answer alike, so ids tell nothing. */
  jobNotFound: (id: string) =>
    new GatewayError(
      404,
      "invalid_request_error",
      "job_not_found",
      `No job found with id '${id}'.`,
      undefined,
      "id",
    ),
  requestTimeout: () =>
    new GatewayError(
      408,
      "invalid_request_error",
      "request_timeout",
      "The request was not received in time.",
    ),
  backendNotFound: (pool: string, backend: string) =>
    new GatewayError(
      404,
      "not_found_error",
      "backend_not_found",
      `No backend '${backend}' in pool '${pool}'.`,
    ),
  /** The jobs queue (the store) did not answer: a submission, poll or cancel may be tried again. */
  jobsUnavailable: () =>
    new GatewayError(
      503,
      "server_error",
      "jobs_unavailable",
      "The jobs queue cannot be reached right now; retry shortly.",
      UPSTREAM_RETRY_MS,
    ),
  limiterUnavailable: () =>
    new GatewayError(
      503,
      "server_error",
      "rate_limiter_unavailable",
      "Rate limits cannot be checked right now; retry shortly.",
      UPSTREAM_RETRY_MS,
    ),
  routeNotFound: (method: string, path: string) =>
    new GatewayError(404, "not_found_error", "unknown_url", `Unknown request URL: ${method} ${path}.`),
  noBackendAvailable: (pool: string, retryAfterMs: number) =>
    new GatewayError(
      503,
      "server_error",
      "no_backend_available",
      `No backend of pool '${pool}' can take the request now; retry later.`,
      retryAfterMs,
    ),
  /** Admission control refused the request for load (src/admission): come back after retryAfterMs. */
  queueRefused: (
    why: "queue_full" | "deadline_unmeetable" | "evicted" | "timed_out",
    pool: string,
    band: string,
    retryAfterMs: number,
    waitMs = 0,
  ) => {
    const s = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;
    const [code, message]: readonly [string, string] = (
      {
        queue_full: ["queue_full", `The ${band} queue of pool '${pool}' is full`],
        deadline_unmeetable: [
          "queue_deadline_unmeetable",
          `Pool '${pool}' is busy: the expected wait for a slot (${s(waitMs)}) is past this request's deadline`,
        ],
        evicted: [
          "queue_evicted",
          `The request gave its place in pool '${pool}''s queue to one of higher priority`,
        ],
        timed_out: [
          "queue_timeout",
          `No slot of pool '${pool}' freed up within this request's deadline (${s(waitMs)} waited)`,
        ],
      } as const
    )[why];
    return new GatewayError(
      503,
      "server_error",
      code,
      `${message}; retry after ${Math.ceil(retryAfterMs)} ms.`,
      retryAfterMs,
    );
  },
  shuttingDown: () =>
    new GatewayError(
      503,
      "server_error",
      "shutting_down",
      "The gateway is shutting down; retry.",
      UPSTREAM_RETRY_MS,
    ),
  tooManyConnections: (max: number) =>
    new GatewayError(
      503,
      "server_error",
      "too_many_connections",
      `The gateway holds its maximum of ${max} client connections; retry on a new connection.`,
      UPSTREAM_RETRY_MS,
    ),
  upstreamUnavailable: () =>
    new GatewayError(
      502,
      "server_error",
      "upstream_unavailable",
      "The backend could not be reached or closed the connection.",
      UPSTREAM_RETRY_MS,
    ),
  upstreamBadResponse: () =>
    new GatewayError(
      502,
      "server_error",
      "upstream_bad_response",
      "The backend sent an invalid response.",
      UPSTREAM_RETRY_MS,
    ),
  upstreamTimeout: (phase: "connect" | "first_byte" | "idle" | "total") =>
    new GatewayError(
      504,
      "server_error",
      `upstream_${phase}_timeout`,
      `The backend did not answer in time (${phase.replace("_", " ")} timeout).`,
      UPSTREAM_RETRY_MS,
    ),
  // The Files and Batch APIs (src/jobs): objects another tenant made answer as absent ones do.
  fileNotFound: (id: string) =>
    new GatewayError(
      404,
      "invalid_request_error",
      "file_not_found",
      `No such File object: ${id}`,
      undefined,
      "file_id",
    ),
  batchNotFound: (id: string) =>
    new GatewayError(
      404,
      "invalid_request_error",
      "batch_not_found",
      `No such Batch object: ${id}`,
      undefined,
      "batch_id",
    ),
  fileTooLarge: (limit: number) =>
    new GatewayError(
      413,
      "invalid_request_error",
      "file_too_large",
      `The file exceeds ${limit} bytes (batches.maxFileBytes).`,
      undefined,
      "file",
    ),
  tooManyLines: (limit: number) =>
    new GatewayError(
      400,
      "invalid_request_error",
      "too_many_requests_in_file",
      `The file holds more than ${limit} requests (batches.maxLines): split it into several batches.`,
      undefined,
      "file",
    ),
  /** Unfinished batches are the tenant's to end: no wait of ours makes room, so no retry hint. */
  tooManyBatches: (limit: number) =>
    new GatewayError(
      429,
      "rate_limit_exceeded",
      "too_many_batches",
      `This key's tenant has ${limit} unfinished batches (batches.maxPerTenant): wait for one to end, or cancel one.`,
    ),
  /** Batch lines run as jobs: with jobs off nothing would run them. */
  batchesOff: () =>
    new GatewayError(
      400,
      "invalid_request_error",
      "batches_disabled",
      "Batches run as jobs, and jobs are off on this gateway (jobs.enabled: false).",
    ),
  storageUnavailable: () =>
    new GatewayError(
      503,
      "server_error",
      "storage_unavailable",
      "The store that holds files and batches cannot be reached right now; retry shortly.",
      UPSTREAM_RETRY_MS,
    ),
  internal: () =>
    new GatewayError(500, "server_error", "internal_error", "The gateway failed to handle the request."),
};

/** The SSE event that ends a stream which broke after it started: never a silent truncation. */
export function sseErrorEvent(err: GatewayError): string {
  return `event: error\ndata: ${JSON.stringify(err.body())}\n\n`;
}
