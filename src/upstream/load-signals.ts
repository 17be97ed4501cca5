/**
 * Engine load signals: what an inference server says about its own queue and KV cache, scraped
 * from its Prometheus /metrics, so the balancer can see load that floodgate's own in-flight
 * counters cannot (other gateways' replicas, clients that bypass the gateway, long prompts).
 *
 * Metric names per engine (each engine's metrics reference page):
 *
 * | engine   | waiting (queued)             | running (in the batch)         | KV-cache usage, fraction 0..1                              |
 * | -------- | ---------------------------- | ------------------------------ | ---------------------------------------------------------- |
 * | vllm     | `vllm:num_requests_waiting`  | `vllm:num_requests_running`    | `vllm:kv_cache_usage_perc` (newer, V1 engine), else `vllm:gpu_cache_usage_perc` (older) |
 * | sglang   | `sglang:num_queue_reqs`      | `sglang:num_running_reqs`      | `sglang:token_usage` (token pool in use)                   |
 * | tgi      | `tgi_queue_size`             | `tgi_batch_current_size`       | none: undefined                                            |
 * | llamacpp | `llamacpp:requests_deferred` | `llamacpp:requests_processing` | `llamacpp:kv_cache_usage_ratio` (dropped by newer builds: undefined) |
 * | ollama   | no /metrics: not scraped     |                                |                                                            |
 * | openai   | no /metrics: not scraped     |                                |                                                            |
 *
 * Sources: vLLM "Production Metrics" (docs.vllm.ai, usage/metrics); SGLang "Production Metrics"
 * (docs.sglang.io, references/production_metrics, needs `--enable-metrics`); TGI "Metrics"
 * (huggingface.co/docs/text-generation-inference/reference/metrics); llama.cpp server README,
 * GET /metrics (needs `--metrics`).
 *
 * Prefix-cache hit ratio (metrics and status only; the balancer does not use it): vLLM's counters
 * `vllm:prefix_cache_hits_total` ÷ `vllm:prefix_cache_queries_total` (prompt tokens) between
 * two readings, else the older `vllm:gpu_prefix_cache_hit_rate` gauge; SGLang's
 * `sglang:cache_hit_rate` gauge. TGI and llama.cpp publish none.
 *
 * A metric with several label sets (vLLM and SGLang label by model_name, and per data-parallel
 * engine or rank) is one server's load split up: counts are summed; usage fractions take the
 * max, since the fullest cache is the one that starts preempting. NaN and ±Inf samples are
 * ignored: they say nothing about load.
 *
 * The balancer's penalty (≥ 1, 1 = idle):
 *
 *   penalty = 1 + waiting + 10 × max(0, kvCacheUsage − 0.8)
 *
 * Why: `running` is left out because the balancer already weighs in-flight requests, and a
 * running sequence shares the batch at little marginal cost; a *waiting* request is the one
 * that pays latency, each one adding about one request's worth of delay, hence +1 each. KV usage
 * costs nothing until the cache is nearly full, after which new sequences get preempted or
 * stall; the penalty ramps from 0 at 80 % to +2 at 100 %, i.e. a full cache counts like two
 * queued requests. No reading, or one older than staleAfterMs, is UNKNOWN_PENALTY = 2: unknown is
 * not idle, so a backend whose metrics went silent is not preferred over one that reports an
 * idle queue, yet is not shunned either (its health is the health checker's business).
 */

import { request } from "undici";
import type { Engine } from "../config/index.js";
import { parsePrometheusText, type Sample } from "./prometheus-text.js";

export interface LoadSignal {
  /** Requests queued at the engine, not yet in a batch. */
  waiting: number;
  /** Requests in the running batch. */
  running: number;
  /** KV-cache (or token pool) usage 0..1; undefined when the engine does not publish it. */
  kvCacheUsage: number | undefined;
  /**
   * The engine's prefix-cache hit ratio 0..1 (prompt tokens found cached ÷ prompt tokens
   * looked up) since the previous reading, or as the engine's own gauge states it; the last
   * known one while no prompt arrived; undefined when the engine publishes neither.
   */
  prefixCacheHitRatio?: number;
  /** The engine's prefix-cache counters (vLLM, in prompt tokens), for the next reading's ratio. */
  prefixCache?: { hits: number; queries: number };
  /** performance.now() of the reading. */
  at: number;
}

interface EngineMetrics {
  waiting: string;
  running: string;
  /** Candidates in order of preference; the first one present wins. */
  kvCache: readonly string[];
  /** Prefix-cache counters (hits, queries), summed over label sets. */
  prefixHits?: readonly string[];
  prefixQueries?: readonly string[];
  /** A prefix-cache hit-rate gauge (0..1), averaged over label sets, when there are no counters. */
  prefixHitRate?: readonly string[];
}

// A Record over every Engine, so adding an engine to the config forces a decision here.
const ENGINE_METRICS: Readonly<Record<Engine, EngineMetrics | undefined>> = {
  vllm: {
    waiting: "vllm:num_requests_waiting",
    running: "vllm:num_requests_running",
    // Renamed in vLLM's v1 engine; some versions publish both, the new one is authoritative.
    kvCache: ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
    // V1 counters in prompt tokens (the client library adds _total; some scrapes show both).
    prefixHits: ["vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"],
    prefixQueries: ["vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"],
    // The older engine's gauge.
    prefixHitRate: ["vllm:gpu_prefix_cache_hit_rate"],
  },
  sglang: {
    waiting: "sglang:num_queue_reqs",
    running: "sglang:num_running_reqs",
    kvCache: ["sglang:token_usage"],
    prefixHitRate: ["sglang:cache_hit_rate"],
  },
  tgi: { waiting: "tgi_queue_size", running: "tgi_batch_current_size", kvCache: [] },
  llamacpp: {
    waiting: "llamacpp:requests_deferred",
    running: "llamacpp:requests_processing",
    kvCache: ["llamacpp:kv_cache_usage_ratio"],
  },
  ollama: undefined,
  openai: undefined,
};

export function engineHasMetrics(engine: Engine): boolean {
  return ENGINE_METRICS[engine] !== undefined;
}

/** Extract a LoadSignal from parsed samples for an engine; undefined when none of its metrics are present. */
export function extractSignal(engine: Engine, samples: Sample[], at: number): LoadSignal | undefined {
  const metrics = ENGINE_METRICS[engine];
  if (metrics === undefined) return undefined;
  let waiting: number | undefined;
  let running: number | undefined;
  const kv = new Map<string, number>();
  const hits = new Map<string, number>();
  const queries = new Map<string, number>();
  const rates = new Map<string, { sum: number; n: number }>();
  for (const { name, value } of samples) {
    if (!Number.isFinite(value)) continue;
    if (name === metrics.waiting) waiting = (waiting ?? 0) + value;
    else if (name === metrics.running) running = (running ?? 0) + value;
    else if (metrics.kvCache.includes(name)) kv.set(name, Math.max(kv.get(name) ?? 0, value));
    else if (metrics.prefixHits?.includes(name)) hits.set(name, (hits.get(name) ?? 0) + value);
    else if (metrics.prefixQueries?.includes(name)) queries.set(name, (queries.get(name) ?? 0) + value);
    else if (metrics.prefixHitRate?.includes(name)) {
      const r = rates.get(name) ?? { sum: 0, n: 0 };
      r.sum += value;
      r.n++;
      rates.set(name, r);
    }
  }
  const kvName = metrics.kvCache.find((name) => kv.has(name));
  const kvCacheUsage = kvName === undefined ? undefined : kv.get(kvName);
  if (waiting === undefined && running === undefined && kvCacheUsage === undefined) return undefined;
  const signal: LoadSignal = {
    // A count the engine did not publish is taken as 0: the others still describe its load.
    waiting: Math.max(0, waiting ?? 0),
    running: Math.max(0, running ?? 0),
    kvCacheUsage: kvCacheUsage === undefined ? undefined : clamp01(kvCacheUsage),
    at,
  };
  const hitsName = metrics.prefixHits?.find((name) => hits.has(name));
  const queriesName = metrics.prefixQueries?.find((name) => queries.has(name));
  if (hitsName !== undefined && queriesName !== undefined) {
    signal.prefixCache = { hits: hits.get(hitsName) ?? 0, queries: queries.get(queriesName) ?? 0 };
  } else {
    const rateName = metrics.prefixHitRate?.find((name) => rates.has(name));
    const rate = rateName === undefined ? undefined : rates.get(rateName);
    if (rate !== undefined) signal.prefixCacheHitRatio = clamp01(rate.sum / rate.n);
  }
  return signal;
}

function clamp01(v: number): number {
  return Math.min(1, Math.max(0, v));
}

/**
 * The hit ratio of a reading with prefix-cache counters: over the prompt tokens looked up since
 * the previous reading; the previous ratio while none were (an idle engine keeps its last
 * figure); undefined on the first reading or after the engine restarted (counters went back).
 */
export function prefixCacheRatio(previous: LoadSignal | undefined, next: LoadSignal): number | undefined {
  const now = next.prefixCache;
  const before = previous?.prefixCache;
  if (now === undefined) return next.prefixCacheHitRatio;
  if (before === undefined) return undefined;
  const queries = now.queries - before.queries;
  const hits = now.hits - before.hits;
  if (queries < 0 || hits < 0) return undefined;
  if (queries === 0) return previous?.prefixCacheHitRatio;
  return clamp01(hits / queries);
}

/**
 * The balancer's load penalty ≥ 1 (1 = idle): 1 + waiting + 10 × max(0, kvCacheUsage − 0.8).
 * Unknown (no reading, or older than staleAfterMs) is UNKNOWN_PENALTY = 2 — "unknown is not idle".
 */
export const UNKNOWN_PENALTY = 2;

/** Above this KV usage, new sequences start to be preempted or stall. */
const KV_PRESSURE_FROM = 0.8;
/** Makes a full cache (0.2 above the threshold) weigh like two queued requests. */
const KV_PRESSURE_WEIGHT = 10;

export function loadPenalty(signal: LoadSignal | undefined, now: number, staleAfterMs: number): number {
  if (signal === undefined || now - signal.at > staleAfterMs) return UNKNOWN_PENALTY;
  const waiting = Number.isFinite(signal.waiting) ? Math.max(0, signal.waiting) : 0;
  const kv = signal.kvCacheUsage ?? 0;
  const kvPressure = Number.isFinite(kv) ? Math.max(0, kv - KV_PRESSURE_FROM) : 0;
  return 1 + waiting + KV_PRESSURE_WEIGHT * kvPressure;
}

export interface ScrapeTarget {
  name: string;
  origin: string;
  basePath: string;
  engine: Engine;
  headers: ReadonlyArray<readonly [string, string]>;
}

export interface ScraperOptions {
  intervalMs: number;
  timeoutMs: number;
  staleAfterMs: number;
  now?: () => number;
}

/** vLLM with many models and histograms runs to a few hundred kB; more is not a metrics page. */
const MAX_BODY_BYTES = 8 * 1024 * 1024;
/** ±10 % around intervalMs, so replicas started together drift apart instead of scraping in lockstep. */
const JITTER = 0.1;
/**
 * prometheus_client (vLLM, SGLang) answers OpenMetrics only when asked for it; ask for the
 * classic text format, which is what the parser reads.
 */
const ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

/** Scrapes one backend's /metrics every intervalMs with a small random jitter (±10%) so replicas do not scrape in lockstep; never throws; a failed or timed-out scrape leaves the previous reading to go stale. Uses undici `request` (one-off, with the target's headers and a timeout via AbortSignal). start() does the first scrape at once. stop() clears timers and aborts an in-flight scrape. The timer must be unref()'d. */
export class LoadSignalScraper {
  private readonly url: string;
  private readonly headers: string[];
  private readonly now: () => number;
  private reading: LoadSignal | undefined;
  private state: "idle" | "running" | "stopped" = "idle";
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> | undefined;
  private controller: AbortController | undefined;

  constructor(
    private readonly target: ScrapeTarget,
    private readonly options: ScraperOptions,
    private readonly onReading?: (signal: LoadSignal | undefined) => void,
  ) {
    for (const key of ["intervalMs", "timeoutMs"] as const) {
      const v = options[key];
      if (!Number.isFinite(v) || v <= 0) throw new RangeError(`${key} must be > 0, got ${String(v)}`);
    }
    if (!(options.staleAfterMs >= 0)) {
      throw new RangeError(`staleAfterMs must be >= 0, got ${String(options.staleAfterMs)}`);
    }
    this.url = `${target.origin}${target.basePath}/metrics`;
    const headers = target.headers.map(([k, v]) => [k.toLowerCase(), v] as const);
    if (!headers.some(([k]) => k === "accept")) headers.push(["accept", ACCEPT]);
    // undici takes a flat [name, value, ...] list, which keeps repeated names intact.
    this.headers = headers.flat();
    this.now = options.now ?? (() => performance.now());
  }

  start(): void {
    if (this.state === "running" || !engineHasMetrics(this.target.engine)) return;
    this.state = "running";
    void this.attempt();
  }

  stop(): void {
    this.state = "stopped";
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.controller?.abort();
  }

  /** The last reading, or undefined if none yet or stale. */
  current(): LoadSignal | undefined {
    const r = this.reading;
    if (r === undefined || this.now() - r.at > this.options.staleAfterMs) return undefined;
    return r;
  }

  /** The last reading regardless of staleness (for metrics). */
  get last(): LoadSignal | undefined {
    return this.reading;
  }

  /**
   * Resolves after the next completed scrape attempt (for tests). It starts one now (after any
   * in-flight one, so that a reading taken before the call is not mistaken for the next one);
   * a no-op once stopped or for an engine without metrics.
   */
  scrapeNow(): Promise<void> {
    if (!engineHasMetrics(this.target.engine)) return Promise.resolve();
    return this.attempt();
  }

  /** One scrape at a time: a slow backend must not collect a pile of concurrent scrapes. */
  private attempt(): Promise<void> {
    if (this.state === "stopped") return Promise.resolve();
    if (this.inFlight !== undefined) return this.inFlight.then(() => this.attempt());
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    const run = this.scrapeOnce().finally(() => {
      this.inFlight = undefined;
      if (this.state === "running") this.scheduleNext();
    });
    this.inFlight = run;
    return run;
  }

  private scheduleNext(): void {
    const delay = this.options.intervalMs * (1 - JITTER + 2 * JITTER * Math.random());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.attempt();
    }, delay);
    // Scraping is advice: it must never keep the process alive on its own.
    this.timer.unref();
  }

  private async scrapeOnce(): Promise<void> {
    const controller = new AbortController();
    this.controller = controller;
    const signal = AbortSignal.any([controller.signal, AbortSignal.timeout(this.options.timeoutMs)]);
    let reading: LoadSignal | undefined;
    try {
      const res = await request(this.url, { method: "GET", headers: this.headers, signal });
      if (res.statusCode !== 200) {
        await res.body.dump();
      } else {
        const text = await readCapped(res.body, MAX_BODY_BYTES);
        if (text !== undefined && !signal.aborted) {
          reading = extractSignal(this.target.engine, parsePrometheusText(text), this.now());
        }
      }
    } catch {
      // Refused, reset, timed out or aborted by stop(): the previous reading stays and goes stale.
    } finally {
      if (this.controller === controller) this.controller = undefined;
    }
    // stop() may land while the body is parsed; a stopped scraper reports nothing more.
    if (controller.signal.aborted) return;
    if (reading !== undefined) {
      if (reading.prefixCache !== undefined)
        reading.prefixCacheHitRatio = prefixCacheRatio(this.reading, reading);
      this.reading = reading;
    }
    try {
      this.onReading?.(reading);
    } catch {
      // A listener's bug must not stop the scrape loop.
    }
  }
}

/** The body as text, or undefined (body destroyed) when it exceeds maxBytes. */
async function readCapped(
  body: AsyncIterable<Buffer> & { destroy(): unknown },
  maxBytes: number,
): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > maxBytes) {
      body.destroy();
      return undefined;
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}
