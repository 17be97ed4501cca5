/**
 * Cold-GPU slow start: right after the model loads (or the server comes back) the first batches
 * run slower while kernels are compiled/autotuned and caches warm. Modelled as a multiplier on
 * simulated times that falls linearly from SLOW_START_MAX_FACTOR to 1 over the window:
 *
 *   factor(t) = 1 + (SLOW_START_MAX_FACTOR - 1) * max(0, 1 - elapsed / windowMs)
 *
 * Linear, like Envoy's slow-start ramp, so a gateway's own slow start can be tested against it.
 */

export const SLOW_START_MAX_FACTOR = 5;

export function slowStartFactor(elapsedMs: number, windowMs: number): number {
  if (windowMs <= 0 || elapsedMs >= windowMs) return 1;
  const remaining = 1 - Math.max(0, elapsedMs) / windowMs;
  return 1 + (SLOW_START_MAX_FACTOR - 1) * remaining;
}
