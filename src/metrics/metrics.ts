/**
 * The metric catalogue. One prom-client Registry per app instance, so tests can run several
 * gateways in one process. Label values are bounded: route templates, configured model and pool
 * names (an unknown model is "unknown"), status classes. API keys never appear.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { Upstreams } from "../upstream/pool.js";

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export interface RequestLabels {
  route: string;
  model: string;
  pool: string;
  statusClass: string;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<"route" | "model" | "pool" | "status_class">;
  private readonly duration: Histogram<"route" | "model" | "pool" | "status_class">;
  private readonly firstByte: Histogram<"pool" | "backend">;
  /** Bound children by label tuple: prom-client hashes labels on every call otherwise. */
  private readonly children = new Map<
    string,
    { count: Counter.Internal; seconds: Histogram.Internal<string> }
  >();
  private readonly firstByteChildren = new Map<string, Histogram.Internal<string>>();

  constructor(upstreams: Upstreams, options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.processMetrics ?? true)
      collectDefaultMetrics({ register: this.registry, prefix: "floodgate_" });
    this.requests = new Counter({
      name: "floodgate_requests_total",
      help: "Client requests answered, by route, model, pool and status class.",
      labelNames: ["route", "model", "pool", "status_class"],
      registers,
    });
    this.duration = new Histogram({
      name: "floodgate_request_duration_seconds",
      help: "Time from request received to response finished, streams included.",
      labelNames: ["route", "model", "pool", "status_class"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.firstByte = new Histogram({
      name: "floodgate_upstream_first_byte_seconds",
      help: "Time from sending a request upstream to the backend's response headers.",
      labelNames: ["pool", "backend"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    new Gauge({
      name: "floodgate_backend_in_flight",
      help: "Requests in flight to each backend from this replica.",
      labelNames: ["pool", "backend"],
      registers,
      collect() {
        for (const pool of upstreams.pools.values()) {
          for (const b of pool.backends) this.set({ pool: pool.name, backend: b.name }, b.inFlight);
        }
      },
    });
  }

  observeRequest(labels: RequestLabels, seconds: number): void {
    const key = `${labels.route}\u0000${labels.model}\u0000${labels.pool}\u0000${labels.statusClass}`;
    let child = this.children.get(key);
    if (!child) {
      const values = [labels.route, labels.model, labels.pool, labels.statusClass];
      child = {
        count: this.requests.labels(...values),
        seconds: this.duration.labels(...values),
      };
      this.children.set(key, child);
    }
    child.count.inc();
    child.seconds.observe(seconds);
  }

  observeFirstByte(pool: string, backend: string, seconds: number): void {
    const key = `${pool}\u0000${backend}`;
    let child = this.firstByteChildren.get(key);
    if (!child) {
      child = this.firstByte.labels(pool, backend);
      this.firstByteChildren.set(key, child);
    }
    child.observe(seconds);
  }
}
