/**
 * Active health checks. Each backend is probed every `interval` (±10% jitter, so replicas do not
 * probe in lockstep): GET its health path (per engine by default), and, with checkModels, its
 * /v1/models must list one of the pool's models, because a GPU server can be up while still
 * loading its weights. `unhealthyThreshold` failed probes in a row mark it unhealthy,
 * `healthyThreshold` passed ones healthy again (then it ramps up through slow start). The very
 * first probe decides at once: a backend that is down when the gateway starts gets no traffic.
 */
import type { Engine, HealthCheckConfig } from "../config/index.js";
import type { Backend } from "./backend.js";

const DEFAULT_PATHS: Record<Engine, string> = {
  vllm: "/health",
  sglang: "/health",
  tgi: "/health",
  llamacpp: "/health",
  ollama: "/api/version",
  openai: "/v1/models",
};

export function defaultHealthPath(engine: Engine): string {
  return DEFAULT_PATHS[engine];
}

interface ProbeState {
  timer: NodeJS.Timeout | undefined;
  known: boolean;
  successes: number;
  failures: number;
  inFlight: AbortController | undefined;
}

export class HealthChecker {
  private readonly states = new Map<Backend, ProbeState>();
  private stopped = false;

  constructor(
    private readonly config: HealthCheckConfig,
    private readonly models: readonly string[],
    private readonly now: () => number,
    private readonly onChange: (b: Backend, healthy: boolean) => void,
    private readonly random: () => number = Math.random,
    /** Every passed probe (outlier detection may end an ejection on it). */
    private readonly onPass: (b: Backend) => void = () => {},
  ) {}

  /** Starts probing a backend now, then every interval; resolves when the first probe decided. */
  watch(b: Backend): Promise<void> {
    if (this.stopped || this.states.has(b)) return Promise.resolve();
    const state: ProbeState = {
      timer: undefined,
      known: false,
      successes: 0,
      failures: 0,
      inFlight: undefined,
    };
    this.states.set(b, state);
    return this.run(b, state);
  }

  unwatch(b: Backend): void {
    const state = this.states.get(b);
    if (!state) return;
    clearTimeout(state.timer);
    state.inFlight?.abort();
    this.states.delete(b);
  }

  stop(): void {
    this.stopped = true;
    for (const b of [...this.states.keys()]) this.unwatch(b);
  }

  private async run(b: Backend, state: ProbeState): Promise<void> {
    const ok = await this.probe(b, state);
    if (this.states.get(b) !== state) return;
    this.apply(b, state, ok);
    const jitter = 0.9 + 0.2 * this.random();
    state.timer = setTimeout(() => void this.run(b, state), this.config.interval * jitter);
    state.timer.unref();
  }

  private apply(b: Backend, state: ProbeState, ok: boolean): void {
    if (ok) this.onPass(b);
    if (!state.known) {
      state.known = true;
      if (b.healthy !== ok) this.set(b, ok);
      return;
    }
    if (ok) {
      state.failures = 0;
      state.successes++;
      if (!b.healthy && state.successes >= this.config.healthyThreshold) this.set(b, true);
    } else {
      state.successes = 0;
      state.failures++;
      if (b.healthy && state.failures >= this.config.unhealthyThreshold) this.set(b, false);
    }
  }

  private set(b: Backend, healthy: boolean): void {
    b.healthy = healthy;
    // Back in: ramp up from now (if its breaker is still open, closing it restarts the ramp).
    if (healthy) b.rampFrom = this.now();
    this.onChange(b, healthy);
  }

  private async probe(b: Backend, state: ProbeState): Promise<boolean> {
    const controller = new AbortController();
    state.inFlight = controller;
    const timer = setTimeout(() => controller.abort(), this.config.timeout);
    try {
      const path = this.config.path ?? defaultHealthPath(b.engine);
      const first = await this.get(b, path, controller.signal);
      if (!first.ok) return false;
      // Every engine floodgate knows lists the models it serves in /v1/models.
      if (!this.config.checkModels) return true;
      const listing = path === "/v1/models" ? first : await this.get(b, "/v1/models", controller.signal);
      // A backend without /v1/models cannot say which model it serves: the health path decides.
      if (listing.status === 404) return true;
      if (!listing.ok) return false;
      return servesOneOf(listing.body, this.models);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
      state.inFlight = undefined;
    }
  }

  private async get(
    b: Backend,
    path: string,
    signal: AbortSignal,
  ): Promise<{ ok: boolean; status: number; body: string }> {
    const res = await b.dispatcher.request({
      method: "GET",
      path: b.basePath + path,
      headers: Object.fromEntries(b.extraHeaders),
      signal,
    });
    const body = await res.body.text();
    return { ok: res.statusCode >= 200 && res.statusCode < 300, status: res.statusCode, body };
  }
}

function servesOneOf(body: string, models: readonly string[]): boolean {
  try {
    const parsed = JSON.parse(body) as { data?: { id?: unknown }[]; models?: { name?: unknown }[] };
    const ids = new Set<unknown>([
      ...(parsed.data ?? []).map((m) => m.id),
      ...(parsed.models ?? []).map((m) => m.name),
    ]);
    return models.some((m) => ids.has(m));
  } catch {
    return false;
  }
}
