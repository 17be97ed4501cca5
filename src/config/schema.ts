/**
 * The config schema: one TypeBox definition gives Ajv its JSON Schema (validation, defaults,
 * `additionalProperties: false` everywhere) and TypeScript its types. Durations and sizes are
 * strings in YAML and numbers (ms, bytes) in the decoded config, through TypeBox transforms.
 */
import { type StaticDecode, type TSchema, Type } from "@sinclair/typebox";
import { compileRetryOn, type RetryCondition, RetryConditions } from "./retry-on.js";
import { DURATION_PATTERN, parseDuration, parseSize, SIZE_PATTERN } from "./units.js";

const DURATION_HINT = "a duration such as 250ms, 5s, 10m or 1h";
const SIZE_HINT = "a size such as 512kb or 8mb";
const NAME_HINT = "letters, digits, '.', '_' or '-'";

function Duration(defaultValue: string | undefined, description: string) {
  return Type.Transform(
    Type.String({
      pattern: DURATION_PATTERN,
      ...(defaultValue === undefined ? {} : { default: defaultValue }),
      description,
      "x-hint": DURATION_HINT,
    }),
  )
    .Decode(parseDuration)
    .Encode((ms: number) => `${ms}ms`);
}

function Size(defaultValue: string, description: string) {
  return Type.Transform(
    Type.String({ pattern: SIZE_PATTERN, default: defaultValue, description, "x-hint": SIZE_HINT }),
  )
    .Decode(parseSize)
    .Encode((bytes: number) => `${bytes}b`);
}

/** A string from a fixed list, typed as the union of its values. */
function OneOf<const T extends readonly string[]>(values: T, defaultValue: T[number], description?: string) {
  return Type.Unsafe<T[number]>({
    type: "string",
    enum: [...values],
    default: defaultValue,
    ...(description === undefined ? {} : { description }),
  });
}

/** An object whose every field has a default, so the whole block may be left out. */
function Section<T extends Parameters<typeof Type.Object>[0]>(properties: T, description: string) {
  return Type.Object(properties, { additionalProperties: false, default: {}, description });
}

const Name = Type.String({ pattern: "^[A-Za-z0-9_.-]{1,64}$", "x-hint": NAME_HINT });

export const Engines = ["vllm", "sglang", "tgi", "llamacpp", "ollama", "openai"] as const;
export const Balancers = ["least_request", "round_robin", "random"] as const;
export const Priorities = ["interactive", "batch", "background"] as const;
export const LogLevels = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

const Listen = Section(
  {
    host: Type.String({ default: "0.0.0.0", description: "address to bind" }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
  },
  "where clients connect",
);

const Server = Section(
  {
    bodyLimit: Size("4mb", "largest request body accepted (413 beyond)"),
    maxHeaderSize: Size("16kb", "largest request head accepted (431 beyond)"),
    requestTimeout: Duration("30s", "time a client has to send its whole request"),
    headersTimeout: Duration("10s", "time a client has to send its request head"),
    keepAliveTimeout: Duration("75s", "idle time before a client connection is closed"),
    shutdownGrace: Duration("30s", "how long in-flight requests may run after SIGTERM"),
    sendTimeout: Duration(
      "30s",
      "a client that takes nothing of its answer for this long is cut off (it holds memory and a slot)",
    ),
    maxConnections: Type.Integer({
      minimum: 1,
      default: 10000,
      description: "client connections at once; a request on a connection past it gets 503 and a close",
    }),
    maxJsonDepth: Type.Integer({
      minimum: 1,
      maximum: 1000,
      default: 64,
      description: "deepest nesting of arrays and objects in a JSON body (400 beyond)",
    }),
    trustProxy: Type.Array(Type.String(), {
      default: [],
      description: "addresses or CIDRs of proxies whose X-Forwarded-For is believed",
    }),
  },
  "the client-facing HTTP server",
);

const Admin = Section(
  {
    enabled: Type.Boolean({ default: true }),
    host: Type.String({ default: "127.0.0.1" }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 9090 }),
    token: Type.Optional(
      Type.String({
        minLength: 16,
        description: "bearer token for /admin/*",
        "x-hint":
          "16 characters or more; 32 or more on an address other than loopback (openssl rand -hex 32)",
      }),
    ),
  },
  "the admin listener: /metrics and /admin/*",
);

const Store = Section(
  {
    type: OneOf(["memory", "redis"], "memory"),
    url: Type.Optional(
      Type.String({
        pattern: "^rediss?://",
        "x-hint": "a redis:// or rediss:// URL",
        description: "one server",
      }),
    ),
    nodes: Type.Optional(
      Type.Array(Type.String({ pattern: "^rediss?://" }), {
        minItems: 1,
        description: "Redis Cluster seed nodes",
      }),
    ),
    sentinels: Type.Optional(
      Type.Array(Type.String({ pattern: "^[^:/]+:[0-9]+$", "x-hint": "host:port" }), {
        minItems: 1,
        description: "Redis Sentinel addresses",
      }),
    ),
    sentinelName: Type.String({ default: "mymaster", description: "the master's name in Sentinel" }),
    password: Type.Optional(Type.String({ description: "from ${ENV}" })),
    keyPrefix: Type.String({ default: "floodgate:" }),
    commandTimeout: Duration("50ms", "a command slower than this failed: a dead Redis never hangs a request"),
    connectTimeout: Duration("1s", "connecting to Redis"),
    replicas: Type.Integer({
      minimum: 1,
      default: 1,
      description: "gateway replicas sharing the store: local fallback limits are divided by it",
    }),
    breaker: Section(
      {
        failures: Type.Integer({
          minimum: 1,
          default: 3,
          description: "errors in a row that stop calling Redis",
        }),
        resetTimeout: Duration("2s", "then one probe call; success resumes Redis-backed limiting"),
      },
      "skip Redis while it is down",
    ),
    slots: Section(
      {
        shared: Type.Boolean({
          default: true,
          description:
            "type redis: a backend's maxConcurrency holds for all replicas together (backends without one are not shared: their cap is each replica's maxConnections)",
        }),
        sync: Duration("100ms", "how often a replica trades slots with the others (one Redis call)"),
        lease: Duration("3s", "a replica that stops syncing (crashed) loses its slots after this"),
      },
      "backend slots shared by the replicas (src/upstream/fleet.ts)",
    ),
  },
  "where state shared between replicas lives",
);

const Log = Section(
  {
    level: OneOf(LogLevels, "info"),
    accessLog: Type.Boolean({ default: true, description: "one line per request" }),
  },
  "logging",
);

const ApiKey = Type.Object(
  {
    key: Type.Optional(Type.String({ minLength: 8, description: "the key itself, from ${ENV}" })),
    sha256: Type.Optional(Type.String({ pattern: "^[0-9a-f]{64}$", "x-hint": "64 lowercase hex digits" })),
    tenant: Name,
  },
  { additionalProperties: false },
);

const Auth = Type.Object(
  { keys: Type.Array(ApiKey, { minItems: 1 }) },
  { additionalProperties: false, description: "API keys; leave out for an open gateway" },
);

const StoreErrorPolicy = OneOf(["open", "closed", "local"], "local");

const RATE_HINT = "a number above 0: how many in each `per`, such as 10";

/** A token bucket: `rate` per `per` on average, `burst` at once (default: rate). */
const RateSpec = Type.Object(
  {
    rate: Type.Number({ exclusiveMinimum: 0, "x-hint": RATE_HINT }),
    // No default here: a rate sits in a union (one limit or a list), where Ajv cannot fill one.
    per: Duration(undefined, "the period `rate` is counted over, e.g. 1s or 1m"),
    burst: Type.Optional(Type.Number({ exclusiveMinimum: 0, description: "bucket size; default rate" })),
  },
  { additionalProperties: false },
);

const TenantLimits = Type.Object(
  {
    requests: Type.Optional(
      Type.Union([RateSpec, Type.Array(RateSpec, { minItems: 1 })], {
        description: "one limit or several (e.g. per second with a burst, and per minute)",
        "x-hint": "a limit such as { rate: 10, per: 1s }, or a list of them",
      }),
    ),
    tokens: Type.Optional(RateSpec),
    concurrency: Type.Optional(
      Type.Integer({ minimum: 1, description: "requests in flight across replicas" }),
    ),
    onStoreError: StoreErrorPolicy,
  },
  { additionalProperties: false, default: {} },
);

const Tenant = Type.Object(
  {
    priority: OneOf(Priorities, "interactive"),
    weight: Type.Number({
      minimum: 0.01,
      maximum: 1000,
      default: 1,
      description: "share of its band's slots against other tenants while both wait (fair queuing)",
    }),
    fallback: Type.Boolean({ default: true, description: "may be served by a fallback pool" }),
    models: Type.Optional(
      Type.Array(Type.String({ minLength: 1 }), {
        minItems: 1,
        uniqueItems: true,
        description: "the models the tenant may use (`*` matches any run of characters); absent: all",
        "x-hint": "a list of model names or patterns such as llama-3.1-*; leave models out for all",
      }),
    ),
    limits: TenantLimits,
  },
  { additionalProperties: false, default: {} },
);

const RateLimit = Type.Object(
  {
    name: Name,
    by: OneOf(["ip", "key", "tenant", "model", "global"], "ip"),
    rate: Type.Number({ exclusiveMinimum: 0, "x-hint": RATE_HINT }),
    per: Duration("1s", "the period `rate` is counted over"),
    burst: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
    models: Type.Optional(
      Type.Array(Type.String({ minLength: 1 }), { description: "only requests for these models" }),
    ),
    allowList: Type.Array(Type.String(), {
      default: [],
      description: "keys (IPs, tenant ids, models) never limited",
    }),
    onStoreError: StoreErrorPolicy,
  },
  { additionalProperties: false },
);

const Tokens = Section(
  {
    defaultMaxTokens: Type.Integer({
      minimum: 1,
      default: 1024,
      description: "completion tokens reserved when a request sets no max_tokens",
    }),
    leaseTtl: Duration("30s", "a concurrency lease lapses this long after its replica stops renewing it"),
  },
  "LLM token accounting",
);

const Jobs = Section(
  {
    enabled: Type.Boolean({
      default: true,
      description:
        "honour Prefer: respond-async on the OpenAI routes (202 and a job to poll); off: served synchronously",
    }),
    band: OneOf(
      Priorities,
      "batch",
      "the admission band a job runs in (the tenant's own band when that is lower)",
    ),
    maxPerTenant: Type.Integer({
      minimum: 1,
      default: 1000,
      description:
        "a tenant's unfinished jobs (queued or running) at most; a submission past it gets 429 too_many_jobs",
    }),
    ttl: Duration("24h", "a finished job's answer is kept this long, then the job is gone (404)"),
    lease: Duration(
      "30s",
      "a replica that stops renewing a running job (crashed) loses it after this; another runs it again",
    ),
    concurrency: Type.Integer({
      minimum: 1,
      default: 64,
      description:
        "jobs this replica runs at once (those past the free slots wait in the admission queue at their band: keep it above the slots jobs should fill)",
    }),
    pollInterval: Duration(
      "250ms",
      "how often a replica with room looks for due jobs while it finds some, or while it cannot hear wakes (memory store, Redis subscription down); with Redis, a replica that found none looks again after max(pollInterval, min(8 x pollInterval, lease / 3)), and a job submitted or given back on any replica wakes it at once (at most once per pollInterval)",
    ),
  },
  "deferred work: async requests (Prefer: respond-async) run from the store's job queue",
);

const Timeouts = Section(
  {
    connect: Duration("2s", "TCP (and TLS) connect to a backend"),
    firstByte: Duration("60s", "request sent to response headers"),
    idle: Duration("30s", "longest silence between two chunks of a response"),
    total: Duration("10m", "whole exchange, streams included"),
  },
  "backend timeouts",
);

const Backend = Type.Object(
  {
    url: Type.String({ pattern: "^https?://", "x-hint": "an http:// or https:// URL" }),
    name: Type.Optional(Name),
    weight: Type.Number({ minimum: 0.01, maximum: 1000, default: 1 }),
    maxConcurrency: Type.Optional(Type.Integer({ minimum: 1, description: "batch slots: requests at once" })),
    maxConnections: Type.Integer({ minimum: 1, default: 128, description: "connection pool cap" }),
    engine: OneOf(Engines, "openai"),
    backup: Type.Boolean({ default: false, description: "used only when no primary can serve" }),
    headers: Type.Record(Type.String(), Type.String(), {
      default: {},
      description: "added to every request to this backend",
    }),
    discovery: OneOf(["none", "dns", "srv"], "none"),
    enginePriority: Type.Boolean({
      default: false,
      description: "engine vllm: send the band as vLLM's `priority` (needs --scheduling-policy priority)",
    }),
  },
  { additionalProperties: false },
);

const HealthCheck = Section(
  {
    enabled: Type.Boolean({ default: true }),
    path: Type.Optional(Type.String({ pattern: "^/", "x-hint": "a path such as /health" })),
    interval: Duration("5s", "time between two probes of one backend (±10% jitter)"),
    timeout: Duration("1s", "a probe slower than this failed"),
    unhealthyThreshold: Type.Integer({
      minimum: 1,
      default: 3,
      description: "failed probes in a row to mark unhealthy",
    }),
    healthyThreshold: Type.Integer({
      minimum: 1,
      default: 2,
      description: "passed probes in a row to mark healthy",
    }),
    checkModels: Type.Boolean({ default: true, description: "also require the pool's model in /v1/models" }),
  },
  "active health checks",
);

const OutlierDetection = Section(
  {
    enabled: Type.Boolean({ default: true }),
    consecutive5xx: Type.Integer({ minimum: 1, default: 5 }),
    consecutiveGatewayFailure: Type.Integer({ minimum: 1, default: 5, description: "resets and timeouts" }),
    consecutiveConnectFailure: Type.Integer({
      minimum: 1,
      default: 1,
      description: "refused or timed-out connects",
    }),
    baseEjectionTime: Duration("30s", "ejection lasts this × the number of times ejected"),
    maxEjectionTime: Duration("5m", "cap on one ejection"),
    maxEjectionPercent: Type.Integer({ minimum: 0, maximum: 100, default: 50 }),
    unejectOnHealthCheck: Type.Boolean({
      default: true,
      description: "a passed active health check ends an ejection for connect or gateway failures",
    }),
  },
  "passive outlier detection",
);

const SlowStart = Section(
  {
    window: Duration("30s", "ramp time of a (re)joining backend; 0s turns it off"),
    aggression: Type.Number({ exclusiveMinimum: 0, default: 1 }),
    minWeightPercent: Type.Number({ minimum: 0, maximum: 100, default: 10 }),
  },
  "slow start",
);

const LoadSignals = Section(
  {
    enabled: Type.Boolean({ default: true }),
    interval: Duration("2s", "time between two scrapes of a backend's /metrics"),
    timeout: Duration("1s", "a scrape slower than this failed"),
    staleAfter: Duration("10s", "a reading older than this is unknown"),
  },
  "engine load signals",
);

const Retry = Type.Transform(
  Section(
    {
      attempts: Type.Integer({
        minimum: 0,
        maximum: 10,
        default: 2,
        description: "retries after the first try",
      }),
      on: Type.Array(
        Type.Unsafe<RetryCondition>({
          type: "string",
          enum: [...RetryConditions],
          "x-hint": "status codes go in retry.statusCodes, with retriable-status-codes in retry.on",
        }),
        {
          default: ["connect-failure", "reset", "5xx", "retriable-status-codes"],
          description: "what is retried, and walked past to a fallback pool (Envoy's retry_on)",
        },
      ),
      statusCodes: Type.Array(
        Type.Integer({ minimum: 400, maximum: 599, "x-hint": "an HTTP error status, 400 to 599" }),
        {
          default: [429],
          description: "the statuses retriable-status-codes retries",
        },
      ),
      budgetPercent: Type.Number({ minimum: 0, maximum: 100, default: 20 }),
      minRetryConcurrency: Type.Integer({ minimum: 0, default: 3 }),
      backoffBase: Duration("25ms", "full-jitter exponential backoff base"),
      backoffMax: Duration("250ms", "cap on one backoff"),
      streamCommit: OneOf(["first_event", "headers"], "first_event"),
    },
    "retries",
  ),
)
  // `on` and `statusCodes` compiled once here, for the request path.
  .Decode((retry) => ({ ...retry, when: compileRetryOn(retry.on, retry.statusCodes) }))
  .Encode(({ when: _when, ...retry }) => retry);

const CircuitBreaker = Section(
  {
    enabled: Type.Boolean({ default: true }),
    errorThresholdPercentage: Type.Number({ minimum: 0, maximum: 100, default: 50 }),
    volumeThreshold: Type.Integer({
      minimum: 1,
      default: 20,
      description: "calls in the window before it may open",
    }),
    resetTimeout: Duration("10s", "open time before one probe is let through"),
    rollingWindow: Duration("10s", "window the error rate is measured over"),
  },
  "a circuit breaker per backend",
);

const Response = Section(
  {
    maxSize: Size("16mb", "a larger non-streamed answer is a 502 upstream_bad_response (retried)"),
    maxEventSize: Size("1mb", "an SSE event longer than this passes through unparsed"),
    requireDone: Type.Boolean({
      default: true,
      description: "an event stream must end with data: [DONE]; else the client gets an error event",
    }),
  },
  "what the gateway accepts from a backend on the OpenAI routes",
);

const Fallback = Type.Union(
  [
    Name,
    Type.Object(
      {
        pool: Name,
        model: Type.Optional(
          Type.String({ minLength: 1, description: "model to ask the fallback pool for" }),
        ),
      },
      { additionalProperties: false },
    ),
  ],
  { "x-hint": "a pool's name, or { pool: NAME, model: MODEL }" },
);

const Cache = Section(
  {
    enabled: Type.Boolean({ default: false }),
    ttl: Duration("10m", "how long an answer is served fresh"),
    jitterPercent: Type.Number({
      minimum: 0,
      maximum: 100,
      default: 10,
      description: "up to this % more TTL, at random, so entries written together expire apart",
    }),
    rule: OneOf(["deterministic", "always"], "deterministic"),
    scope: OneOf(["tenant", "shared"], "tenant"),
    staleWhileRevalidate: Duration(
      "0s",
      "past the TTL, serve the old answer and refresh it in the background",
    ),
    staleIfError: Duration("0s", "past the TTL, serve the old answer when no backend can"),
    maxEntrySize: Size("1mb", "a larger answer is not stored"),
    replay: OneOf(["immediate", "paced"], "immediate"),
    lockTimeout: Duration("30s", "how long identical requests on other replicas wait for the first"),
  },
  "response cache",
);

function Band(maxWait: string, maxQueue: number, description: string) {
  return Section(
    {
      maxWait: Duration(maxWait, "longest wait for a slot; a request that cannot get one by then is refused"),
      maxQueue: Type.Integer({
        minimum: 0,
        default: maxQueue,
        description: "requests of this band waiting at most",
      }),
    },
    description,
  );
}

const Admission = Section(
  {
    enabled: Type.Boolean({
      default: true,
      description: "queue for a slot instead of a 503 when backends are full",
    }),
    maxQueue: Type.Integer({
      minimum: 0,
      default: 10000,
      description: "requests waiting in the pool, all bands; when full, a higher band evicts the lowest",
    }),
    bands: Section(
      {
        interactive: Band("1500ms", 1000, "chat and other people waiting for a first token"),
        batch: Band("30s", 5000, "work a program waits for"),
        background: Band("5m", 10000, "work nobody waits for"),
      },
      "per priority band",
    ),
    reserve: Type.Number({
      minimum: 0,
      maximum: 100,
      default: 0,
      description: "% of the pool's slots only the interactive band may take",
    }),
    defaultPriority: OneOf(Priorities, "interactive"),
    overflow: OneOf(["refuse", "fallback"], "refuse"),
  },
  "admission control: a queue for the pool's slots",
);

const Affinity = Section(
  {
    by: OneOf(["off", "prefix", "header"], "off"),
    prefixChars: Type.Integer({
      minimum: 1,
      maximum: 1_000_000,
      default: 2048,
      description: "by prefix: the leading characters of the prompt that make the key",
    }),
    header: Type.Transform(
      Type.String({
        pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        default: "x-session-id",
        description:
          "by header: the header holding the session key (else the body's prompt_cache_key, else user)",
        "x-hint": "a header name such as x-session-id",
      }),
    )
      .Decode((name) => name.toLowerCase())
      .Encode((name) => name),
    loadFactor: Type.Number({
      minimum: 1,
      default: 1.25,
      description:
        "a backend takes a key while its load is below loadFactor x the pool's average per unit of weight",
    }),
    successors: Type.Integer({
      minimum: 0,
      maximum: 64,
      default: 1,
      description:
        "a queued request waits for a slot on its home backend or this many next ones on the ring (with cacheTokens: on the backends holding its longest prefix or this many more holding shorter ones)",
    }),
    grace: Duration(
      "100ms",
      "how long a queued request whose turn came waits for those backends before taking any",
    ),
    cacheTokens: Type.Integer({
      minimum: 0,
      maximum: 1_000_000_000,
      default: 0,
      description:
        "by prefix: each backend's prefix cache in tokens, modelled by the gateway to send a prompt where its prefix is; 0: the ring alone",
    }),
    prefillTokensPerSecond: Type.Number({
      minimum: 0,
      default: 0,
      description:
        "by prefix, with cacheTokens: the engines' prefill speed; a request waits for the backends holding its prefix as long as recomputing it would take (instead of grace); 0: grace",
    }),
    blockChars: Type.Integer({
      minimum: 16,
      maximum: 65_536,
      default: 256,
      description: "by prefix, with cacheTokens: characters per block of the gateway's cache model",
    }),
  },
  "prefix affinity: requests that share a prompt prefix or session go to the backend that caches it",
);

const MicroBatch = Section(
  {
    enabled: Type.Boolean({
      default: false,
      description: "merge concurrent /v1/embeddings requests with the same options into one upstream call",
    }),
    maxBatchInputs: Type.Integer({
      minimum: 1,
      maximum: 2048,
      default: 64,
      description:
        "inputs in one merged call at most; a full batch is sent at once (keep it within the engine's own limit, e.g. TEI's --max-client-batch-size)",
    }),
    maxBatchTokens: Type.Integer({
      minimum: 1,
      default: 8192,
      description: "estimated input tokens in one merged call at most; a full batch is sent at once",
    }),
    batchWindow: Duration(
      "5ms",
      "how long a batch waits for more requests after its first arrives; 0ms takes only the requests that arrive together",
    ),
  },
  "embeddings micro-batching (src/stages/micro-batch.ts)",
);

const Pool = Type.Object(
  {
    models: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, uniqueItems: true }),
    balancer: OneOf(Balancers, "least_request"),
    activeRequestBias: Type.Number({
      minimum: 0,
      default: 1,
      description: "least_request: (inFlight+1)^bias",
    }),
    panicThreshold: Type.Number({ minimum: 0, maximum: 100, default: 50 }),
    backends: Type.Array(Backend, { minItems: 1 }),
    timeouts: Timeouts,
    healthCheck: HealthCheck,
    outlierDetection: OutlierDetection,
    circuitBreaker: CircuitBreaker,
    fallback: Type.Array(Fallback, {
      default: [],
      description: "pools to try, in order, when this one cannot serve",
    }),
    slowStart: SlowStart,
    loadSignals: LoadSignals,
    retry: Retry,
    response: Response,
    dnsRefresh: Duration("10s", "how often discovered backends are re-resolved"),
    cache: Cache,
    admission: Admission,
    affinity: Affinity,
    microBatch: MicroBatch,
  },
  { additionalProperties: false },
);

const Batches = Section(
  {
    maxFileBytes: Size("200mb", "largest file POST /v1/files accepts (413 beyond; OpenAI's limit)"),
    maxLines: Type.Integer({
      minimum: 1,
      default: 50000,
      description: "requests in one batch input file at most (400 beyond; OpenAI's limit)",
    }),
    maxPerTenant: Type.Integer({
      minimum: 1,
      default: 10,
      description: "unfinished batches a tenant may have at once (429 too_many_batches beyond)",
    }),
    fileTtl: Duration("24h", "an uploaded file is deleted this long after its upload"),
    retention: Duration(
      "24h",
      "a batch stays retrievable this long past its completion window (its lines' answers: until the window closes, plus jobs.ttl)",
    ),
  },
  "the OpenAI Batch API: /v1/files and /v1/batches, files chunked in the store",
);

const Route = Type.Object(
  {
    prefix: Type.String({ pattern: "^/[A-Za-z0-9_.~/-]*$", "x-hint": "a path such as /tokenize" }),
    pool: Name,
    stripPrefix: Type.Boolean({ default: false }),
    fallback: Type.Boolean({ default: true, description: "may use the pool's fallback chain" }),
  },
  { additionalProperties: false },
);

export const ConfigSchema = Type.Object(
  {
    listen: Listen,
    server: Server,
    admin: Admin,
    store: Store,
    log: Log,
    auth: Type.Optional(Auth),
    tenants: Type.Record(Name, Tenant, { default: {}, additionalProperties: false }),
    pools: Type.Record(Name, Pool, { minProperties: 1, additionalProperties: false }),
    routes: Type.Array(Route, { default: [], description: "path prefixes passed through to a pool" }),
    rateLimits: Type.Array(RateLimit, {
      default: [],
      description: "request limits by IP, API key, tenant, model",
    }),
    tokens: Tokens,
    jobs: Jobs,
    cache: Section(
      { memory: Size("64mb", "the in-process tier, in front of the store") },
      "response cache tiers",
    ),
    dns: Section(
      {
        servers: Type.Array(Type.String(), {
          default: [],
          description: "resolvers for discovery; default: the system's",
        }),
        timeout: Duration("2s", "one DNS query"),
      },
      "DNS used by backend discovery",
    ),
    batches: Batches,
    reload: Section(
      {
        watch: Type.Boolean({
          default: false,
          description: "reload when the config file changes (its folder is watched: ConfigMap updates work)",
        }),
        debounce: Duration("1s", "wait this long after the last change before reading the file"),
      },
      "hot reload (SIGHUP and POST /admin/reload always reload)",
    ),
  },
  { additionalProperties: false },
);

export type GatewayConfig = StaticDecode<typeof ConfigSchema>;
export type PoolConfig = GatewayConfig["pools"][string];
export type BackendConfig = PoolConfig["backends"][number];
export type TenantConfig = GatewayConfig["tenants"][string];
export type TimeoutsConfig = PoolConfig["timeouts"];
export type RouteConfig = GatewayConfig["routes"][number];
export type BatchesConfig = GatewayConfig["batches"];
export type Engine = (typeof Engines)[number];
export type HealthCheckConfig = PoolConfig["healthCheck"];
export type OutlierDetectionConfig = PoolConfig["outlierDetection"];
export type SlowStartConfig = PoolConfig["slowStart"];
export type RetryConfig = PoolConfig["retry"];
export type CircuitBreakerConfig = PoolConfig["circuitBreaker"];
export type CacheConfig = PoolConfig["cache"];
export type AdmissionConfig = PoolConfig["admission"];
export type AffinityConfig = PoolConfig["affinity"];
export type MicroBatchConfig = PoolConfig["microBatch"];
export type Priority = (typeof Priorities)[number];
export type RateSpecConfig = StaticDecode<typeof RateSpec>;
export type RateLimitConfig = GatewayConfig["rateLimits"][number];
export type StoreErrorPolicyConfig = RateLimitConfig["onStoreError"];
export type JobsConfig = GatewayConfig["jobs"];

export type { TSchema };
