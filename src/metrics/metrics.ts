/**
 * The metric catalogue. One prom-client Registry per app instance, so tests can run several
 * gateways in one process. Label values are bounded: route templates, configured model, pool
 * and backend names (an unknown model is "unknown"), status classes, fixed reasons. API keys
 * never appear.
 */

import type { Logger } from "pino";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { ADMISSION_OUTCOMES, type AdmissionEvents } from "../admission/admission.js";
import { BAND_NAMES } from "../admission/queue.js";
import type { CacheEvents, CacheStatus, ResponseCache } from "../cache/response-cache.js";
import type { GuardEvents } from "../ratelimit/guarded-store.js";
import type { LimitEvents } from "../ratelimit/request-limits.js";
import type { TokenEvents } from "../ratelimit/token-budget.js";
import type { Backend } from "../upstream/backend.js";
import type { FleetSlots } from "../upstream/fleet.js";
import type { LoadSignal } from "../upstream/load-signals.js";
import type { UpstreamEvents, Upstreams } from "../upstream/pool.js";
import { type CounterSeries, FastCounter, FastHistogram, type HistogramSeries, SeriesIndex } from "./fast.js";

/** Queue waits: from a few ms (interactive) to minutes (background). */
const WAIT_BUCKETS = [0.005, 0.025, 0.1, 0.25, 0.5, 1, 1.5, 2, 5, 10, 30, 60, 300];
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export interface RequestLabels {
  route: string;
  model: string;
  pool: string;
  statusClass: string;
}

/** Bound children by label values, for the metrics that change less often than per request. */
class Children<T> {
  private readonly map = new Map<string, T>();
  constructor(private readonly make: (values: string[]) => T) {}
  get(...values: string[]): T {
    const key = values.join("\u0000");
    let child = this.map.get(key);
    if (child === undefined) {
      child = this.make(values);
      this.map.set(key, child);
    }
    return child;
  }
}

export class Metrics {
  readonly registry = new Registry();
  // Updated on every request: the fast kinds (see fast.ts).
  private readonly requests: FastCounter<"route" | "model" | "pool" | "status_class">;
  private readonly duration: FastHistogram<"route" | "model" | "pool" | "status_class">;
  /** Both series of each request label set, found with one lookup per request. */
  private readonly requestSeries = new SeriesIndex<{ count: CounterSeries; duration: HistogramSeries }>();
  private readonly firstByte: FastHistogram<"pool" | "backend">;
  private readonly selections: FastCounter<"pool" | "backend">;
  private readonly attempts: FastCounter<"pool" | "backend" | "outcome">;
  private readonly retries: Children<Counter.Internal>;
  private readonly budgetExhausted: Children<Counter.Internal>;
  private readonly ejections: Children<Counter.Internal>;
  private readonly fallbacks: Children<Counter.Internal>;
  private readonly breakerTransitions: Children<Counter.Internal>;
  private readonly breakerRejections: Children<Counter.Internal>;
  private readonly decisions: Children<Counter.Internal>;
  private readonly tokens: Children<Counter.Internal>;
  private readonly storeErrors: Children<Counter.Internal>;
  private readonly withoutStore: Children<Counter.Internal>;
  private readonly cacheResults: Children<Counter.Internal>;
  private readonly cacheEvictions: Children<Counter.Internal>;
  private readonly cacheWaiters: Counter;
  private readonly admissionWaits: Children<Histogram.Internal<string>>;
  private readonly cacheLockTimeouts: Counter;
  private readonly reloads: Counter<"result">;
  private readonly lastReload: Gauge;
  private cache: ResponseCache | undefined;
  private upstreams: Upstreams | undefined;
  /** Set when replicas share backend slots. */
  fleet: FleetSlots | undefined;

  constructor(options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.processMetrics ?? true)
      collectDefaultMetrics({ register: this.registry, prefix: "floodgate_" });
    const metrics = this;
    const counter = <L extends string>(name: string, help: string, labelNames: L[]) =>
      new Counter({ name, help, labelNames, registers });
    this.reloads = counter(
      "floodgate_config_reloads_total",
      "Config reloads, by result (success, failure).",
      ["result"],
    );
    this.reloads.inc({ result: "success" }, 0);
    this.reloads.inc({ result: "failure" }, 0);
    this.lastReload = new Gauge({
      name: "floodgate_config_last_reload_success_timestamp_seconds",
      help: "When the config in force was loaded (start or the last successful reload), Unix seconds.",
      registers,
    });
    this.lastReload.set(Date.now() / 1000);
    this.requests = new FastCounter({
      name: "floodgate_requests_total",
      help: "Client requests answered, by route, model, pool and status class.",
      labelNames: ["route", "model", "pool", "status_class"],
      registers,
    });
    this.duration = new FastHistogram(
      {
        name: "floodgate_request_duration_seconds",
        help: "Time from request received to response finished, streams included.",
        labelNames: ["route", "model", "pool", "status_class"],
        registers,
      },
      LATENCY_BUCKETS,
    );
    this.firstByte = new FastHistogram(
      {
        name: "floodgate_upstream_first_byte_seconds",
        help: "Time from sending a request upstream to the backend's response headers.",
        labelNames: ["pool", "backend"],
        registers,
      },
      LATENCY_BUCKETS,
    );
    this.selections = new FastCounter({
      name: "floodgate_backend_selections_total",
      help: "Times the balancer picked each backend.",
      labelNames: ["pool", "backend"],
      registers,
    });
    this.attempts = new FastCounter({
      name: "floodgate_upstream_attempts_total",
      help: "Attempts sent upstream, by outcome (success, http_4xx, http_5xx, gateway_failure, connect_failure).",
      labelNames: ["pool", "backend", "outcome"],
      registers,
    });
    const retries = counter("floodgate_upstream_retries_total", "Retries on another backend, by reason.", [
      "pool",
      "reason",
    ]);
    this.retries = new Children((v) => retries.labels(...v));
    const budget = counter(
      "floodgate_retry_budget_exhausted_total",
      "Retries not made because the pool's retry budget was spent.",
      ["pool"],
    );
    this.budgetExhausted = new Children((v) => budget.labels(...v));
    const ejections = counter("floodgate_outlier_ejections_total", "Backends ejected by outlier detection.", [
      "pool",
      "backend",
      "reason",
    ]);
    this.ejections = new Children((v) => ejections.labels(...v));

    const fallbacks = counter(
      "floodgate_fallbacks_total",
      "Requests served by a fallback pool, by from and to pool.",
      ["from", "to"],
    );
    this.fallbacks = new Children((v) => fallbacks.labels(...v));
    const transitions = counter(
      "floodgate_breaker_transitions_total",
      "Circuit breaker state changes, by new state.",
      ["pool", "backend", "state"],
    );
    this.breakerTransitions = new Children((v) => transitions.labels(...v));
    const rejections = counter(
      "floodgate_breaker_rejections_total",
      "Requests no backend could take while at least one was kept out by its breaker.",
      ["pool"],
    );
    this.breakerRejections = new Children((v) => rejections.labels(...v));

    const decisions = counter(
      "floodgate_ratelimit_decisions_total",
      "Rate-limit decisions, by limit, tenant and decision (allowed, limited).",
      ["limit", "tenant", "decision"],
    );
    this.decisions = new Children((v) => decisions.labels(...v));
    const tokens = counter(
      "floodgate_ratelimit_tokens_total",
      "LLM tokens by tenant and kind: reserved before, settled to real usage after, refunded, charged beyond.",
      ["tenant", "kind"],
    );
    this.tokens = new Children((v) => tokens.labels(...v));
    const storeErrors = counter("floodgate_store_errors_total", "Shared store (Redis) calls that failed.", [
      "operation",
    ]);
    this.storeErrors = new Children((v) => storeErrors.labels(...v));
    const withoutStore = counter(
      "floodgate_ratelimit_without_store_total",
      "Limit decisions made without the shared store, by limit and onStoreError policy.",
      ["limit", "policy"],
    );
    this.withoutStore = new Children((v) => withoutStore.labels(...v));

    const cacheResults = counter(
      "floodgate_cache_requests_total",
      "Cacheable-route requests by pool and result.",
      ["pool", "result"],
    );
    this.cacheResults = new Children((v) => cacheResults.labels(...v));
    const evictions = counter(
      "floodgate_cache_evictions_total",
      "Entries dropped from the in-process tier.",
      ["reason"],
    );
    this.cacheEvictions = new Children((v) => evictions.labels(...v));
    this.cacheWaiters = counter(
      "floodgate_cache_waiters_total",
      "Requests that waited for an identical request's answer instead of going upstream.",
      [],
    );
    this.cacheLockTimeouts = counter(
      "floodgate_cache_lock_timeouts_total",
      "Waits on another replica's cache lock that ran out; the request went upstream itself.",
      [],
    );
    new Gauge({
      name: "floodgate_cache_bytes",
      help: "Bytes of cached answers: in this process (memory), and written to the store by it and unexpired (store).",
      labelNames: ["tier"],
      registers,
      collect() {
        this.set({ tier: "memory" }, metrics.cache?.memoryBytes ?? 0);
        this.set({ tier: "store" }, metrics.cache?.storeBytes() ?? 0);
      },
    });

    new Counter({
      name: "floodgate_admission_decisions_total",
      help: "Admission decisions by pool, band and outcome: immediate, after_wait, queue_full, deadline_unmeetable, evicted, timed_out, cancelled, no_backend, shutting_down.",
      labelNames: ["pool", "band", "outcome"],
      registers,
      collect() {
        this.reset();
        for (const pool of metrics.upstreams?.pools.values() ?? []) {
          pool.admission.decisions.forEach((row, b) => {
            row.forEach((n, o) => {
              if (n > 0) {
                this.inc({ pool: pool.name, band: BAND_NAMES[b], outcome: ADMISSION_OUTCOMES[o] }, n);
              }
            });
          });
        }
      },
    });
    const waits = new Histogram({
      name: "floodgate_admission_wait_seconds",
      help: "Time requests waited in a pool's admission queue, however they left it.",
      labelNames: ["pool", "band"],
      buckets: WAIT_BUCKETS,
      registers,
    });
    this.admissionWaits = new Children((v) => waits.labels(...v));
    new Gauge({
      name: "floodgate_admission_queue_depth",
      help: "Requests waiting for a slot, by pool and band.",
      labelNames: ["pool", "band"],
      registers,
      collect() {
        for (const pool of metrics.upstreams?.pools.values() ?? []) {
          BAND_NAMES.forEach((band, i) => {
            this.set({ pool: pool.name, band }, pool.admission.queue.size(i));
          });
        }
      },
    });
    new Gauge({
      name: "floodgate_admission_drain_rate",
      help: "Slots a pool frees per second with every slot busy (measured per busy slot × slots).",
      labelNames: ["pool"],
      registers,
      collect() {
        for (const pool of metrics.upstreams?.pools.values() ?? []) {
          this.set({ pool: pool.name }, pool.admission.drainPerSecond());
        }
      },
    });

    const perBackend = this.backendGauge.bind(this);
    perBackend(
      "floodgate_backend_slots",
      "Slots (requests at once) of each backend: maxConcurrency, at most maxConnections.",
      (b) => b.maxConcurrency,
    );
    perBackend("floodgate_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", (b) =>
      b.breaker.state === "closed" ? 0 : b.breaker.state === "half_open" ? 1 : 2,
    );
    perBackend(
      "floodgate_backend_in_flight",
      "Requests in flight to each backend from this replica.",
      (b) => b.inFlight,
    );
    perBackend(
      "floodgate_backend_slot_share",
      "Slots of each backend this replica may use now, when replicas share slots (store.slots).",
      (b) => (Number.isFinite(b.share) ? b.share : undefined),
    );
    perBackend(
      "floodgate_backend_fleet_in_flight",
      "Requests in flight to each backend from all replicas, as last synced (shared slots).",
      (b) => (Number.isFinite(b.share) ? b.inFlight + b.othersInFlight : undefined),
    );
    new Gauge({
      name: "floodgate_fleet_replicas",
      help: "Live replicas sharing backend slots, as last synced (this one included).",
      registers,
      collect() {
        if (metrics.fleet) this.set(metrics.fleet.replicas);
      },
    });
    new Gauge({
      name: "floodgate_fleet_store_down",
      help: "1 while shared slots fall back to maxConcurrency / replicas because the store is down.",
      registers,
      collect() {
        if (metrics.fleet) this.set(metrics.fleet.storeDown ? 1 : 0);
      },
    });
    perBackend("floodgate_backend_healthy", "1 when active health checks pass (or are off), else 0.", (b) =>
      b.healthy ? 1 : 0,
    );
    perBackend("floodgate_backend_ejected", "1 while its circuit breaker keeps the backend out.", (b, now) =>
      b.admits(now) ? 0 : 1,
    );
    perBackend(
      "floodgate_backend_engine_waiting",
      "Requests queued in the engine, as last read from it.",
      (_b, _n, s) => s?.waiting,
    );
    perBackend(
      "floodgate_backend_engine_running",
      "Requests running in the engine, as last read from it.",
      (_b, _n, s) => s?.running,
    );
    perBackend(
      "floodgate_backend_engine_kv_cache_usage_ratio",
      "Engine KV-cache usage (0..1), as last read.",
      (_b, _n, s) => s?.kvCacheUsage,
    );
  }

  private backendGauge(
    name: string,
    help: string,
    read: (b: Backend, now: number, signal: LoadSignal | undefined) => number | undefined,
  ): void {
    const metrics = this;
    new Gauge({
      name,
      help,
      labelNames: ["pool", "backend"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const pool of metrics.upstreams?.pools.values() ?? []) {
          const now = pool.now();
          for (const b of pool.backends) {
            const value = read(b, now, pool.lastSignal(b));
            if (value !== undefined) this.set({ pool: pool.name, backend: b.name }, value);
          }
        }
      },
    });
  }

  /** Backend gauges read these pools at scrape time. */
  watch(upstreams: Upstreams): void {
    this.upstreams = upstreams;
  }

  /** Counters fed by the pools as things happen. */
  upstreamEvents(): UpstreamEvents {
    return {
      selected: (pool, backend) => this.selections.bind(pool, backend).inc(),
      attempted: (pool, backend, outcome) => this.attempts.bind(pool, backend, outcome).inc(),
      retried: (pool, reason) => this.retries.get(pool, reason).inc(),
      retryBudgetExhausted: (pool) => this.budgetExhausted.get(pool).inc(),
      ejected: (pool, backend, reason) => this.ejections.get(pool, backend, reason).inc(),
      breakerChanged: (pool, backend, state) => this.breakerTransitions.get(pool, backend, state).inc(),
      breakerRejected: (pool) => this.breakerRejections.get(pool).inc(),
    };
  }

  /** What admission control decides, as it decides. */
  admissionEvents(): AdmissionEvents {
    return {
      waited: (pool, band, seconds) => this.admissionWaits.get(pool, band).observe(seconds),
    };
  }

  watchCache(cache: ResponseCache): void {
    this.cache = cache;
  }

  observeCache(pool: string, status: CacheStatus): void {
    this.cacheResults.get(pool, status.toLowerCase()).inc();
  }

  cacheEvents(): CacheEvents {
    return {
      evicted: (reason) => this.cacheEvictions.get(reason).inc(),
      waited: () => this.cacheWaiters.inc(),
      lockTimedOut: () => this.cacheLockTimeouts.inc(),
      storeError: (operation) => this.storeErrors.get(`cache_${operation}`).inc(),
    };
  }

  /** Rate-limit and token decisions (tenant ids are bounded by config; keys never appear). */
  limitEvents(): LimitEvents & TokenEvents {
    return {
      decided: (limit, tenant, allowed) =>
        this.decisions.get(limit, tenant, allowed ? "allowed" : "limited").inc(),
      tokens: (tenant, kind, amount) => this.tokens.get(tenant, kind).inc(amount),
    };
  }

  guardEvents(logger: Logger): GuardEvents {
    let lastLog = 0;
    return {
      storeError: (operation) => {
        this.storeErrors.get(operation).inc();
        // One line per second at most: a dead Redis must not flood the log.
        const now = Date.now();
        if (now - lastLog > 1000) {
          lastLog = now;
          logger.warn({ operation }, "shared store unavailable: limits follow their onStoreError policy");
        }
      },
      withoutStore: (limit, policy) => this.withoutStore.get(limit, policy).inc(),
    };
  }

  observeRequest(labels: RequestLabels, seconds: number): void {
    const values = [labels.route, labels.model, labels.pool, labels.statusClass] as const;
    const series =
      this.requestSeries.get(values) ??
      this.requestSeries.add(values, {
        count: this.requests.bind(...values),
        duration: this.duration.bind(...values),
      });
    series.count.inc();
    series.duration.observe(seconds);
  }

  observeReload(result: "success" | "failure"): void {
    this.reloads.inc({ result });
    if (result === "success") this.lastReload.set(Date.now() / 1000);
  }

  observeFallback(from: string, to: string): void {
    this.fallbacks.get(from, to).inc();
  }

  observeFirstByte(pool: string, backend: string, seconds: number): void {
    this.firstByte.bind(pool, backend).observe(seconds);
  }
}
