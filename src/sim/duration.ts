/**
 * Durations as an operator writes them on the command line: `250ms`, `5s`, `1m`, `1h`, or a plain
 * number of milliseconds. Fractions are allowed (`1.5s`).
 */

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds, or null when the text is not a duration. */
export function parseDurationMs(text: string): number | null {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (match === null) return null;
  const value = Number(match[1]);
  const unit = UNIT_MS[match[2] ?? "ms"] ?? 1;
  return value * unit;
}
