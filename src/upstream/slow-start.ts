/**
 * Slow start (Envoy's formula): a backend that (re)joins gets its weight scaled by
 *   f(t) = max(minWeightPercent / 100, (t / window)^(1 / aggression))   for 0 ≤ t < window,
 * and 1 after the window, where t is the time since it joined. A GPU server that just came back
 * has cold caches (CUDA graphs, prefix cache) and would be swamped by its full share at once.
 */
import type { SlowStartConfig } from "../config/index.js";

export function rampFactor(config: SlowStartConfig, rampFrom: number, now: number): number {
  if (config.window <= 0) return 1;
  const t = now - rampFrom;
  if (t >= config.window) return 1;
  if (t <= 0) return Math.max(config.minWeightPercent / 100, 0);
  const f = (t / config.window) ** (1 / config.aggression);
  return Math.max(config.minWeightPercent / 100, f);
}
