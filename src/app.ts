/**
 * buildGateway(config): the client-facing Fastify app with the stages of the request path in
 * order, and the admin app beside it. Nothing listens until listen() is called.
 */
import { randomUUID } from "node:crypto";
import { IncomingMessage } from "node:http";
import type { Socket } from "node:net";
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from "fastify";
import type { Logger } from "pino";
import { registerAdmin } from "./admin/plugin.js";
import { LOAD_REFUSALS } from "./admission/admission.js";
import { ApiKeys } from "./auth/api-keys.js";
import { ResponseCache } from "./cache/response-cache.js";
import {
  ConfigError,
  configWarnings,
  formatWarning,
  type GatewayConfig,
  loadConfigFile,
  type RouteConfig,
} from "./config/index.js";
import { type Generation, newContext, type RequestContext } from "./context.js";
import { errors, type GatewayError } from "./errors.js";
import { fromFastifyError, writeClientError } from "./http-errors.js";
import {
  type JobsDeps,
  PREFER_HEADER,
  prefersAsync,
  registerJobRoutes,
  submitStage,
} from "./jobs/async-routes.js";
import { registerBatchRoutes } from "./jobs/batch-routes.js";
import { createJobQueue } from "./jobs/index.js";
import { JOB_HEADER, JobRunner } from "./jobs/runner.js";
import type { JobQueue } from "./jobs/types.js";
import { accessLogWriter, combineEvents, createLogger, quietLogs, upstreamLogEvents } from "./logging.js";
import { Metrics } from "./metrics/metrics.js";
import { jsonBodyProblem } from "./proxy/json-body.js";
import { registerOpenAIRoutes } from "./proxy/openai-routes.js";
import { PassThroughTable, registerPassThrough } from "./proxy/pass-through.js";
import { ConcurrencyLimits } from "./ratelimit/concurrency.js";
import { GuardedStore } from "./ratelimit/guarded-store.js";
import { RequestLimits } from "./ratelimit/request-limits.js";
import { TokenBudgets } from "./ratelimit/token-budget.js";
import { type ReloadReport, restartNeeded, watchConfigFile } from "./reload.js";
import {
  forwarding,
  type GatewayPath,
  openAIPath,
  type PathDeps,
  passThroughPathFor,
  submissionPath,
} from "./request-path.js";
import { createStore, MemoryStore } from "./store/index.js";
import type { Store } from "./store/types.js";
import type { DnsResolverLike } from "./upstream/discovery.js";
import { FleetSlots } from "./upstream/fleet.js";
import { Upstreams } from "./upstream/pool.js";

export interface GatewayOptions {
  /** A pino logger to use; by default one is made from config.log. */
  logger?: Logger;
  /** Register Node process metrics (off in tests that build many gateways). */
  processMetrics?: boolean;
  /** DNS resolver for backend discovery (tests point it at their own DNS server). */
  resolver?: DnsResolverLike;
  /** This replica's monotonic clock, for what it decides alone (local limits while Redis is down). */
  now?: () => number;
  /** The file the config came from: reload() reads it again (SIGHUP, POST /admin/reload, a watch). */
  configFile?: string;
}

export interface Gateway {
  app: FastifyInstance;
  admin: FastifyInstance | undefined;
  metrics: Metrics;
  upstreams: Upstreams;
  /** The config in force (a reload replaces it; a request keeps the one it started with). */
  readonly config: GatewayConfig;
  /** How many configs this gateway has run: 1 at start, one more per applied reload. */
  readonly generation: number;
  /**
   * Applies a new, already validated config: see src/reload.ts for what changes and what
   * needs a restart. Reloads run one at a time.
   */
  apply(next: GatewayConfig): Promise<ReloadReport>;
  /** Reads configFile again and applies it, or keeps the running config on any error. */
  reload(trigger: string): Promise<ReloadReport>;
  /** Backend slots shared with the other replicas (store: redis), if on. */
  fleet: FleetSlots | undefined;
  /** The shared store behind the rate limits, as the limits use it. */
  store: GuardedStore;
  cache: ResponseCache;
  /** Async requests: the jobs queue (made on first use) and this replica's runner. */
  jobs: { queue(): JobQueue; runner: JobRunner };
  /** The request paths of the config in force: their stages, in order. */
  readonly paths: { openai: GatewayPath; passThrough: ReadonlyMap<RouteConfig, GatewayPath> };
  /** Listens on config.listen (and config.admin); returns the bound URLs. */
  listen(): Promise<{ url: string; adminUrl: string | undefined }>;
  close(): Promise<void>;
  readonly closing: boolean;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function buildGateway(config: GatewayConfig, options: GatewayOptions = {}): Gateway {
  const logger = options.logger ?? createLogger(config.log);
  const writeAccess = accessLogWriter(logger);
  const metrics = new Metrics({ processMetrics: options.processMetrics ?? true });
  const upstreams = new Upstreams(config, {
    events: combineEvents(metrics.upstreamEvents(), upstreamLogEvents(logger)),
    admission: metrics.admissionEvents(),
    resolver: options.resolver,
  });
  metrics.watch(upstreams);
  const store: Store = createStore(config.store, {
    onError: (err) => logger.warn({ err: err.message }, "store connection error"),
    tally: metrics.storeCalls,
  });
  const local = store.kind === "memory" ? store : new MemoryStore({ now: options.now });
  // Backend slots shared by the replicas (src/upstream/fleet.ts): Redis only.
  const fleet =
    config.store.slots.shared && store.syncFleet
      ? new FleetSlots(
          { syncFleet: store.syncFleet.bind(store) },
          upstreams,
          { sync: config.store.slots.sync, lease: config.store.slots.lease, replicas: config.store.replicas },
          logger,
        )
      : undefined;
  if (fleet) {
    metrics.fleet = fleet;
    for (const pool of upstreams.pools.values()) pool.onWait = () => fleet.nudge();
  }
  const guard = new GuardedStore(
    store,
    local,
    {
      // The local fallback divides by the live replicas the fleet last saw.
      get replicas() {
        return fleet?.replicas ?? config.store.replicas;
      },
      failures: config.store.breaker.failures,
      resetTimeout: config.store.breaker.resetTimeout,
    },
    metrics.guardEvents(logger),
    options.now,
  );
  metrics.store = guard;
  const cache = new ResponseCache(store, config.cache.memory, metrics.cacheEvents());
  metrics.watchCache(cache);
  let closing = false;

  // Async requests (src/jobs): the queue is made when first needed, so a gateway with jobs off
  // opens no connection for it; the runner reads the jobs settings in force at each use.
  let jobQueue: JobQueue | undefined;
  const queue = (): JobQueue => {
    jobQueue ??= createJobQueue(config.store, {
      onError: (err) => logger.warn({ err: err.message }, "jobs queue connection error"),
      tally: metrics.storeCalls,
    });
    return jobQueue;
  };
  const runner = new JobRunner({
    inject: (options) => app.inject(options),
    queue,
    config: () => gen.config.jobs,
    events: metrics.jobEvents(),
    logger,
    // A memory queue is this replica's alone; a Redis one is run by every replica.
    replicas: () => (store.kind === "memory" ? 1 : (fleet?.replicas ?? config.store.replicas)),
  });
  const jobs: JobsDeps = { queue, runner, events: metrics.jobEvents() };
  metrics.jobs = {
    depth: () => (jobQueue ? jobQueue.depth() : Promise.resolve(0)),
    get running() {
      return runner.running;
    },
  };

  /**
   * What one config makes of the request path: keys, limits, budgets and the stages, built
   * whole from that config. A request takes the generation in force when it arrives and keeps
   * it to the end; a reload builds the next one beside it (src/reload.ts).
   */
  function makeGeneration(cfg: GatewayConfig, number: number): Generation {
    const apiKeys = new ApiKeys(cfg);
    const deps: PathDeps = {
      config: cfg,
      upstreams,
      metrics,
      logger,
      authEnabled: apiKeys.enabled,
      limits: new RequestLimits(cfg, guard, metrics.limitEvents()),
      budgets: new TokenBudgets(cfg, guard, metrics.limitEvents()),
      concurrency: new ConcurrencyLimits(cfg, guard, metrics.limitEvents()),
      cache,
    };
    // The request paths: the ordered stages of src/request-path.ts, built once per config.
    const forward = forwarding(deps);
    const openai = openAIPath(deps, forward);
    const submit = submissionPath(deps, submitStage(jobs));
    const passThrough = new Map(cfg.routes.map((r) => [r, passThroughPathFor(deps, forward, r)]));
    return {
      number,
      config: cfg,
      apiKeys,
      openai,
      submit,
      passThrough,
      table: new PassThroughTable(passThrough),
    };
  }
  let gen = makeGeneration(config, 1);
  const generationOf = (request: FastifyRequest): Generation => request.gw.generation ?? gen;

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // The access line is ours (one per request, aborted ones included): Fastify's are off, and so
    // is its child logger per request; our lines carry the request id themselves.
    logController: quietLogs(),
    childLoggerFactory: (parent) => parent,
    bodyLimit: config.server.bodyLimit,
    requestTimeout: config.server.requestTimeout,
    keepAliveTimeout: config.server.keepAliveTimeout,
    http: {
      maxHeaderSize: config.server.maxHeaderSize,
      headersTimeout: config.server.headersTimeout,
      // Given here too: Node checks headersTimeout against it when it creates the server, before
      // Fastify sets it, and would compare with its own default of 300 s.
      requestTimeout: config.server.requestTimeout,
      // Node checks the request and headers timeouts every 30 s by default, so a slow client
      // could hold a connection up to 30 s past them: check often enough to enforce them.
      connectionsCheckingInterval: Math.max(100, Math.min(1000, config.server.headersTimeout / 4)),
    },
    trustProxy: config.server.trustProxy.length > 0 ? config.server.trustProxy : false,
    requestIdHeader: false,
    genReqId: (req: IncomingMessage) => {
      const given = req.headers["x-request-id"];
      return typeof given === "string" && REQUEST_ID.test(given) ? given : randomUUID();
    },
    return503OnClosing: true,
    clientErrorHandler: writeClientError,
  });

  // Filled per request in onRequest; a shared object here would leak between requests.
  app.decorateRequest("gw", null as unknown as RequestContext);
  app.decorateRequest("rawBody", undefined);

  // The OpenAI routes take JSON only: anything else is a 415, not a string body.
  app.removeContentTypeParser("text/plain");
  // The body is kept as received so it can be forwarded without re-serialising it.
  app.removeContentTypeParser("application/json");
  const maxJsonDepth = config.server.maxJsonDepth;
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (request, body, done) => {
    const raw = body as Buffer;
    request.rawBody = raw;
    const problem = jsonBodyProblem(raw, maxJsonDepth);
    if (problem) return done(errors.invalidJson(problem), undefined);
    try {
      done(null, JSON.parse(raw.toString("utf8")));
    } catch (err) {
      done(errors.invalidJson(err instanceof Error ? err.message : "unparsable"), undefined);
    }
  });

  // Client connections past server.maxConnections are accepted (so they can be told), and each
  // request on one is answered 503 with Retry-After and the connection closed.
  const maxConnections = config.server.maxConnections;
  const overCap = new WeakSet<Socket>();
  /** Open client connections, for the shutdown sweep (one add and one delete per connection). */
  const sockets = new Set<Socket>();
  let connections = 0;
  app.server.on("connection", (socket: Socket) => {
    if (++connections > maxConnections) overCap.add(socket);
    sockets.add(socket);
    socket.once("close", () => {
      connections--;
      sockets.delete(socket);
    });
  });
  /**
   * At shutdown: connections with no request in progress are closed. Node's
   * closeIdleConnections() leaves out a connection that never sent a byte (it counts as
   * awaiting headers until headersTimeout), which a client's spare keep-alive connection is, and
   * that would hold the shutdown for a minute.
   */
  function closeIdle(): void {
    app.server.closeIdleConnections();
    for (const socket of sockets) if (socket.bytesRead === 0) socket.destroy();
  }

  // A callback hook, not an async one: every request runs it, and a promise per request is
  // measurable at saturation.
  app.addHook("onRequest", (request, reply, done) => {
    request.gw = newContext();
    request.gw.generation = gen;
    reply.header("x-request-id", request.id);
    reply.raw.on("close", () => onClosed(request, reply));
    if (closing) return done(errors.shuttingDown());
    if (connections > maxConnections && overCap.has(request.raw.socket)) {
      reply.header("connection", "close");
      return done(errors.tooManyConnections(maxConnections));
    }
    done();
  });

  app.get("/healthz", async () => ({ status: "ok" }));
  app.get("/readyz", async (_request, reply) => {
    const backends = upstreams.backendCount();
    if (closing || backends === 0) {
      return reply.code(503).send({ status: closing ? "shutting down" : "no backends" });
    }
    return { status: "ready", pools: upstreams.pools.size, backends };
  });

  app.register(async (scope) => {
    // API keys on the proxied routes only: the health probes and unknown URLs need none.
    scope.addHook("onRequest", (request, reply, done) => {
      const apiKeys = generationOf(request).apiKeys;
      // Only a request made in process (app.inject) can be a job's run: a request from the
      // network never has its job header read.
      if (!(request.raw instanceof IncomingMessage)) {
        try {
          const job = runner.adopt(request.headers[JOB_HEADER], reply.raw);
          if (job) {
            request.gw.deferred = true;
            if (apiKeys.enabled) {
              // The tenant that submitted it, as this config knows it (gone: refused as a bad key).
              const tenant = apiKeys.tenant(job.tenant);
              if (!tenant) throw errors.invalidApiKey();
              request.gw.tenant = tenant;
            }
            return done();
          }
        } catch (err) {
          return done(err as Error);
        }
      }
      if (!apiKeys.enabled) return done();
      try {
        const { tenant, keyId } = apiKeys.authenticate(request.headers);
        request.gw.tenant = tenant;
        request.gw.keyId = keyId;
      } catch (err) {
        return done(err as Error);
      }
      done();
    });
    registerOpenAIRoutes(
      scope,
      (request) => {
        const g = generationOf(request);
        // One header read per request while jobs are on, none while they are off.
        if (g.config.jobs.enabled && !request.gw.deferred && prefersAsync(request.headers[PREFER_HEADER])) {
          return g.submit;
        }
        return g.openai;
      },
      upstreams,
      config.server.sendTimeout,
    );
    registerJobRoutes(scope, jobs, (request) => generationOf(request).config.jobs.enabled);
    registerPassThrough(scope, config, (request) => generationOf(request).table, {
      upstreams,
      sendTimeout: config.server.sendTimeout,
    });
    registerBatchRoutes(scope, {
      storeConfig: config.store,
      onStoreError: (err) => logger.warn({ err: err.message }, "files store connection error"),
      queue,
      config: (request) => generationOf(request).config,
    });
  });

  app.setNotFoundHandler(async (request) => {
    throw errors.routeNotFound(request.method, request.url.split("?")[0] ?? "/");
  });
  app.setErrorHandler(async (err: FastifyError | GatewayError, request, reply) => {
    const gw = fromFastifyError(err, request);
    request.gw ??= newContext();
    request.gw.error = gw;
    // A client that left is not a gateway failure: its access line (499) says enough.
    const clientGone = request.gw.exchange?.abortReason === "client" || reply.raw.destroyed;
    // Refusals for load are admission control working: the access line has their code.
    if (gw.statusCode >= 500 && !clientGone && !LOAD_REFUSALS.has(gw.code) && gw.code !== "shutting_down") {
      logger.error({ requestId: request.id, code: gw.code, err: gw.upstreamCause ?? err }, "request failed");
    }
    // What the stages said before the refusal (limit state, cache status) goes with it.
    if (request.gw.headers) reply.headers(request.gw.headers);
    return reply.code(gw.statusCode).headers(gw.headers()).send(gw.body());
  });

  function onClosed(request: FastifyRequest, reply: FastifyReply): void {
    const ctx = request.gw;
    // A job's run is answered in process (app.inject), where the response closes once ended,
    // before Node counts it finished.
    const finished = reply.raw.writableFinished || (ctx.deferred && reply.raw.writableEnded);
    ctx.delivered = finished;
    // The client left first: stop the backend's work now, then the way back.
    if (!finished) ctx.exchange?.abort("client");
    ctx.path?.close(ctx);
    const status = finished ? reply.statusCode : 499;
    const now = performance.now();
    const seconds = (now - ctx.startedAt) / 1000;
    const route = ctx.route ?? request.routeOptions.url ?? "unmatched";
    const usage = answerUsage(ctx);
    const exchange = ctx.exchange;
    let firstToken: number | undefined;
    let outputToken: number | undefined;
    const answer = ctx.answer;
    // The LLM routes' successful answers: the first token reached the client when the first
    // data event passed (a stream), the answer was written (a cache hit), or it was all sent.
    // A 202 is a job accepted (src/jobs): no token yet.
    if (answer !== undefined && ctx.body !== undefined && status < 300 && status >= 200 && status !== 202) {
      if (answer.kind === "stream") {
        const at = answer.tap?.firstDataAt;
        if (at !== undefined) {
          firstToken = (at - ctx.startedAt) / 1000;
          if (usage && usage.completion > 1 && finished)
            outputToken = (now - at) / 1000 / (usage.completion - 1);
        }
      } else if (answer.kind === "cached") {
        firstToken = ((ctx.answeredAt ?? now) - ctx.startedAt) / 1000;
      } else {
        firstToken = seconds;
      }
    }
    const upstreamMs = ctx.upstreamMs + (exchange ? exchange.upstreamMs : 0);
    metrics.observeRequest({
      route,
      model: ctx.pool ? (ctx.model ?? "") : ctx.model ? "unknown" : "",
      pool: ctx.pool ?? "",
      tenant: ctx.tenant?.id ?? "",
      status,
      error: ctx.error?.code ?? (finished ? "" : "client_closed"),
      stream: ctx.stream,
      seconds,
      firstTokenSeconds: firstToken,
      outputTokenSeconds: outputToken,
      promptTokens: usage?.prompt,
      completionTokens: usage?.completion,
      overheadSeconds: Math.max(0, seconds - (upstreamMs + ctx.queuedMs) / 1000),
    });
    if (!config.log.accessLog) return;
    writeAccess({
      requestId: request.id,
      tenant: ctx.tenant?.id,
      method: request.method,
      route,
      model: ctx.model,
      pool: ctx.pool,
      backend: exchange?.backendName ?? undefined,
      stream: ctx.stream,
      fallback: ctx.fallback,
      cache: ctx.cache,
      status,
      error: ctx.error?.code,
      durationMs: Math.round(seconds * 1e4) / 10,
      queueMs: ctx.queuedMs > 0 ? Math.round(ctx.queuedMs * 10) / 10 : undefined,
      firstByteMs: exchange?.firstByteAt
        ? Math.round((exchange.firstByteAt - ctx.startedAt) * 10) / 10
        : undefined,
      promptTokens: usage?.prompt,
      completionTokens: usage?.completion,
      bytesIn: request.rawBody?.length,
      bytesOut: exchange?.bytesOut,
    });
  }

  const admin = config.admin.enabled ? buildAdmin() : undefined;
  function buildAdmin(): FastifyInstance {
    const adminApp = Fastify({ loggerInstance: logger as FastifyBaseLogger, logController: quietLogs() });
    registerAdmin(adminApp, {
      config: () => gen.config,
      metrics,
      upstreams,
      cache,
      reload,
      fleet,
      store: { kind: store.kind, degraded: () => guard.degraded },
    });
    return adminApp;
  }

  let applying: Promise<unknown> = Promise.resolve();
  /** Reloads run one after another: each starts from the generation the last one left. */
  function apply(next: GatewayConfig, trigger = "apply"): Promise<ReloadReport> {
    const run = applying.then(() => applyNow(next, trigger));
    applying = run.catch(() => undefined);
    return run;
  }

  async function applyNow(next: GatewayConfig, trigger: string): Promise<ReloadReport> {
    const restart = restartNeeded(gen.config, next);
    let built: Generation;
    try {
      built = makeGeneration(next, gen.number + 1);
    } catch (err) {
      return reloadFailed(trigger, [err instanceof Error ? err.message : String(err)]);
    }
    const pools = await upstreams.reconfigure(next);
    if (fleet) for (const pool of upstreams.pools.values()) pool.onWait = () => fleet.nudge();
    gen = built;
    metrics.observeReload("success");
    const report: ReloadReport = {
      ok: true,
      generation: gen.number,
      trigger,
      errors: [],
      restartNeeded: restart,
      pools,
    };
    logger.info({ generation: gen.number, trigger, pools }, "config reloaded");
    for (const warning of configWarnings(next)) logger.warn(`config: ${formatWarning(warning)}`);
    if (restart.length > 0) {
      logger.warn(
        { sections: restart },
        `config reloaded, but ${restart.join(", ")} changed and apply only at the next start`,
      );
    }
    return report;
  }

  function reloadFailed(trigger: string, problems: string[]): ReloadReport {
    metrics.observeReload("failure");
    logger.error({ trigger, errors: problems }, "config reload failed: the running config stays");
    return {
      ok: false,
      generation: gen.number,
      trigger,
      errors: problems,
      restartNeeded: [],
      pools: undefined,
    };
  }

  async function reload(trigger: string): Promise<ReloadReport> {
    const file = options.configFile;
    if (!file) return reloadFailed(trigger, ["this gateway was not started from a config file"]);
    let next: GatewayConfig;
    try {
      next = loadConfigFile(file);
    } catch (err) {
      if (err instanceof ConfigError)
        return reloadFailed(
          trigger,
          err.message.split("\n").filter((l) => l.trim()),
        );
      return reloadFailed(trigger, [err instanceof Error ? err.message : String(err)]);
    }
    return apply(next, trigger);
  }

  let unwatch: (() => void) | undefined;

  return {
    app,
    admin,
    metrics,
    upstreams,
    get config() {
      return gen.config;
    },
    get generation() {
      return gen.number;
    },
    apply,
    reload,
    fleet,
    store: guard,
    cache,
    jobs: { queue, runner },
    get paths() {
      return { openai: gen.openai, passThrough: gen.passThrough };
    },
    get closing() {
      return closing;
    },
    async listen() {
      await upstreams.start();
      // A replica that took traffic before its Redis connection was up would decide its first
      // requests by onStoreError, not by the shared limits. It waits for the store first, for at
      // most connectTimeout: a Redis that is down must not keep the gateway from serving.
      if (!(await store.ready(config.store.connectTimeout))) {
        logger.warn(
          { connectTimeout: config.store.connectTimeout },
          "store not ready within connectTimeout: listening anyway; limits follow onStoreError until it connects",
        );
      }
      await fleet?.start();
      const url = await app.listen({ host: config.listen.host, port: config.listen.port });
      const adminUrl = admin
        ? await admin.listen({ host: config.admin.host, port: config.admin.port })
        : undefined;
      // Jobs run once the gateway they run through serves.
      runner.start();
      if (config.reload.watch && options.configFile) {
        unwatch = watchConfigFile(
          options.configFile,
          config.reload.debounce,
          () => void reload("watch"),
          (err) => logger.warn({ err }, "config file watch failed"),
        );
      }
      return { url, adminUrl };
    },
    async close() {
      closing = true;
      unwatch?.();
      // The jobs running here go back to the queue at once, for another replica to run.
      await runner.stop();
      // Requests still waiting for a slot near the end of the grace are told to come back
      // (shutting_down, with retry headers) rather than dropped when the process exits.
      const grace = config.server.shutdownGrace;
      const refuseQueued = setTimeout(
        () => {
          for (const pool of upstreams.pools.values()) pool.admission.shutdown();
        },
        Math.max(0, grace - Math.min(1000, grace / 10)),
      );
      // server.close() drops the connections idle at that moment only; a keep-alive connection
      // whose request finishes later would hold shutdown until keepAliveTimeout.
      const sweep = setInterval(closeIdle, 50);
      try {
        await Promise.all([app.close(), admin?.close()]);
      } finally {
        clearInterval(sweep);
        clearTimeout(refuseQueued);
      }
      await fleet?.stop();
      await upstreams.close();
      await jobQueue?.close();
      await guard.close();
      logger.flush();
    },
  };
}

/** The answer's token usage as the backend reported it (a buffered answer, or a stream's usage chunk). */
function answerUsage(ctx: RequestContext): { prompt: number; completion: number } | undefined {
  const answer = ctx.answer;
  if (!answer || answer.kind === "cached") return undefined;
  const usage =
    answer.kind === "stream" ? answer.tap?.usage : answer.status < 300 ? answer.json?.usage : undefined;
  if (usage === null || typeof usage !== "object") return undefined;
  const { prompt_tokens: prompt, completion_tokens: completion } = usage as Record<string, unknown>;
  if (typeof prompt !== "number" || typeof completion !== "number") return undefined;
  return { prompt, completion };
}
