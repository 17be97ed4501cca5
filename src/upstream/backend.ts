/** One inference server: its connection pool, its identity, its health, and the load on it. */
import { Pool } from "undici";
import { type BackendConfig, backendName, type TimeoutsConfig } from "../config/index.js";
import { BackendBreaker, type BreakerSettings, type BreakerState } from "./breaker.js";

/** What the balancer reads of a backend; a plain object in unit tests. */
export interface BalancerBackend {
  readonly name: string;
  readonly weight: number;
  readonly maxConcurrency: number;
  readonly backup: boolean;
  inFlight: number;
  /** Not taking new requests (removed by discovery, or drained by an operator). */
  drained: boolean;
  /** Active health checks' verdict; true when they are off. */
  healthy: boolean;
  /** Passive health (the circuit breaker) lets a request through now. */
  admits(now: number): boolean;
  /** Monotonic ms before which it asked (Retry-After) not to be sent new work. */
  notBefore: number;
  /** Monotonic ms its slow-start ramp starts at; -Infinity for no ramp. */
  rampFrom: number;
  /** Engine load penalty ≥ 1 (1 = idle), from load signals. */
  loadPenalty(now: number): number;
  /** Smooth weighted round-robin state. */
  rrCurrent: number;
  /** The slots this replica may use (a share of maxConcurrency, when replicas share slots). */
  share?: number;
  /** Requests other replicas have in flight on it (when replicas share slots). */
  othersInFlight?: number;
}

export interface BackendOptions {
  onBreakerState?: (b: Backend, state: BreakerState) => void;
  /** Set for backends found by DNS: TLS must still name the host, not the address. */
  servername?: string;
  /** Name override (discovered backends get hostname/address:port). */
  name?: string;
}

export class Backend implements BalancerBackend {
  readonly name: string;
  readonly origin: string;
  /** Path prefix of the backend URL (`https://host/openai` → `/openai`), without a trailing slash. */
  readonly basePath: string;
  weight: number;
  maxConcurrency: number;
  backup: boolean;
  readonly engine: BackendConfig["engine"];
  /** Configured extra headers, lower-cased once here rather than per request. */
  extraHeaders: ReadonlyArray<readonly [string, string]>;
  /** The connection pool; a reload with new timeouts swaps it (the old one finishes its requests). */
  dispatcher: Pool;
  inFlight = 0;
  /**
   * Its maxConcurrency is configured: a capacity of the backend, which replicas share
   * (src/upstream/fleet.ts). Without it the slots are this replica's connections alone
   * (maxConnections), nothing to share.
   */
  sharedSlots = false;
  /** Shared slots (src/upstream/fleet.ts): this replica's share, the others' load, a fair floor. */
  share = Number.POSITIVE_INFINITY;
  othersInFlight = 0;
  fairShare = Number.POSITIVE_INFINITY;
  drained = false;
  healthy = true;
  notBefore = 0;
  rampFrom = Number.NEGATIVE_INFINITY;
  rrCurrent = 0;
  readonly breaker: BackendBreaker;
  /** Outlier detection's counters and history (ejectedUntil: when its last ejection ends). */
  ejectedUntil = 0;
  consecutive5xx = 0;
  consecutiveGatewayFailures = 0;
  consecutiveConnectFailures = 0;
  ejections = 0;
  /** Replaced by the pool when load signals are scraped. */
  loadPenalty: (now: number) => number = () => 1;
  /** Called when a drained backend's last request settles. */
  onIdle: (() => void) | undefined;

  constructor(
    public config: BackendConfig,
    url: string,
    private timeouts: TimeoutsConfig,
    breaker: BreakerSettings,
    private readonly options: BackendOptions = {},
  ) {
    const parsed = new URL(url);
    this.name = options.name ?? backendName(url, config.name);
    this.origin = parsed.origin;
    this.basePath = parsed.pathname.replace(/\/+$/, "");
    this.engine = config.engine;
    // Set by update(), which a reload calls again with the new settings.
    this.weight = 1;
    this.maxConcurrency = 1;
    this.backup = false;
    this.extraHeaders = [];
    this.update(config);
    this.dispatcher = this.connectionPool();
    this.breaker = new BackendBreaker(breaker, (state) => options.onBreakerState?.(this, state));
  }

  /**
   * Whether a reload can keep this backend (its state: health, ejection, breaker, slow start,
   * in flight, drain) under a new config, or must replace it: a new identity, connection cap,
   * engine or breaker window is a new backend that joins through a health check.
   */
  keeps(config: BackendConfig, breaker: BreakerSettings): boolean {
    const was = this.config;
    return (
      was.maxConnections === config.maxConnections &&
      was.engine === config.engine &&
      was.discovery === config.discovery &&
      (was.name ?? "") === (config.name ?? "") &&
      this.breaker.fixedAs(breaker)
    );
  }

  /** A reload's settings for a backend it keeps (see keeps()). */
  update(config: BackendConfig, timeouts?: TimeoutsConfig, breaker?: BreakerSettings): void {
    this.config = config;
    this.weight = config.weight;
    // A slot is a connection (no pipelining): past maxConnections a request would wait inside
    // undici, unseen by the balancer and the timeouts, so the slots stop there.
    this.maxConcurrency = Math.min(config.maxConcurrency ?? Number.POSITIVE_INFINITY, config.maxConnections);
    this.sharedSlots = config.maxConcurrency !== undefined;
    if (!this.sharedSlots) {
      // No longer shared (a reload removed its maxConcurrency): no claim limits it any more.
      this.share = Number.POSITIVE_INFINITY;
      this.fairShare = Number.POSITIVE_INFINITY;
      this.othersInFlight = 0;
    }
    this.backup = config.backup;
    this.extraHeaders = Object.entries(config.headers).map(([k, v]) => [k.toLowerCase(), v] as const);
    if (breaker) this.breaker.reconfigure(breaker);
    if (timeouts && !sameConnectTimeouts(timeouts, this.timeouts)) {
      this.timeouts = timeouts;
      // Requests under way keep the old pool; it closes once they are done.
      const old = this.dispatcher;
      this.dispatcher = this.connectionPool();
      void old.close();
    }
  }

  private connectionPool(): Pool {
    return new Pool(this.origin, {
      connections: this.config.maxConnections,
      connect: {
        timeout: this.timeouts.connect,
        ...(this.options.servername ? { servername: this.options.servername } : {}),
      },
      headersTimeout: this.timeouts.firstByte,
      bodyTimeout: this.timeouts.idle,
      // Inference servers close idle connections after some seconds; stay under common values.
      keepAliveTimeout: 4_000,
      keepAliveMaxTimeout: 60_000,
      pipelining: 1,
    });
  }

  admits(_now: number): boolean {
    return this.breaker.admits;
  }

  /** Outlier detection's verdict: out for durationMs, then one probe (see breaker.ts). */
  eject(durationMs: number, next: () => number, healthMayEnd = false): void {
    this.breaker.eject(durationMs, next, healthMayEnd);
  }

  close(): Promise<void> {
    this.breaker.shutdown();
    return this.dispatcher.destroy();
  }
}

function sameConnectTimeouts(a: TimeoutsConfig, b: TimeoutsConfig): boolean {
  return a.connect === b.connect && a.firstByte === b.firstByte && a.idle === b.idle;
}
