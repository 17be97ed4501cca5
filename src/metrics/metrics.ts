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
import type { MicroBatchEvents } from "../stages/micro-batch.js";
import { CallTally } from "../store/redis-calls.js";
import type { Backend } from "../upstream/backend.js";
import type { FleetSlots } from "../upstream/fleet.js";
import type { LoadSignal } from "../upstream/load-signals.js";
import type { UpstreamEvents, Upstreams } from "../upstream/pool.js";
import { type CounterSeries, FastCounter, FastHistogram, type HistogramSeries, SeriesIndex } from "./fast.js";

/** Queue waits: from a few ms (interactive) to minutes (background). */
const WAIT_BUCKETS = [0.005, 0.025, 0.1, 0.25, 0.5, 1, 1.5, 2, 5, 10, 30, 60, 300];
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/**
 * Time to first token, after the OpenTelemetry GenAI conventions' advisory buckets for
 * gen_ai.server.time_to_first_token (1 ms to 10 s), extended for whole buffered answers.
 */
const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160,
];
/** Time per output token: the GenAI conventions' buckets, with a few below 10 ms for small models. */
const TPOT_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5,
];
/** floodgate's own part of a request: tens of microseconds when all is well. */
const OVERHEAD_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
];
/** Requests, or inputs, in one merged embeddings call: powers of two up to OpenAI's 2048 inputs. */
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];
const STATUS_CLASSES = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];
const BREAKER_STATES = ["closed", "half_open", "open"] as const;

/** What the job runner tells the catalogue as it happens (src/jobs). */
export interface JobEvents {
  submitted(tenant: string): void;
  finished(state: "succeeded" | "failed" | "cancelled"): void;
  /** A held job given back to the queue: refused for load, the replica stopping, a failed run. */
  released(reason: "load" | "stopping" | "error"): void;
  /** A running job this replica no longer holds (cancelled, or its lease lapsed and was taken). */
  lost(): void;
}

/** The jobs queue as the gauges read it at scrape time. */
export interface JobsView {
  /** Jobs queued and due, all tenants (a store call). */
  depth(): Promise<number>;
  /** Jobs this replica runs now. */
  readonly running: number;
}

/** One finished request, as the catalogue sees it (every string bounded by the config). */
export interface RequestObservation {
  route: string;
  model: string;
  pool: string;
  tenant: string;
  status: number;
  /** The gateway's error code ("client_closed" when the client left first), "" for none. */
  error: string;
  stream: boolean;
  seconds: number;
  /** Client-observed time to the first token (2xx answers of the LLM routes only). */
  firstTokenSeconds: number | undefined;
  /** A stream's time per output token after the first. */
  outputTokenSeconds: number | undefined;
  /** Tokens the backend reported in `usage`. */
  promptTokens: number | undefined;
  completionTokens: number | undefined;
  /** Time in floodgate itself: the duration less the upstream's part and the admission wait. */
  overheadSeconds: number;
}

/**
 * Every series one request label set updates, found with one lookup per request. The LLM ones
 * are bound on first use, so that a refusal's label set makes no empty token or latency series.
 */
interface RequestSeries {
  readonly pool: string;
  readonly model: string;
  readonly tenant: string;
  readonly stream: string;
  count: CounterSeries;
  duration: HistogramSeries;
  overhead: HistogramSeries;
  firstToken: HistogramSeries | undefined;
  outputToken: HistogramSeries | undefined;
  promptTokens: CounterSeries | undefined;
  completionTokens: CounterSeries | undefined;
}

/** Status codes as label values, made once each. */
const CODES: string[] = [];
function codeLabel(status: number): string {
  let code = CODES[status];
  if (code === undefined) {
    code = String(status);
    if (status >= 0 && status < 1000) CODES[status] = code;
  }
  return code;
}

/** The cache statuses as `result` label values. */
const RESULT_LABELS: Readonly<Record<CacheStatus, string>> = {
  HIT: "hit",
  MISS: "miss",
  STALE: "stale",
  BYPASS: "bypass",
};

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
  private readonly requests: FastCounter<"route" | "model" | "pool" | "tenant" | "code" | "error">;
  private readonly duration: FastHistogram<"route" | "model" | "pool" | "tenant" | "stream" | "status_class">;
  private readonly firstToken: FastHistogram<"pool" | "model" | "tenant" | "stream">;
  private readonly outputToken: FastHistogram<"pool" | "model" | "tenant">;
  private readonly tokensUsed: FastCounter<"pool" | "model" | "tenant" | "type">;
  private readonly overhead: FastHistogram<"pool">;
  private readonly requestSeries = new SeriesIndex<RequestSeries>();
  private readonly firstByte: FastHistogram<"pool" | "backend">;
  private readonly selections: FastCounter<"pool" | "backend">;
  private readonly attempts: FastCounter<"pool" | "backend" | "outcome">;
  private readonly retries: Children<Counter.Internal>;
  private readonly budgetExhausted: Children<Counter.Internal>;
  private readonly ejections: Children<Counter.Internal>;
  private readonly fallbacks: Children<Counter.Internal>;
  private readonly breakerTransitions: Children<Counter.Internal>;
  private readonly breakerRejections: Children<Counter.Internal>;
  // Updated per limit per request: the fast kind (a prom-client child cost 1.2 µs an inc()).
  private readonly decisions: FastCounter<"limit" | "tenant" | "decision">;
  private readonly tokens: FastCounter<"tenant" | "kind">;
  private readonly storeErrors: Children<Counter.Internal>;
  private readonly withoutStore: Children<Counter.Internal>;
  private readonly cacheResults: Children<Counter.Internal>;
  /** Each pool's four result counters, bound once: a hit is counted without a label lookup. */
  private readonly cacheByPool = new Map<string, Partial<Record<CacheStatus, Counter.Internal>>>();
  private readonly cacheEvictions: Children<Counter.Internal>;
  private readonly cacheWaiters: Counter;
  private readonly admissionWaits: Children<Histogram.Internal<string>>;
  private readonly cacheLockTimeouts: Counter;
  private readonly batchRequests: Children<Histogram.Internal<string>>;
  private readonly batchInputs: Children<Histogram.Internal<string>>;
  private readonly batchFlushes: Children<Counter.Internal>;
  private readonly batchOutcomes: Children<Counter.Internal>;
  private readonly batchWaiting: Children<Gauge.Internal<string>>;
  private readonly reloads: Counter<"result">;
  private readonly lastReload: Gauge;
  private cache: ResponseCache | undefined;
  private upstreams: Upstreams | undefined;
  /** Set when replicas share backend slots. */
  fleet: FleetSlots | undefined;
  /** The limits' guarded store, for floodgate_store_degraded. */
  store: { readonly degraded: boolean } | undefined;
  /** The jobs queue and runner, once jobs are on. */
  jobs: JobsView | undefined;
  /** Round trips to Redis by operation, counted by the store and the jobs queue. */
  readonly storeCalls = new CallTally();
  private readonly jobsSubmitted: Counter<"tenant">;
  private readonly jobsFinished: Counter<"state">;
  private readonly jobsReleased: Counter<"reason">;
  private readonly jobsLost: Counter;

  constructor(options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.processMetrics ?? true) {
      collectDefaultMetrics({ register: this.registry, prefix: "floodgate_" });
      // Gauges named like counters (promtool rejects them); the same counts by type remain as
      // floodgate_nodejs_active_{handles,requests,resources}.
      for (const kind of ["handles", "requests", "resources"]) {
        this.registry.removeSingleMetric(`floodgate_nodejs_active_${kind}_total`);
      }
    }
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
      help: "Client requests answered, by route, model, pool, tenant, HTTP status code and the gateway's error code (client_closed: the client left first; empty: the backend's or the cache's own answer).",
      labelNames: ["route", "model", "pool", "tenant", "code", "error"],
      registers,
    });
    this.duration = new FastHistogram(
      {
        name: "floodgate_request_duration_seconds",
        help: "Time from request received to response finished, streams included.",
        labelNames: ["route", "model", "pool", "tenant", "stream", "status_class"],
        registers,
      },
      LATENCY_BUCKETS,
    );
    this.firstToken = new FastHistogram(
      {
        name: "floodgate_time_to_first_token_seconds",
        help: "Client-observed time from request received to the first data event of a stream, or to the end of a buffered answer (successful answers of the OpenAI routes).",
        labelNames: ["pool", "model", "tenant", "stream"],
        registers,
      },
      TTFT_BUCKETS,
    );
    this.outputToken = new FastHistogram(
      {
        name: "floodgate_time_per_output_token_seconds",
        help: "A successful stream's time per output token after the first: (end - first token) / (completion tokens - 1).",
        labelNames: ["pool", "model", "tenant"],
        registers,
      },
      TPOT_BUCKETS,
    );
    this.tokensUsed = new FastCounter({
      name: "floodgate_tokens_total",
      help: "Tokens the backends reported in usage, by pool, model, tenant and type (prompt, completion); cache hits are not counted.",
      labelNames: ["pool", "model", "tenant", "type"],
      registers,
    });
    this.overhead = new FastHistogram(
      {
        name: "floodgate_overhead_seconds",
        help: "Time spent in floodgate itself: request duration less the time backend slots were held and the admission queue wait.",
        labelNames: ["pool"],
        registers,
      },
      OVERHEAD_BUCKETS,
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

    this.decisions = new FastCounter({
      name: "floodgate_ratelimit_decisions_total",
      help: "Rate-limit decisions, by limit, tenant and decision (allowed, limited).",
      labelNames: ["limit", "tenant", "decision"],
      registers,
    });
    this.tokens = new FastCounter({
      name: "floodgate_ratelimit_tokens_total",
      help: "LLM tokens by tenant and kind: reserved before, settled to real usage after, refunded, charged beyond.",
      labelNames: ["tenant", "kind"],
      registers,
    });
    const storeErrors = counter(
      "floodgate_store_errors_total",
      "Shared store (Redis) calls that failed, once per request that needed them (requests sharing one failed call count one each).",
      ["operation"],
    );
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
      help: "Bytes of cached answers: in this process (memory, with the keys of request bodies already keyed), and written to the store by it and unexpired (store).",
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
    new Counter({
      name: "floodgate_affinity_decisions_total",
      help: "Prefix-affinity picks by pool and outcome: home (the key's backend: with cacheTokens, the one holding its longest prefix), spilled (its home was at the load bound), home_unavailable (its home could not serve), placed (with cacheTokens: no backend held its prefix).",
      labelNames: ["pool", "outcome"],
      registers,
      collect() {
        this.reset();
        for (const pool of metrics.upstreams?.pools.values() ?? []) {
          if (pool.config.affinity.by === "off") continue;
          for (const [outcome, n] of Object.entries(pool.affinityDecisions)) {
            this.inc({ pool: pool.name, outcome }, n);
          }
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
            this.set({ pool: pool.name, band }, pool.admission.waiting(i));
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

    const batchRequests = new Histogram({
      name: "floodgate_microbatch_batch_requests",
      help: "Client requests in each embeddings call sent upstream from a batch (1: nobody shared it; the request went as it came).",
      labelNames: ["pool"],
      buckets: BATCH_BUCKETS,
      registers,
    });
    this.batchRequests = new Children((v) => batchRequests.labels(...v));
    const batchInputs = new Histogram({
      name: "floodgate_microbatch_batch_inputs",
      help: "Inputs in each embeddings call sent upstream from a batch.",
      labelNames: ["pool"],
      buckets: BATCH_BUCKETS,
      registers,
    });
    this.batchInputs = new Children((v) => batchInputs.labels(...v));
    const flushes = counter(
      "floodgate_microbatch_flushes_total",
      "Embeddings batches sent to wait for a backend slot, by reason: window (batchWindow ended), max_inputs or max_tokens (full). A batch waiting for a slot still takes requests.",
      ["pool", "reason"],
    );
    this.batchFlushes = new Children((v) => flushes.labels(...v));
    const outcomes = counter(
      "floodgate_microbatch_requests_total",
      "Embeddings requests on batching pools by outcome: merged, single (alone in its window), unmergeable (input form or size), apart (sent alone after the merged call failed), left (the client left first).",
      ["pool", "outcome"],
    );
    this.batchOutcomes = new Children((v) => outcomes.labels(...v));
    const waiting = new Gauge({
      name: "floodgate_microbatch_waiting",
      help: "Embeddings requests in a pool's batches whose call does not hold a backend slot yet.",
      labelNames: ["pool"],
      registers,
    });
    this.batchWaiting = new Children((v) => waiting.labels(...v));

    const perBackend = this.backendGauge.bind(this);
    perBackend(
      "floodgate_backend_slots",
      "Slots (requests at once) of each backend: maxConcurrency, at most maxConnections.",
      (b) => b.maxConcurrency,
    );
    new Gauge({
      name: "floodgate_breaker_state",
      help: "Circuit breaker state of each backend: one series per state (closed, half_open, open), 1 for the state it is in.",
      labelNames: ["pool", "backend", "state"],
      registers,
      collect() {
        this.reset();
        for (const pool of metrics.upstreams?.pools.values() ?? []) {
          for (const b of pool.backends) {
            for (const state of BREAKER_STATES) {
              this.set({ pool: pool.name, backend: b.name, state }, b.breaker.state === state ? 1 : 0);
            }
          }
        }
      },
    });
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
    new Counter({
      name: "floodgate_store_calls_total",
      help: "Calls this replica made to the shared store (Redis), by operation: one round trip each; one take call can decide several requests.",
      labelNames: ["operation"],
      registers,
      collect() {
        this.reset();
        for (const [operation, calls] of metrics.storeCalls.counts) this.inc({ operation }, calls);
      },
    });
    new Gauge({
      name: "floodgate_store_degraded",
      help: "1 while limits run on the in-process fallback because the shared store (Redis) keeps failing, else 0.",
      registers,
      collect() {
        this.set(metrics.store?.degraded ? 1 : 0);
      },
    });
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
    this.jobsSubmitted = counter(
      "floodgate_jobs_submitted_total",
      "Async requests accepted as jobs (202), by tenant.",
      ["tenant"],
    );
    this.jobsFinished = counter(
      "floodgate_jobs_finished_total",
      "Jobs ended by this replica, by state: succeeded (a 2xx answer), failed (any other answer), cancelled.",
      ["state"],
    );
    for (const state of ["succeeded", "failed", "cancelled"]) this.jobsFinished.inc({ state }, 0);
    this.jobsReleased = counter(
      "floodgate_jobs_released_total",
      "Jobs this replica gave back to the queue to run later, by reason: load (refused for load, retried after its retry-after), stopping (shutdown), error (the run itself failed).",
      ["reason"],
    );
    this.jobsLost = counter(
      "floodgate_jobs_lost_total",
      "Running jobs this replica stopped because it no longer held them (cancelled, or its lease lapsed and another replica took it).",
      [],
    );
    new Gauge({
      name: "floodgate_jobs_queue_depth",
      help: "Jobs queued and due to run, all tenants, as the jobs queue (the store) counts them.",
      registers,
      async collect() {
        const jobs = metrics.jobs;
        if (!jobs) return;
        try {
          this.set(await jobs.depth());
        } catch {
          // The store is down: no reading rather than a failed scrape.
        }
      },
    });
    new Gauge({
      name: "floodgate_jobs_running",
      help: "Jobs this replica runs now.",
      registers,
      collect() {
        if (metrics.jobs) this.set(metrics.jobs.running);
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
    perBackend(
      "floodgate_backend_engine_prefix_cache_hit_ratio",
      "Engine prefix-cache hit ratio (0..1, in prompt tokens) between its last two readings, or its own gauge.",
      (_b, _n, s) => s?.prefixCacheHitRatio,
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
    let byStatus = this.cacheByPool.get(pool);
    if (byStatus === undefined) {
      byStatus = {};
      this.cacheByPool.set(pool, byStatus);
    }
    // Bound at a pool's first request of each result, so a result never seen has no series.
    let counter = byStatus[status];
    if (counter === undefined) {
      counter = this.cacheResults.get(pool, RESULT_LABELS[status]);
      byStatus[status] = counter;
    }
    counter.inc();
  }

  cacheEvents(): CacheEvents {
    return {
      evicted: (reason) => this.cacheEvictions.get(reason).inc(),
      waited: () => this.cacheWaiters.inc(),
      lockTimedOut: () => this.cacheLockTimeouts.inc(),
      storeError: (operation) => this.storeErrors.get(`cache_${operation}`).inc(),
    };
  }

  /** What embeddings micro-batching does, per batch and per request. */
  microBatchEvents(): MicroBatchEvents {
    return {
      flushed: (pool, reason) => this.batchFlushes.get(pool, reason).inc(),
      sent: (pool, requests, inputs) => {
        this.batchRequests.get(pool).observe(requests);
        this.batchInputs.get(pool).observe(inputs);
      },
      request: (pool, outcome) => this.batchOutcomes.get(pool, outcome).inc(),
      waiting: (pool, delta) => this.batchWaiting.get(pool).inc(delta),
    };
  }

  /** Rate-limit and token decisions (tenant ids are bounded by config; keys never appear). */
  limitEvents(): LimitEvents & TokenEvents {
    return {
      decided: (limit, tenant, allowed) =>
        this.decisions.bind(limit, tenant, allowed ? "allowed" : "limited").inc(),
      tokens: (tenant, kind, amount) => this.tokens.bind(tenant, kind).inc(amount),
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

  observeRequest(r: RequestObservation): void {
    const code = codeLabel(r.status);
    const stream = r.stream ? "true" : "false";
    const values = [r.route, r.model, r.pool, r.tenant, code, r.error, stream] as const;
    const series = this.requestSeries.get(values) ?? this.addRequestSeries(r, code, stream, values);
    series.count.inc();
    series.duration.observe(r.seconds);
    series.overhead.observe(r.overheadSeconds);
    if (r.firstTokenSeconds !== undefined) {
      series.firstToken ??= this.firstToken.bind(series.pool, series.model, series.tenant, series.stream);
      series.firstToken.observe(r.firstTokenSeconds);
    }
    if (r.outputTokenSeconds !== undefined) {
      series.outputToken ??= this.outputToken.bind(series.pool, series.model, series.tenant);
      series.outputToken.observe(r.outputTokenSeconds);
    }
    if (r.promptTokens !== undefined) {
      series.promptTokens ??= this.tokensUsed.bind(series.pool, series.model, series.tenant, "prompt");
      series.promptTokens.inc(r.promptTokens);
    }
    if (r.completionTokens !== undefined) {
      series.completionTokens ??= this.tokensUsed.bind(
        series.pool,
        series.model,
        series.tenant,
        "completion",
      );
      series.completionTokens.inc(r.completionTokens);
    }
  }

  private addRequestSeries(
    r: RequestObservation,
    code: string,
    stream: string,
    values: readonly string[],
  ): RequestSeries {
    const statusClass = STATUS_CLASSES[Math.floor(r.status / 100)] ?? "other";
    return this.requestSeries.add(values, {
      pool: r.pool,
      model: r.model,
      tenant: r.tenant,
      stream,
      count: this.requests.bind(r.route, r.model, r.pool, r.tenant, code, r.error),
      duration: this.duration.bind(r.route, r.model, r.pool, r.tenant, stream, statusClass),
      overhead: this.overhead.bind(r.pool),
      firstToken: undefined,
      outputToken: undefined,
      promptTokens: undefined,
      completionTokens: undefined,
    });
  }

  jobEvents(): JobEvents {
    return {
      submitted: (tenant) => this.jobsSubmitted.inc({ tenant }),
      finished: (state) => this.jobsFinished.inc({ state }),
      released: (reason) => this.jobsReleased.inc({ reason }),
      lost: () => this.jobsLost.inc(),
    };
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
