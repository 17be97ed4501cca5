/**
 * Expiries of blobs and locks, checked the same way by both stores so that they agree on what
 * they accept: Redis `SET ... PX` takes a whole number of ms ≥ 1 and answers an error otherwise.
 */

/** ttlMs as a whole number of ms ≥ 1, rounded up: nothing lives shorter than asked. */
export function ttlOf(what: string, ttlMs: number): number {
  if (!(Number.isFinite(ttlMs) && ttlMs > 0)) {
    throw new RangeError(`${what}: ttlMs must be a finite number > 0, got ${ttlMs}`);
  }
  return Math.ceil(ttlMs);
}
