/**
 * Backend choice within a pool, in Envoy's terms.
 *
 * Eligible: not drained, below its maxConcurrency (or this replica's share of it, when replicas
 * share slots: src/upstream/fleet.ts). Of those, the healthy (active checks pass,
 * and the circuit breaker lets a request through: closed, or half-open with its one probe not
 * yet taken) primaries are used; backups only when no primary is healthy. Panic: when fewer
 * than panicThreshold % of the pool's backends are healthy, health is ignored and load spread
 * over all primaries, instead of crushing the few survivors (Envoy's panic threshold). A backend
 * that answered Retry-After is skipped until then while another can serve.
 *
 * Within that set, with the cost of a backend
 *     cost = (inFlight + 1)^bias × loadPenalty / (weight × slowStartFactor)
 * where inFlight counts the whole fleet's requests on it when replicas share slots.
 * - least_request, equal effective weights: power of two random choices, the lower cost wins
 *   (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing"; Envoy's default);
 * - least_request, unequal weights: weighted random with probability ∝ 1 / cost, which is
 *   Envoy's weight / (active + 1)^bias with engine load folded in, and gives 3:1 traffic for
 *   weights 3:1 at equal load;
 * - round_robin: smooth weighted round robin (nginx's) on weight × slowStartFactor;
 * - random: weighted random on weight × slowStartFactor.
 */
import type { SlowStartConfig } from "../config/index.js";
import type { BalancerBackend } from "./backend.js";
import { rampFactor } from "./slow-start.js";

export type BalancerKind = "least_request" | "round_robin" | "random";

export interface BalancerSettings {
  kind: BalancerKind;
  activeRequestBias: number;
  panicThreshold: number;
  slowStart: SlowStartConfig;
}

export interface PickOptions {
  now: number;
  /** Backends already tried for this request: used again only when nothing else can serve. */
  exclude?: ReadonlySet<BalancerBackend>;
}

export function isHealthy(b: BalancerBackend, now: number): boolean {
  return b.healthy && b.admits(now);
}

export function canTake(b: BalancerBackend): boolean {
  return !b.drained && b.inFlight < Math.min(b.maxConcurrency, b.share ?? Number.POSITIVE_INFINITY);
}

export class Balancer {
  constructor(
    readonly settings: BalancerSettings,
    private readonly random: () => number = Math.random,
  ) {}

  /** True when the pool is in panic: too few healthy backends to trust health. */
  panic(backends: readonly BalancerBackend[], now: number): boolean {
    let live = 0;
    let healthy = 0;
    for (const b of backends) {
      if (b.drained) continue;
      live++;
      if (isHealthy(b, now)) healthy++;
    }
    return live > 0 && healthy * 100 < this.settings.panicThreshold * live;
  }

  /**
   * Some backend would be picked if it had a free slot: not drained, and healthy (or the pool is
   * in panic). When false, waiting for a slot is pointless.
   */
  servable(backends: readonly BalancerBackend[], now: number): boolean {
    if (this.panic(backends, now)) return true;
    return backends.some((b) => !b.drained && isHealthy(b, now));
  }

  pick<T extends BalancerBackend>(backends: readonly T[], options: PickOptions): T | undefined {
    const tier = this.tier(backends, options);
    if (tier === undefined) return undefined;
    return tier.length === 1 ? tier[0] : this.choose(tier, options.now);
  }

  /**
   * The backends a request may go to now, in the order given: those with a free slot, not
   * excluded (unless only excluded ones have one), of the best tier (healthy primaries, else
   * healthy backups; every primary in panic), and of those, the ones no Retry-After holds back
   * when there are any. Undefined when there are none.
   */
  tier<T extends BalancerBackend>(backends: readonly T[], options: PickOptions): T[] | undefined {
    const { now, exclude } = options;
    let usable = backends.filter((b) => canTake(b) && !exclude?.has(b));
    if (usable.length === 0 && exclude && exclude.size > 0) usable = backends.filter(canTake);
    if (usable.length === 0) return undefined;

    let tier: T[];
    if (this.panic(backends, now)) {
      const primaries = usable.filter((b) => !b.backup);
      tier = primaries.length > 0 ? primaries : usable;
    } else {
      tier = usable.filter((b) => !b.backup && isHealthy(b, now));
      if (tier.length === 0) tier = usable.filter((b) => b.backup && isHealthy(b, now));
      if (tier.length === 0) return undefined;
    }
    const ready = tier.filter((b) => b.notBefore <= now);
    return ready.length > 0 ? ready : tier;
  }

  /**
   * Whether a backend counts in a pool's average load, next to those of `tier`: it could serve
   * requests of that tier now, free slot or not (not drained; healthy, or the pool in panic).
   */
  serves(b: BalancerBackend, backup: boolean, panic: boolean, now: number): boolean {
    return !b.drained && b.backup === backup && (panic || isHealthy(b, now));
  }

  /** The weight a backend balances by now: its configured weight ramped by slow start. */
  weightOf(b: BalancerBackend, now: number): number {
    return b.weight * rampFactor(this.settings.slowStart, b.rampFrom, now);
  }

  private cost(b: BalancerBackend, now: number): number {
    return (
      ((b.inFlight + (b.othersInFlight ?? 0) + 1) ** this.settings.activeRequestBias * b.loadPenalty(now)) /
      this.weightOf(b, now)
    );
  }

  private choose<T extends BalancerBackend>(tier: T[], now: number): T | undefined {
    switch (this.settings.kind) {
      case "round_robin":
        return this.smoothRoundRobin(tier, now);
      case "random":
        return this.weightedRandom(tier, (b) => this.weightOf(b, now));
      case "least_request": {
        const w0 = this.weightOf(tier[0] as T, now);
        if (tier.every((b) => this.weightOf(b, now) === w0)) return this.powerOfTwo(tier, now);
        return this.weightedRandom(tier, (b) => 1 / this.cost(b, now));
      }
    }
  }

  private powerOfTwo<T extends BalancerBackend>(tier: T[], now: number): T | undefined {
    const i = Math.floor(this.random() * tier.length);
    let j = Math.floor(this.random() * (tier.length - 1));
    if (j >= i) j++;
    const a = tier[i];
    const b = tier[j];
    if (!a || !b) return a ?? b;
    return this.cost(b, now) < this.cost(a, now) ? b : a;
  }

  private weightedRandom<T extends BalancerBackend>(tier: T[], weightOf: (b: T) => number): T | undefined {
    let total = 0;
    for (const b of tier) total += weightOf(b);
    let r = this.random() * total;
    for (const b of tier) {
      r -= weightOf(b);
      if (r < 0) return b;
    }
    return tier[tier.length - 1];
  }

  private smoothRoundRobin<T extends BalancerBackend>(tier: T[], now: number): T | undefined {
    let total = 0;
    let best: T | undefined;
    for (const b of tier) {
      const w = this.weightOf(b, now);
      b.rrCurrent += w;
      total += w;
      if (!best || b.rrCurrent > best.rrCurrent) best = b;
    }
    if (best) best.rrCurrent -= total;
    return best;
  }
}
