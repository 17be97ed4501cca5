/**
 * Token-bucket arithmetic, as a pure function. The memory store runs it; the Redis store runs
 * the same steps in Lua (lua-scripts.ts), in the same order, on the same IEEE doubles, so both
 * give bit-identical answers for the same inputs (checked by an integration property test).
 *
 * State {tokens, ts} (ts in ms). A bucket never seen (or expired) is {burst, now}. Each call:
 *   elapsed  = max(0, now − ts)                       a clock going back adds nothing
 *   tokens   = min(burst, tokens + elapsed × ratePerSec / 1000)   fractional tokens kept
 *   take(c)  : c' = max(0, c); if tokens ≥ c' − ε then tokens −= c', allowed (else untouched);
 *              so take(0) reads, and is allowed unless the bucket is in debt
 *   adjust(d): tokens = min(burst, tokens − d), always (may go negative: a debt refill pays back)
 *   ts       = max(ts, now)
 * Returns
 *   remaining = tokens
 *   msToNext  = 0 after an allowed take with c' > 0; otherwise, with need = c' for a take
 *               with c' > 0 and 1 for a read (c' = 0) or an adjust:
 *               0 if tokens ≥ need − ε, else (need − tokens) × 1000 / ratePerSec
 *   msToFull  = max(0, burst − tokens) × 1000 / ratePerSec
 *   expireMs  = min(ceil(msToFull) + IDLE_MARGIN_MS, MAX_EXPIRE_MS): idle that long, the
 *               bucket is full, so forgetting it (PEXPIRE / memory sweep) changes no answer
 *               and bounds memory. An adjust reports allowed = true (it is always applied).
 *
 * ε = 1e-9 × max(1, burst): a refill applied in many small steps drifts (7 tokens/s in 1 ms
 * steps reaches 6.999999999999879 after 1 s, not 7); without ε a client that waited exactly
 * long enough would be refused. ε is far below any token a caller can see, and a take admitted
 * by ε leaves a debt of at most ε that the next refill pays back, so admitted tokens never
 * exceed burst + rate × elapsed / 1000 + ε.
 *
 * A take costing more than burst is never allowed; its msToNext is the formula's value (as if
 * there were no cap), so callers refuse or cap such a cost themselves.
 *
 * Several buckets at once (applyTakes: all of a request's limits and its token reservation in
 * one store call): every bucket is refilled as above; the required takes are all taken if each
 * fits (tokens ≥ c' − ε), else none is; an optional take is taken if it fits and the required
 * ones were taken, and its refusal refuses nothing else. Each bucket then steps exactly as
 * applyBucket would with its own take (a bucket not taken: as a refused take, which leaves the
 * tokens as refilled), and reports `allowed` = it fits, whatever the others did.
 */
import type { BucketResult, BucketSpec, BucketTake } from "./types.js";

export interface BucketState {
  tokens: number;
  /** ms on the store's clock of the last call (never moves back). */
  ts: number;
}

export type BucketOp = "take" | "adjust";

export interface BucketStep {
  state: BucketState;
  result: BucketResult;
  /** Integer ms after which an untouched bucket may be forgotten (it is full by then). */
  expireMs: number;
}

/** Idle buckets are forgotten this long after they are full again. */
export const IDLE_MARGIN_MS = 1000;

/** Caps the expiry (~300 years) so PEXPIRE always gets an integer it accepts, however deep a debt. */
export const MAX_EXPIRE_MS = 1e13;

/** Relative tolerance for float drift; see the header. The Lua script has the same constant. */
export const EPSILON_PER_TOKEN = 1e-9;

/**
 * One call on a bucket: `amount` is the cost for "take" and the delta for "adjust".
 * `state` undefined means a new (full) bucket.
 */
export function applyBucket(
  state: BucketState | undefined,
  op: BucketOp,
  amount: number,
  ratePerSec: number,
  burst: number,
  now: number,
): BucketStep {
  let tokens = burst;
  let ts = now;
  if (state !== undefined) {
    tokens = state.tokens;
    ts = state.ts;
  }
  const epsilon = EPSILON_PER_TOKEN * Math.max(1, burst);
  const elapsed = Math.max(0, now - ts);
  tokens = Math.min(burst, tokens + (elapsed * ratePerSec) / 1000);

  let allowed = true;
  let msToNext = 0;
  if (op === "take") {
    const cost = Math.max(0, amount);
    if (tokens >= cost - epsilon) {
      tokens = tokens - cost;
    } else {
      allowed = false;
    }
    if (cost > 0) {
      if (!allowed) msToNext = ((cost - tokens) * 1000) / ratePerSec;
    } else if (tokens < 1 - epsilon) {
      msToNext = ((1 - tokens) * 1000) / ratePerSec;
    }
  } else {
    tokens = Math.min(burst, tokens - amount);
    if (tokens < 1 - epsilon) msToNext = ((1 - tokens) * 1000) / ratePerSec;
  }
  ts = Math.max(ts, now);

  const msToFull = (Math.max(0, burst - tokens) * 1000) / ratePerSec;
  return {
    state: { tokens, ts },
    result: { allowed, remaining: tokens, msToNext, msToFull },
    expireMs: Math.min(Math.ceil(msToFull) + IDLE_MARGIN_MS, MAX_EXPIRE_MS),
  };
}

/** What applyTakes did: whether the required takes were taken, and each bucket's step. */
export interface TakesStep {
  taken: boolean;
  steps: BucketStep[];
}

/**
 * Several takes at once (see the header): `states[i]` is the state of `takes[i]`'s bucket
 * (undefined: new). The Lua of the Redis store (TAKES_LUA) runs the same steps.
 */
export function applyTakes(
  states: readonly (BucketState | undefined)[],
  takes: readonly BucketTake[],
  now: number,
): TakesStep {
  const n = takes.length;
  const fits: boolean[] = new Array<boolean>(n);
  let taken = true;
  for (let i = 0; i < n; i++) {
    const take = takes[i] as BucketTake;
    const fit = refilled(states[i], take.spec, now) >= Math.max(0, take.cost) - epsilonOf(take.spec.burst);
    fits[i] = fit;
    if (!fit && take.optional !== true) taken = false;
  }
  const steps: BucketStep[] = new Array<BucketStep>(n);
  for (let i = 0; i < n; i++) {
    const take = takes[i] as BucketTake;
    const { ratePerSec, burst } = take.spec;
    if (taken && fits[i] === true) {
      steps[i] = applyBucket(states[i], "take", take.cost, ratePerSec, burst, now);
    } else if (fits[i] === true) {
      // Fits, held back by another take's refusal: stepped as a refused take (its tokens as
      // refilled), reported as fitting, with nothing to wait for.
      const step = applyBucket(states[i], "take", Number.POSITIVE_INFINITY, ratePerSec, burst, now);
      step.result = {
        allowed: true,
        remaining: step.state.tokens,
        msToNext: 0,
        msToFull: step.result.msToFull,
      };
      steps[i] = step;
    } else {
      steps[i] = applyBucket(states[i], "take", take.cost, ratePerSec, burst, now);
    }
  }
  return { taken, steps };
}

/** The tokens of a bucket after its refill at `now` (the first steps of applyBucket). */
function refilled(state: BucketState | undefined, spec: BucketSpec, now: number): number {
  if (state === undefined) return spec.burst;
  const elapsed = Math.max(0, now - state.ts);
  return Math.min(spec.burst, state.tokens + (elapsed * spec.ratePerSec) / 1000);
}

function epsilonOf(burst: number): number {
  return EPSILON_PER_TOKEN * Math.max(1, burst);
}

/** Rejects specs the arithmetic cannot serve (a zero rate would never refill: infinite waits). */
export function checkBucketSpec(spec: BucketSpec): void {
  if (!(Number.isFinite(spec.ratePerSec) && spec.ratePerSec > 0)) {
    throw new RangeError(
      `bucket ${spec.key}: ratePerSec must be a finite number > 0, got ${spec.ratePerSec}`,
    );
  }
  if (!(Number.isFinite(spec.burst) && spec.burst > 0)) {
    throw new RangeError(`bucket ${spec.key}: burst must be a finite number > 0, got ${spec.burst}`);
  }
}

export function checkAmount(what: string, amount: number): void {
  if (!Number.isFinite(amount)) throw new RangeError(`${what} must be a finite number, got ${amount}`);
}
