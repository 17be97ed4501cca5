/**
 * A named group of interchangeable backends serving the same models, and everything that
 * decides which of them gets the next request: balancer, active health checks, outlier
 * detection, engine load signals, retry budget, DNS discovery.
 */
import {
  Admission,
  type AdmissionEvents,
  type AdmissionRequest,
  type Ticket,
} from "../admission/admission.js";
import type { BackendConfig, GatewayConfig, PoolConfig } from "../config/index.js";
import { GatewayError } from "../errors.js";
import { Backend, type BackendOptions } from "./backend.js";
import { Balancer, isHealthy } from "./balancer.js";
import type { BreakerState } from "./breaker.js";
import {
  createResolver,
  DnsDiscovery,
  type DnsResolverLike,
  type DnsTarget,
  targetKey,
} from "./discovery.js";
import { HealthChecker } from "./health-checker.js";
import { engineHasMetrics, type LoadSignal, LoadSignalScraper, loadPenalty } from "./load-signals.js";
import { type AttemptOutcome, type EjectionReason, OutlierDetector } from "./outlier-detector.js";
import { RetryBudget } from "./retry-budget.js";

/** What the pools tell the rest of the gateway (metrics, logs); every hook is optional. */
export interface UpstreamEvents {
  selected?(pool: string, backend: string): void;
  attempted?(pool: string, backend: string, outcome: AttemptOutcome | "http_4xx"): void;
  ejected?(pool: string, backend: string, reason: EjectionReason, durationMs: number): void;
  healthChanged?(pool: string, backend: string, healthy: boolean): void;
  retried?(pool: string, reason: string): void;
  retryBudgetExhausted?(pool: string): void;
  breakerChanged?(pool: string, backend: string, state: BreakerState): void;
  /** No backend could take a request and at least one was kept out by its breaker. */
  breakerRejected?(pool: string): void;
  backendsChanged?(pool: string, added: string[], removed: string[]): void;
  discoveryError?(pool: string, message: string, err: unknown): void;
}

export interface UpstreamOptions {
  events?: UpstreamEvents;
  now?: () => number;
  random?: () => number;
  /** DNS resolver for discovery; default: node's, with config.dns.servers. */
  resolver?: DnsResolverLike;
  admission?: AdmissionEvents;
}

/** Fallback Retry-After when nothing says when a backend frees up. */
const DEFAULT_RETRY_AFTER_MS = 1000;

export class UpstreamPool {
  readonly backends: Backend[] = [];
  readonly balancer: Balancer;
  readonly outlier: OutlierDetector;
  readonly budget: RetryBudget;
  private readonly health: HealthChecker | undefined;
  private readonly scrapers = new Map<Backend, LoadSignalScraper>();
  private readonly discoveries: DnsDiscovery[] = [];
  private readonly discovered = new Map<string, Backend>();
  private readonly events: UpstreamEvents;
  readonly now: () => number;
  readonly admission: Admission<Backend>;
  private slotsInUse = 0;
  private started = false;

  constructor(
    readonly name: string,
    readonly config: PoolConfig,
    options: UpstreamOptions = {},
  ) {
    this.events = options.events ?? {};
    this.now = options.now ?? (() => performance.now());
    this.admission = new Admission<Backend>(
      this,
      config.admission,
      this.now,
      options.admission,
      options.random,
    );
    this.balancer = new Balancer(
      {
        kind: config.balancer,
        activeRequestBias: config.activeRequestBias,
        panicThreshold: config.panicThreshold,
        slowStart: config.slowStart,
      },
      options.random,
    );
    this.outlier = new OutlierDetector(
      config.outlierDetection,
      () => this.backends,
      (b, reason, ms) => this.events.ejected?.(name, b.name, reason, ms),
      this.now,
    );
    this.budget = new RetryBudget(config.retry.budgetPercent, config.retry.minRetryConcurrency);
    if (config.healthCheck.enabled) {
      this.health = new HealthChecker(
        config.healthCheck,
        config.models,
        this.now,
        (b, healthy) => {
          this.events.healthChanged?.(name, b.name, healthy);
          this.admission.poolChanged();
        },
        options.random,
        // Health checks and outlier detection are one view: a passed probe ends an ejection
        // for connect or gateway failures (the breaker's close ramps it back in).
        (b) => b.breaker.healthCheckPassed(),
      );
    }
    for (const b of config.backends) if (b.discovery === "none") this.add(this.makeBackend(b, b.url));
  }

  /**
   * Starts health checks, load scraping and discovery. Awaits the first DNS resolution and the
   * first health probe of every backend (bounded by the probe timeout), so a backend that is
   * down when the gateway starts never sees a request.
   */
  async start(resolver: DnsResolverLike): Promise<void> {
    await Promise.all(
      this.config.backends.filter((b) => b.discovery !== "none").map((b) => this.discover(b, resolver)),
    );
    this.started = true;
    await Promise.all(this.backends.map((b) => this.watch(b)));
  }

  /**
   * A slot on the backend the balancer picks (not one in `exclude`, while another can serve), at
   * once when one is free and nothing waits ahead; else a Ticket that waits in the admission
   * queue; else a refusal thrown (src/admission/admission.ts). Every slot handed out is given
   * back once with release(): the pair is the one place a backend's in-flight count changes,
   * and a release is the moment a waiting request takes the slot.
   */
  acquire(request: AdmissionRequest<Backend>): Backend | Ticket<Backend> {
    try {
      return this.admission.acquire(request);
    } catch (err) {
      const now = this.now();
      if (isNoBackend(err) && this.backends.some((x) => !x.admits(now)))
        this.events.breakerRejected?.(this.name);
      throw err;
    }
  }

  /** Gives back a slot from acquire(), taken at `takenAt` (admission.lastTake then). */
  release(b: Backend, takenAt: number): void {
    this.untake(b);
    this.admission.released(takenAt);
  }

  /** Slots in use on this pool's backends. */
  inUse(): number {
    return this.slotsInUse;
  }

  /** The slots of the backends that can serve now (not drained; healthy, or the pool in panic). */
  capacity(): number {
    const now = this.now();
    const panic = this.balancer.panic(this.backends, now);
    let n = 0;
    for (const b of this.backends) {
      if (!b.drained && (panic || isHealthy(b, now))) n += b.maxConcurrency;
    }
    return n;
  }

  servable(): boolean {
    return this.balancer.servable(this.backends, this.now());
  }

  take(exclude?: ReadonlySet<Backend>): Backend | undefined {
    const b = this.balancer.pick(this.backends, { now: this.now(), exclude });
    if (b) {
      b.inFlight++;
      this.slotsInUse++;
      this.events.selected?.(this.name, b.name);
    }
    return b;
  }

  untake(b: Backend): void {
    b.inFlight--;
    this.slotsInUse--;
    if (b.drained && b.inFlight === 0) b.onIdle?.();
  }

  unavailableRetryAfterMs(): number {
    return this.retryAfterMs();
  }

  record(b: Backend, outcome: AttemptOutcome | "http_4xx"): void {
    this.events.attempted?.(this.name, b.name, outcome);
    this.outlier.record(b, outcome === "http_4xx" ? "success" : outcome, this.now());
  }

  /** The engine's last load reading, stale or not (for metrics and status). */
  lastSignal(b: Backend): LoadSignal | undefined {
    return this.scrapers.get(b)?.last;
  }

  noteRetry(reason: string): void {
    this.events.retried?.(this.name, reason);
  }

  noteBudgetExhausted(): void {
    this.events.retryBudgetExhausted?.(this.name);
  }

  /** A backend said "busy, come back in ms": new work goes elsewhere until then. */
  noteRetryAfter(b: Backend, ms: number): void {
    b.notBefore = Math.max(
      b.notBefore,
      this.now() + Math.min(ms, this.config.outlierDetection.maxEjectionTime),
    );
  }

  /**
   * When a client refused for lack of a backend should come back: the soonest moment a
   * breaker lets a probe through or a busy backend's Retry-After ends.
   */
  retryAfterMs(): number {
    const now = this.now();
    let soonest = Number.POSITIVE_INFINITY;
    for (const b of this.backends) {
      if (b.drained) continue;
      const wait = Math.max(b.breaker.msUntilProbe(), b.notBefore - now);
      if (wait > 0) soonest = Math.min(soonest, wait);
    }
    return Number.isFinite(soonest) ? Math.max(100, Math.ceil(soonest)) : DEFAULT_RETRY_AFTER_MS;
  }

  /**
   * An operator's drain (reversible): no new requests, in-flight ones finish, the backend stays
   * known so it can be undrained. Returns false for an unknown backend name.
   */
  setDrained(name: string, drained: boolean): boolean {
    const b = this.backends.find((x) => x.name === name);
    if (!b) return false;
    b.drained = drained;
    if (!drained) b.rampFrom = this.now();
    this.admission.poolChanged();
    return true;
  }

  /** A backend discovery no longer lists: drained, then closed and forgotten once idle. */
  private drain(b: Backend): void {
    if (b.drained) return;
    b.drained = true;
    this.unwatch(b);
    b.onIdle = () => this.remove(b);
    if (b.inFlight === 0) this.remove(b);
    this.admission.poolChanged();
  }

  async close(): Promise<void> {
    for (const d of this.discoveries) d.stop();
    this.health?.stop();
    for (const s of this.scrapers.values()) s.stop();
    await Promise.all(this.backends.map((b) => b.close()));
  }

  private makeBackend(config: BackendConfig, url: string, options: BackendOptions = {}): Backend {
    return new Backend(config, url, this.config.timeouts, this.config.circuitBreaker, {
      ...options,
      onBreakerState: (b, state) => {
        // Readmitted by a successful probe: it ramps back in from now.
        if (state === "closed") b.rampFrom = this.now();
        this.events.breakerChanged?.(this.name, b.name, state);
        this.admission.poolChanged();
      },
    });
  }

  private add(b: Backend): void {
    this.backends.push(b);
    if (this.started) void this.watch(b);
    this.admission.poolChanged();
  }

  private remove(b: Backend): void {
    const i = this.backends.indexOf(b);
    if (i !== -1) this.backends.splice(i, 1);
    void b.close();
  }

  private watch(b: Backend): Promise<void> {
    const firstProbe = this.health?.watch(b) ?? Promise.resolve();
    const signals = this.config.loadSignals;
    if (signals.enabled && engineHasMetrics(b.engine) && !this.scrapers.has(b)) {
      const scraper = new LoadSignalScraper(
        { name: b.name, origin: b.origin, basePath: b.basePath, engine: b.engine, headers: b.extraHeaders },
        {
          intervalMs: signals.interval,
          timeoutMs: signals.timeout,
          staleAfterMs: signals.staleAfter,
          now: this.now,
        },
      );
      b.loadPenalty = (now) => loadPenalty(scraper.current(), now, signals.staleAfter);
      this.scrapers.set(b, scraper);
      scraper.start();
    }
    return firstProbe;
  }

  private unwatch(b: Backend): void {
    this.health?.unwatch(b);
    this.scrapers.get(b)?.stop();
    this.scrapers.delete(b);
  }

  private async discover(config: BackendConfig, resolver: DnsResolverLike): Promise<void> {
    const url = new URL(config.url);
    const hostname = url.hostname;
    const defaultPort = url.protocol === "https:" ? 443 : 80;
    const discovery = new DnsDiscovery(
      {
        hostname,
        port: Number(url.port || defaultPort),
        mode: config.discovery === "srv" ? "srv" : "dns",
        refreshMs: this.config.dnsRefresh,
      },
      resolver,
      (change) => {
        const added: string[] = [];
        const removed: string[] = [];
        for (const t of change.added) {
          const key = `${hostname}|${targetKey(t)}`;
          if (this.discovered.has(key)) continue;
          const b = this.makeBackend(config, targetUrl(url, t), {
            servername: url.protocol === "https:" ? hostname : undefined,
            name: `${config.name ?? hostname}/${targetKey(t)}`,
          });
          // One that appears while the gateway runs waits for its first probe (a new GPU server
          // may still be loading), then ramps up; those found at start are probed before listen.
          if (this.started) {
            b.rampFrom = this.now();
            if (this.health) b.healthy = false;
          }
          this.discovered.set(key, b);
          this.add(b);
          added.push(b.name);
        }
        for (const t of change.removed) {
          const key = `${hostname}|${targetKey(t)}`;
          const b = this.discovered.get(key);
          if (!b) continue;
          this.discovered.delete(key);
          this.drain(b);
          removed.push(b.name);
        }
        if (added.length + removed.length > 0) this.events.backendsChanged?.(this.name, added, removed);
      },
      (message, err) => this.events.discoveryError?.(this.name, message, err),
    );
    this.discoveries.push(discovery);
    try {
      await discovery.start();
    } catch (err) {
      // Keep running: the next refresh may find it; /readyz and the logs tell the operator.
      this.events.discoveryError?.(this.name, `first resolution of ${hostname} failed`, err);
    }
  }
}

function isNoBackend(err: unknown): boolean {
  return err instanceof GatewayError && err.code === "no_backend_available";
}

function targetUrl(base: URL, t: DnsTarget): string {
  const host = t.address.includes(":") ? `[${t.address}]` : t.address;
  return `${base.protocol}//${host}:${t.port}${base.pathname}`;
}

/** All pools, and the model → pool index the OpenAI routes use. */
export class Upstreams {
  readonly pools = new Map<string, UpstreamPool>();
  private readonly byModel = new Map<string, UpstreamPool>();
  private readonly resolver: DnsResolverLike;

  constructor(config: Pick<GatewayConfig, "pools" | "dns">, options: UpstreamOptions = {}) {
    this.resolver =
      options.resolver ??
      createResolver(config.dns.servers.length > 0 ? config.dns.servers : undefined, config.dns.timeout);
    for (const [name, poolConfig] of Object.entries(config.pools)) {
      const pool = new UpstreamPool(name, poolConfig, options);
      this.pools.set(name, pool);
      for (const model of poolConfig.models) this.byModel.set(model, pool);
    }
  }

  async start(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.start(this.resolver)));
  }

  forModel(model: string): UpstreamPool | undefined {
    return this.byModel.get(model);
  }

  models(): { model: string; pool: string }[] {
    return [...this.byModel].map(([model, pool]) => ({ model, pool: pool.name }));
  }

  backendCount(): number {
    let n = 0;
    for (const p of this.pools.values()) n += p.backends.length;
    return n;
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.close()));
  }
}
