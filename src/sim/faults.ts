/**
 * Faults the simulator can inject, set at start and changed at run time (POST /sim/faults or
 * SimServer.setFaults). Request-level faults (error, latency, hang, drop) apply to the inference
 * endpoints only, so the admin API, /metrics and /v1/models stay usable while a test breaks the
 * backend; `unhealthy` is the one that targets /health. Socket-level faults (refuse, reset) hit
 * everything, which is the point of them.
 */

export interface SimFaults {
  /** Fraction 0..1 of inference requests answered with `errorStatus` before any work. */
  errorRate: number;
  /** HTTP status of injected errors (e.g. 500, 503, 429). */
  errorStatus: number;
  /** Seconds for the `retry-after` header on injected 429/503; null sends none. */
  errorRetryAfterS: number | null;
  /** Wall-clock delay before an inference response starts (not scaled by timeScale). */
  latencyMs: number;
  /** Accept inference requests and never answer until the client goes away. */
  hang: boolean;
  /** Destroy the connection after this many tokens of a stream (mid-body for non-streams); null: off. */
  dropMidStreamAfterTokens: number | null;
  /** Stop listening (ECONNREFUSED); listen again on the same port when set back to false. */
  refuseConnections: boolean;
  /** Reset every new connection as it is accepted (ECONNRESET). */
  resetConnections: boolean;
  /** Cold-GPU window after start or after refusing ends: timings start 5x slower, easing to 1x. */
  slowStartMs: number;
  /** Answer /health with 503 while the inference endpoints keep working. */
  unhealthy: boolean;
}

export const defaultSimFaults: Readonly<SimFaults> = Object.freeze({
  errorRate: 0,
  errorStatus: 500,
  errorRetryAfterS: null,
  latencyMs: 0,
  hang: false,
  dropMidStreamAfterTokens: null,
  refuseConnections: false,
  resetConnections: false,
  slowStartMs: 0,
  unhealthy: false,
});

type FaultKind = "fraction" | "status" | "nonNegative" | "nonNegativeOrNull" | "countOrNull" | "boolean";

const FAULT_KINDS: Record<keyof SimFaults, FaultKind> = {
  errorRate: "fraction",
  errorStatus: "status",
  errorRetryAfterS: "nonNegativeOrNull",
  latencyMs: "nonNegative",
  hang: "boolean",
  dropMidStreamAfterTokens: "countOrNull",
  refuseConnections: "boolean",
  resetConnections: "boolean",
  slowStartMs: "nonNegative",
  unhealthy: "boolean",
};

function isFaultKey(key: string): key is keyof SimFaults {
  return Object.hasOwn(FAULT_KINDS, key);
}

function checkValue(key: string, kind: FaultKind, value: unknown): string | null {
  const finite = typeof value === "number" && Number.isFinite(value);
  switch (kind) {
    case "fraction":
      return finite && value >= 0 && value <= 1 ? null : `${key} must be a number between 0 and 1`;
    case "status":
      return finite && Number.isInteger(value) && value >= 400 && value <= 599
        ? null
        : `${key} must be an HTTP error status (400..599)`;
    case "nonNegative":
      return finite && value >= 0 ? null : `${key} must be a non-negative number`;
    case "nonNegativeOrNull":
      return value === null || (finite && value >= 0) ? null : `${key} must be a non-negative number or null`;
    case "countOrNull":
      return value === null || (finite && Number.isInteger(value) && value >= 0)
        ? null
        : `${key} must be a non-negative integer or null`;
    case "boolean":
      return typeof value === "boolean" ? null : `${key} must be true or false`;
  }
}

/**
 * Validates a partial fault set from an untrusted source (JSON body, CLI, options).
 * Returns the accepted fields, or the first problem found as a message naming the field.
 */
export function parseFaults(
  input: unknown,
): { ok: true; faults: Partial<SimFaults> } | { ok: false; error: string } {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    return { ok: false, error: "faults must be a JSON object" };
  }
  const faults: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(input)) {
    if (!isFaultKey(key)) {
      return { ok: false, error: `unknown fault "${key}" (known: ${Object.keys(FAULT_KINDS).join(", ")})` };
    }
    const problem = checkValue(key, FAULT_KINDS[key], value);
    if (problem !== null) return { ok: false, error: problem };
    faults[key] = value;
  }
  // Every field was checked against its kind above, which is exactly Partial<SimFaults>.
  return { ok: true, faults: faults as Partial<SimFaults> };
}
