/**
 * The admin listener: /metrics for Prometheus, /status (a page that holds no data and reads
 * the other two), and /admin/* behind the admin bearer token.
 * Bound to loopback by default; config validation demands a token on any other address.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyError, FastifyInstance } from "fastify";
import type { ResponseCache } from "../cache/response-cache.js";
import type { GatewayConfig } from "../config/index.js";
import { errors } from "../errors.js";
import { fromFastifyError } from "../http-errors.js";
import type { Metrics } from "../metrics/metrics.js";
import type { ReloadReport } from "../reload.js";
import type { FleetSlots } from "../upstream/fleet.js";
import type { Upstreams } from "../upstream/pool.js";
import { STATUS_PAGE_HEADERS, STATUS_PAGE_HTML } from "./status-page.js";

export interface AdminDeps {
  /** The config in force (a reload may change the token, the tenants, the pools). */
  config: () => GatewayConfig;
  metrics: Metrics;
  upstreams: Upstreams;
  cache: ResponseCache;
  /** Backend slots shared with other replicas, if on. */
  fleet?: FleetSlots;
  /** The shared store's kind, and whether limits run on the local fallback because it is down. */
  store?: { kind: "memory" | "redis"; degraded: () => boolean };
  /** Reads the config file again and applies it (src/reload.ts). */
  reload?: (trigger: string) => Promise<ReloadReport>;
}

export function registerAdmin(app: FastifyInstance, deps: AdminDeps): void {
  app.get("/metrics", async (_request, reply) => {
    const text = await deps.metrics.registry.metrics();
    return reply.type(deps.metrics.registry.contentType).send(text);
  });
  // The page is static: it asks for the token itself and sends it only to /admin/status.
  app.get("/status", async (_request, reply) => reply.headers(STATUS_PAGE_HEADERS).send(STATUS_PAGE_HTML));
  app.get("/", async (_request, reply) => reply.redirect("/status"));

  app.register(async (scope) => {
    scope.addHook("onRequest", async (request) => {
      const token = deps.config().admin.token;
      if (!token) throw errors.adminForbidden("The admin API is off: set admin.token to use it.");
      const header = request.headers.authorization;
      if (header === undefined || header.trim() === "") throw errors.missingAdminToken();
      const presented = /^Bearer\s+(\S+)$/i.exec(header)?.[1] ?? "";
      if (!constantTimeEqual(presented, token)) throw errors.invalidAdminToken();
    });
    scope.get("/admin/status", async () => ({
      fleet: deps.fleet
        ? { replica: deps.fleet.id, replicas: deps.fleet.replicas, storeDown: deps.fleet.storeDown }
        : null,
      store: deps.store ? { kind: deps.store.kind, degraded: deps.store.degraded() } : null,
      pools: [...deps.upstreams.pools.values()].map((pool) => {
        const now = pool.now();
        return {
          name: pool.name,
          models: pool.config.models,
          balancer: pool.config.balancer,
          panic: pool.balancer.panic(pool.backends, now),
          retries: { inFlight: pool.budget.retries, limit: pool.budget.limit },
          admission: pool.admission.status(),
          affinity:
            pool.config.affinity.by === "off"
              ? null
              : { by: pool.config.affinity.by, decisions: { ...pool.affinityDecisions } },
          backends: pool.backends.map((b) => {
            const signal = pool.lastSignal(b);
            return {
              name: b.name,
              url: b.origin + b.basePath,
              engine: b.engine,
              weight: b.weight,
              backup: b.backup,
              healthy: b.healthy,
              breaker: b.breaker.state,
              probeInMs: b.breaker.msUntilProbe(),
              ejections: b.ejections,
              drained: b.drained,
              inFlight: b.inFlight,
              maxConcurrency: Number.isFinite(b.maxConcurrency) ? b.maxConcurrency : null,
              // Shared slots (store.slots): this replica's share and the fleet's load on it.
              share: Number.isFinite(b.share) ? b.share : null,
              fleetInFlight: Number.isFinite(b.share) ? b.inFlight + b.othersInFlight : null,
              engineLoad: signal
                ? {
                    waiting: signal.waiting,
                    running: signal.running,
                    kvCacheUsage: signal.kvCacheUsage ?? null,
                    prefixCacheHitRatio: signal.prefixCacheHitRatio ?? null,
                    ageMs: Math.round(now - signal.at),
                  }
                : null,
            };
          }),
        };
      }),
    }));
    // Purge cached answers by tenant, by model, both, or (an empty body) all.
    scope.post<{ Body: { tenant?: unknown; model?: unknown } | undefined }>(
      "/admin/cache/purge",
      async (request) => {
        const body = request.body ?? {};
        const tenant = typeof body.tenant === "string" ? body.tenant : undefined;
        const model = typeof body.model === "string" ? body.model : undefined;
        const scopes = [...Object.keys(deps.config().tenants), "anonymous", "shared"];
        const removed = await deps.cache.purge({ scope: tenant, model }, scopes);
        return { purged: { tenant: tenant ?? null, model: model ?? null }, removedFromStore: removed };
      },
    );
    // Reload the config file: 200 with what changed, or 422 with every error (the running
    // config stays).
    scope.post("/admin/reload", async (_request, reply) => {
      if (!deps.reload) throw errors.invalidRequest("This gateway has no config file to reload.");
      const report = await deps.reload("admin");
      return reply.code(report.ok ? 200 : 422).send(report);
    });
    for (const [action, drained] of [
      ["drain", true],
      ["undrain", false],
    ] as const) {
      scope.post<{ Params: { pool: string; backend: string } }>(
        `/admin/pools/:pool/backends/:backend/${action}`,
        async (request) => {
          const pool = deps.upstreams.pools.get(request.params.pool);
          if (!pool?.setDrained(request.params.backend, drained)) {
            throw errors.backendNotFound(request.params.pool, request.params.backend);
          }
          return { pool: pool.name, backend: request.params.backend, drained };
        },
      );
    }
  });

  app.setNotFoundHandler(async (request) => {
    throw errors.routeNotFound(request.method, request.url.split("?")[0] ?? "/");
  });
  app.setErrorHandler(async (err: FastifyError, request, reply) => {
    const gw = fromFastifyError(err, request);
    return reply.code(gw.statusCode).headers(gw.headers()).send(gw.body());
  });
}

/** Compares digests, which have one length whatever was presented: the time says nothing of the token's length. */
function constantTimeEqual(a: string, b: string): boolean {
  const digest = (s: string) => createHash("sha256").update(s).digest();
  return timingSafeEqual(digest(a), digest(b));
}
