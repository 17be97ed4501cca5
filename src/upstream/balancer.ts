/**
 * Backend choice within a pool.
 * - least_request with equal weights: power of two random choices on in-flight count
 *   (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing"; Envoy's default);
 * - least_request with unequal weights: the highest weight / (inFlight + 1)^bias, bias 1
 *   (Envoy's weighted least request);
 * - round_robin and random over the eligible backends.
 * Backups are considered only when no primary is eligible.
 */
import type { Backend } from "./backend.js";

export type BalancerKind = "least_request" | "round_robin" | "random";

export interface Balancer {
  pick(backends: readonly Backend[]): Backend | undefined;
}

export function eligible(backend: Backend): boolean {
  return !backend.full;
}

export function createBalancer(kind: BalancerKind, random: () => number = Math.random): Balancer {
  switch (kind) {
    case "round_robin": {
      let next = 0;
      return { pick: (backends) => pickTiered(backends, (list) => list[next++ % list.length]) };
    }
    case "random":
      return { pick: (backends) => pickTiered(backends, (list) => list[Math.floor(random() * list.length)]) };
    case "least_request":
      return { pick: (backends) => pickTiered(backends, (list) => leastRequest(list, random)) };
  }
}

function pickTiered(
  backends: readonly Backend[],
  choose: (list: readonly Backend[]) => Backend | undefined,
): Backend | undefined {
  const primaries = backends.filter((b) => !b.backup && eligible(b));
  if (primaries.length > 0) return choose(primaries);
  const backups = backends.filter((b) => b.backup && eligible(b));
  return backups.length > 0 ? choose(backups) : undefined;
}

function leastRequest(list: readonly Backend[], random: () => number): Backend | undefined {
  if (list.length <= 1) return list[0];
  const first = list[0];
  const equalWeights = first !== undefined && list.every((b) => b.weight === first.weight);
  if (equalWeights) {
    const a = list[Math.floor(random() * list.length)];
    let b = list[Math.floor(random() * (list.length - 1))];
    if (b === a) b = list[list.length - 1];
    if (!a || !b) return a ?? b;
    return b.inFlight < a.inFlight ? b : a;
  }
  let best: Backend | undefined;
  let bestScore = -1;
  for (const b of list) {
    const score = b.weight / (b.inFlight + 1);
    if (score > bestScore) {
      best = b;
      bestScore = score;
    }
  }
  return best;
}
