/**
 * A named group of interchangeable backends serving the same models, and everything that
 * decides which of them gets the next request: balancer, active health checks, outlier
 * detection, engine load signals, retry budget, DNS discovery.
 */

import { isDeepStrictEqual } from "node:util";
import {
  Admission,
  type AdmissionEvents,
  type AdmissionRequest,
  type Ticket,
} from "../admission/admission.js";
import type { BackendConfig, GatewayConfig, PoolConfig } from "../config/index.js";
import { GatewayError } from "../errors.js";
import {
  AFFINITY_OUTCOMES,
  type AffinityKey,
  type AffinityOutcome,
  CHARS_PER_TOKEN_ID,
  fleetLoad,
  HashRing,
} from "./affinity.js";
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
import { CacheModel, pickCached } from "./prefix-model.js";
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

/** A DNS or SRV entry of the config, its discovery, and the backends it found. */
interface DiscoveryEntry {
  config: BackendConfig;
  discovery: DnsDiscovery;
}

export class UpstreamPool {
  readonly backends: Backend[] = [];
  balancer: Balancer;
  outlier: OutlierDetector;
  readonly budget: RetryBudget;
  private health: HealthChecker | undefined;
  private readonly scrapers = new Map<Backend, LoadSignalScraper>();
  /** Backends the config names by URL, by that URL. */
  private readonly statics = new Map<string, Backend>();
  private readonly discoveries = new Map<string, DiscoveryEntry>();
  private readonly discovered = new Map<string, Backend>();
  private readonly events: UpstreamEvents;
  private readonly random: (() => number) | undefined;
  private resolver: DnsResolverLike | undefined;
  readonly now: () => number;
  readonly admission: Admission<Backend>;
  private slotsInUse = 0;
  /** Called when a request starts waiting (shared slots trade sooner: src/upstream/fleet.ts). */
  onWait: (() => void) | undefined;
  /** Slots in use per band (interactive, batch, background): what shared slots weigh. */
  readonly bandInFlight = [0, 0, 0];
  private started = false;
  private retired = false;
  /** The consistent-hash ring of prefix affinity, rebuilt when the backends or weights change. */
  private ring = HashRing.build<Backend>([]);
  /** Affinity decisions so far, read by the metrics at scrape time. */
  readonly affinityDecisions = Object.fromEntries(AFFINITY_OUTCOMES.map((o) => [o, 0])) as Record<
    AffinityOutcome,
    number
  >;
  /** Each backend's prefix cache as this gateway sent to it (affinity.cacheTokens). */
  private readonly cacheModels = new Map<Backend, CacheModel>();

  constructor(
    readonly name: string,
    /** The current config; a reload replaces it (a request keeps the one it started with: Exchange). */
    public config: PoolConfig,
    options: UpstreamOptions = {},
  ) {
    this.events = options.events ?? {};
    this.now = options.now ?? (() => performance.now());
    this.random = options.random;
    this.admission = new Admission<Backend>(
      this,
      config.admission,
      this.now,
      options.admission,
      options.random,
    );
    this.balancer = this.makeBalancer(config);
    this.outlier = this.makeOutlier(config);
    this.budget = new RetryBudget(config.retry.budgetPercent, config.retry.minRetryConcurrency);
    this.health = this.makeHealth(config);
    for (const b of config.backends) {
      if (b.discovery !== "none") continue;
      const backend = this.makeBackend(b, b.url);
      this.statics.set(b.url, backend);
      this.add(backend);
    }
  }

  private makeBalancer(config: PoolConfig): Balancer {
    return new Balancer(
      {
        kind: config.balancer,
        activeRequestBias: config.activeRequestBias,
        panicThreshold: config.panicThreshold,
        slowStart: config.slowStart,
      },
      this.random,
    );
  }

  private makeOutlier(config: PoolConfig): OutlierDetector {
    return new OutlierDetector(
      config.outlierDetection,
      () => this.backends,
      (b, reason, ms) => this.events.ejected?.(this.name, b.name, reason, ms),
      this.now,
    );
  }

  private makeHealth(config: PoolConfig): HealthChecker | undefined {
    if (!config.healthCheck.enabled) return undefined;
    return new HealthChecker(
      config.healthCheck,
      config.models,
      this.now,
      (b, healthy) => {
        // Down long enough to fail its probes: it may come back restarted, its cache empty.
        if (!healthy) this.cacheModels.get(b)?.clear();
        this.events.healthChanged?.(this.name, b.name, healthy);
        this.admission.poolChanged();
      },
      this.random,
      // Health checks and outlier detection are one view: a passed probe ends an ejection
      // for connect or gateway failures (the breaker's close ramps it back in).
      (b) => b.breaker.healthCheckPassed(),
    );
  }

  /**
   * A reload's new config for this pool. Backends that stay keep their state (health,
   * ejection, breaker, slow start, in-flight count, drain) and take the new weights and caps;
   * new ones join through a health check and slow start; removed ones drain, then close. The
   * queue keeps its waiting requests, each with the deadline it entered with. Resolves once
   * the new backends' first probes decided (as at start).
   */
  async reconfigure(next: PoolConfig): Promise<{ added: string[]; removed: string[] }> {
    const prev = this.config;
    this.config = next;
    this.admission.reconfigure(next.admission);
    this.balancer = this.makeBalancer(next);
    this.outlier = this.makeOutlier(next);
    this.budget.reconfigure(next.retry.budgetPercent, next.retry.minRetryConcurrency);
    const added: Backend[] = [];
    const removed: Backend[] = [];

    // Static backends, by URL.
    const wanted = new Set<string>();
    for (const bc of next.backends) {
      if (bc.discovery !== "none") continue;
      wanted.add(bc.url);
      const kept = this.statics.get(bc.url);
      if (kept?.keeps(bc, next.circuitBreaker)) {
        kept.update(bc, next.timeouts, next.circuitBreaker);
        continue;
      }
      if (kept) removed.push(kept);
      const b = this.makeBackend(bc, bc.url);
      this.joining(b);
      this.statics.set(bc.url, b);
      added.push(b);
    }
    for (const [url, b] of this.statics) {
      if (!wanted.has(url)) {
        this.statics.delete(url);
        removed.push(b);
      }
    }

    // Discovered backends: an entry that stays keeps its discovery and what it found.
    const wantedDiscoveries = new Set<string>();
    const newDiscoveries: BackendConfig[] = [];
    for (const bc of next.backends) {
      if (bc.discovery === "none") continue;
      const key = discoveryKey(bc);
      wantedDiscoveries.add(key);
      const entry = this.discoveries.get(key);
      const found = entry ? this.foundBy(entry) : [];
      if (
        entry &&
        prev.dnsRefresh === next.dnsRefresh &&
        found.every((b) => b.keeps(bc, next.circuitBreaker))
      ) {
        entry.config = bc;
        for (const b of found) b.update(bc, next.timeouts, next.circuitBreaker);
        continue;
      }
      if (entry) this.stopDiscovery(key, entry, removed);
      newDiscoveries.push(bc);
    }
    for (const [key, entry] of this.discoveries) {
      if (!wantedDiscoveries.has(key)) this.stopDiscovery(key, entry, removed);
    }

    for (const b of removed) this.drain(b);
    for (const b of added) this.add(b, false);
    // Probes and load scraping restart only when their settings changed; a kept backend keeps
    // its verdict either way.
    if (
      !isDeepStrictEqual(prev.healthCheck, next.healthCheck) ||
      !isDeepStrictEqual(prev.models, next.models)
    ) {
      this.health?.stop();
      this.health = this.makeHealth(next);
    }
    if (!isDeepStrictEqual(prev.loadSignals, next.loadSignals)) {
      for (const s of this.scrapers.values()) s.stop();
      this.scrapers.clear();
    }
    const staying = this.backends.filter((b) => b.onIdle === undefined);
    const probes = staying.map((b) => this.watch(b));
    if (this.resolver) {
      const resolver = this.resolver;
      probes.push(...newDiscoveries.map((bc) => this.discover(bc, resolver)));
    }
    this.admission.poolChanged();
    await Promise.all(probes);
    return { added: added.map((b) => b.name), removed: removed.map((b) => b.name) };
  }

  /**
   * A pool a reload removed: its waiting requests are told to come back (with retry headers),
   * its backends take no new work and close once their requests are done.
   */
  retire(): void {
    this.retired = true;
    for (const d of this.discoveries.values()) d.discovery.stop();
    this.discoveries.clear();
    for (const b of [...this.backends]) this.drain(b);
    this.health?.stop();
    // Not servable any more: the queue is refused with no_backend_available, which a request's
    // fallback chain may take.
    this.admission.poolChanged();
  }

  /** A backend that appears while the gateway runs waits for its first probe, then ramps up. */
  private joining(b: Backend): void {
    if (!this.started) return;
    b.rampFrom = this.now();
    if (this.health) b.healthy = false;
  }

  private foundBy(entry: DiscoveryEntry): Backend[] {
    const prefix = `${new URL(entry.config.url).hostname}|`;
    return [...this.discovered].filter(([k]) => k.startsWith(prefix)).map(([, b]) => b);
  }

  private stopDiscovery(key: string, entry: DiscoveryEntry, removed: Backend[]): void {
    entry.discovery.stop();
    this.discoveries.delete(key);
    const prefix = `${new URL(entry.config.url).hostname}|`;
    for (const [k, b] of this.discovered) {
      if (!k.startsWith(prefix)) continue;
      this.discovered.delete(k);
      removed.push(b);
    }
  }

  /**
   * Starts health checks, load scraping and discovery. Awaits the first DNS resolution and the
   * first health probe of every backend (bounded by the probe timeout), so a backend that is
   * down when the gateway starts never sees a request.
   */
  async start(resolver: DnsResolverLike): Promise<void> {
    this.resolver = resolver;
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
      const got = this.admission.acquire(request);
      if (this.onWait && !(got instanceof Backend)) this.onWait();
      return got;
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
      // With shared slots, this replica's share (at least its fair floor: a share is traded
      // within one sync, and an estimate of zero slots would refuse what waits a moment).
      if (!b.drained && (panic || isHealthy(b, now)))
        n += Math.min(b.maxConcurrency, Math.max(b.share, b.fairShare));
    }
    return n;
  }

  servable(): boolean {
    if (this.retired) return false;
    return this.balancer.servable(this.backends, this.now());
  }

  /**
   * A slot on a backend: the balancer's pick, or, for a request with an affinity key on a pool
   * with affinity on, the key's ring successor within the load bound (src/upstream/affinity.ts);
   * with cache models (affinity.cacheTokens), the backend holding its longest prefix within the
   * bound, or where a prefix nobody holds is best placed (src/upstream/prefix-model.ts).
   * `hops` (a request waiting for its own backends) limits the pick to the home and that many
   * successors (with models: the that many + 1 backends holding the longest runs of its prefix)
   * within their bounds; undefined when none of them has a free slot.
   */
  take(exclude?: ReadonlySet<Backend>, key?: AffinityKey, hops?: number): Backend | undefined {
    const now = this.now();
    const b =
      key !== undefined && this.config.affinity.by !== "off"
        ? this.takeKeyed(key, exclude, hops, now)
        : this.balancer.pick(this.backends, { now, exclude });
    if (b) {
      b.inFlight++;
      this.slotsInUse++;
    }
    return b;
  }

  selected(b: Backend): void {
    this.events.selected?.(this.name, b.name);
  }

  private takeKeyed(
    key: AffinityKey,
    exclude: ReadonlySet<Backend> | undefined,
    hops: number | undefined,
    now: number,
  ): Backend | undefined {
    const tier = this.balancer.tier(this.backends, { now, exclude });
    if (tier === undefined) return undefined;
    this.ring = this.ring.update(this.backends);
    const balancer = this.balancer;
    const backup = tier[0]?.backup ?? false;
    const panic = balancer.panic(this.backends, now);
    const affinity = this.config.affinity;
    const weightOf = (b: Backend) => balancer.weightOf(b, now);
    const counted = (b: Backend) => balancer.serves(b, backup, panic, now);
    const blocks = key.blocks;
    const modelled = blocks !== undefined && this.modelBlocks > 0;
    const pick = modelled
      ? pickCached({
          ring: this.ring,
          key,
          blocks,
          candidates: new Set(tier),
          loadOf: fleetLoad,
          weightOf,
          counted,
          loadFactor: affinity.loadFactor,
          modelOf: (b) => this.cacheModel(b),
          minBlocks: Math.max(
            1,
            Math.min(blocks.length, Math.floor(affinity.prefixChars / affinity.blockChars)),
          ),
          now,
          own: hops,
        })
      : this.ring.pick(
          key.hash,
          new Set(tier),
          fleetLoad,
          affinity.loadFactor,
          hops ?? Number.POSITIVE_INFINITY,
          weightOf,
          counted,
        );
    if (pick === undefined || (hops !== undefined && !pick.bounded)) return undefined;
    this.affinityDecisions[pick.outcome]++;
    if (modelled) this.cacheModel(pick.backend).touch(blocks, now);
    return pick.backend;
  }

  /** Blocks of a backend's cache model (affinity.cacheTokens), 0 when the pool has none. */
  get modelBlocks(): number {
    const affinity = this.config.affinity;
    if (affinity.by !== "prefix" || affinity.cacheTokens === 0) return 0;
    return Math.max(1, Math.floor((affinity.cacheTokens * CHARS_PER_TOKEN_ID) / affinity.blockChars));
  }

  /** The backend's cache model, sized by the current config. */
  private cacheModel(b: Backend): CacheModel {
    const blocks = this.modelBlocks;
    let model = this.cacheModels.get(b);
    if (model === undefined) {
      model = new CacheModel(blocks);
      this.cacheModels.set(b, model);
    } else if (model.capacity !== blocks) model.resize(blocks);
    return model;
  }

  /** The affinity grace of a queued keyed request (ms), 0 when the pool has no affinity. */
  get affinityGraceMs(): number {
    const affinity = this.config.affinity;
    return affinity.by === "off" ? 0 : affinity.grace;
  }

  /**
   * With affinity.prefillTokensPerSecond and cache models, a key waits for the backends holding
   * its prefix as long as recomputing the longest prefix they hold would take elsewhere, so that
   * waiting never costs it more than the miss it avoids; else the configured grace.
   */
  affinityGraceFor(key: AffinityKey): number {
    const affinity = this.config.affinity;
    if (affinity.by === "off") return 0;
    const blocks = key.blocks;
    if (affinity.prefillTokensPerSecond === 0 || blocks === undefined || this.modelBlocks === 0)
      return affinity.grace;
    let held = 0;
    for (const b of this.backends) held = Math.max(held, this.cacheModels.get(b)?.match(blocks) ?? 0);
    const tokens = (held * affinity.blockChars) / CHARS_PER_TOKEN_ID;
    return (tokens / affinity.prefillTokensPerSecond) * 1000;
  }

  /** With cache models, a keyed arrival waits for the backends holding its prefix too. */
  get affinityParksArrivals(): boolean {
    return this.modelBlocks > 0;
  }

  /** Ring successors past the home a queued keyed request waits for. */
  get affinityHops(): number {
    return this.config.affinity.successors;
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
    if (b.onIdle) return;
    b.drained = true;
    this.unwatch(b);
    b.onIdle = () => this.remove(b);
    if (b.inFlight === 0) this.remove(b);
    this.admission.poolChanged();
  }

  async close(): Promise<void> {
    for (const d of this.discoveries.values()) d.discovery.stop();
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
        // Failing calls: it may come back restarted, its prefix cache empty.
        if (state === "open") this.cacheModels.get(b)?.clear();
        this.events.breakerChanged?.(this.name, b.name, state);
        this.admission.poolChanged();
      },
    });
  }

  private add(b: Backend, watch = true): void {
    this.backends.push(b);
    if (this.started && watch) void this.watch(b);
    this.admission.poolChanged();
  }

  private remove(b: Backend): void {
    this.cacheModels.delete(b);
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

  private async discover(initial: BackendConfig, resolver: DnsResolverLike): Promise<void> {
    const url = new URL(initial.url);
    const hostname = url.hostname;
    const defaultPort = url.protocol === "https:" ? 443 : 80;
    const discovery = new DnsDiscovery(
      {
        hostname,
        port: Number(url.port || defaultPort),
        mode: initial.discovery === "srv" ? "srv" : "dns",
        refreshMs: this.config.dnsRefresh,
      },
      resolver,
      (change) => {
        // A reload may give the entry new settings (weights, caps): the entry holds the current.
        const config = entry.config;
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
          this.joining(b);
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
    const entry: DiscoveryEntry = { config: initial, discovery };
    this.discoveries.set(discoveryKey(initial), entry);
    try {
      await discovery.start();
    } catch (err) {
      // Keep running: the next refresh may find it; /readyz and the logs tell the operator.
      this.events.discoveryError?.(this.name, `first resolution of ${hostname} failed`, err);
    }
  }
}

function discoveryKey(config: BackendConfig): string {
  return `${config.discovery} ${config.url}`;
}

function isNoBackend(err: unknown): boolean {
  return err instanceof GatewayError && err.code === "no_backend_available";
}

function targetUrl(base: URL, t: DnsTarget): string {
  const host = t.address.includes(":") ? `[${t.address}]` : t.address;
  return `${base.protocol}//${host}:${t.port}${base.pathname}`;
}

/** What a reload changed in the pools. */
export interface PoolChanges {
  added: string[];
  removed: string[];
  backends: Record<string, { added: string[]; removed: string[] }>;
}

/** All pools, and the model → pool index the OpenAI routes use. */
export class Upstreams {
  readonly pools = new Map<string, UpstreamPool>();
  private byModel = new Map<string, UpstreamPool>();
  private readonly resolver: DnsResolverLike;
  /** Pools a reload removed, closed with the gateway (their last requests may still run). */
  private readonly retired = new Set<UpstreamPool>();

  constructor(
    config: Pick<GatewayConfig, "pools" | "dns">,
    private readonly options: UpstreamOptions = {},
  ) {
    this.resolver =
      options.resolver ??
      createResolver(config.dns.servers.length > 0 ? config.dns.servers : undefined, config.dns.timeout);
    for (const [name, poolConfig] of Object.entries(config.pools)) {
      this.pools.set(name, new UpstreamPool(name, poolConfig, options));
    }
    this.index();
  }

  async start(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.start(this.resolver)));
  }

  /**
   * A reload's pools: pools that stay are reconfigured in place (their backends keep their
   * state), new ones start (their backends probed first, as at start), removed ones retire.
   * The model index switches once the new pools are ready.
   */
  async reconfigure(config: Pick<GatewayConfig, "pools">): Promise<PoolChanges> {
    const changes: PoolChanges = { added: [], removed: [], backends: {} };
    const fresh: UpstreamPool[] = [];
    const work: Promise<void>[] = [];
    for (const [name, poolConfig] of Object.entries(config.pools)) {
      const pool = this.pools.get(name);
      if (pool) {
        work.push(
          pool.reconfigure(poolConfig).then((c) => {
            if (c.added.length + c.removed.length > 0) changes.backends[name] = c;
          }),
        );
      } else {
        const created = new UpstreamPool(name, poolConfig, this.options);
        fresh.push(created);
        changes.added.push(name);
        work.push(created.start(this.resolver));
      }
    }
    await Promise.all(work);
    for (const pool of fresh) this.pools.set(pool.name, pool);
    for (const [name, pool] of this.pools) {
      if (name in config.pools) continue;
      this.pools.delete(name);
      pool.retire();
      this.retired.add(pool);
      changes.removed.push(name);
    }
    this.index();
    return changes;
  }

  private index(): void {
    const byModel = new Map<string, UpstreamPool>();
    for (const pool of this.pools.values()) for (const model of pool.config.models) byModel.set(model, pool);
    this.byModel = byModel;
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
    await Promise.all([...this.pools.values(), ...this.retired].map((p) => p.close()));
  }
}
