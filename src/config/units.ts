/**
 * Durations and sizes as operators write them in YAML: `250ms`, `5s`, `10m`, `1h`; `512kb`, `8mb`.
 * Plain numbers are not accepted for either: a bare `30` is ambiguous (seconds? ms?) and a
 * config that guesses wrong fails in production, not at start.
 */

export const DURATION_PATTERN = "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$";
export const SIZE_PATTERN = "^[0-9]+([bB]|[kKmMgG][bB])$";

const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const SIZE_BYTES: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

/** Milliseconds in a duration string; throws on anything but `<number><ms|s|m|h>`. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  const unit = match?.[2];
  if (!match || unit === undefined) {
    throw new Error(`"${text}" is not a duration: write a number and a unit, such as 250ms, 5s, 10m or 1h`);
  }
  return Math.round(Number(match[1]) * (DURATION_MS[unit] ?? 1));
}

/** Bytes in a size string; throws on anything but `<integer><b|kb|mb|gb>`. */
export function parseSize(text: string): number {
  const match = /^(\d+)(b|kb|mb|gb)$/i.exec(text.trim());
  const unit = match?.[2]?.toLowerCase();
  if (!match || unit === undefined) {
    throw new Error(`"${text}" is not a size: write an integer and a unit, such as 512kb or 8mb`);
  }
  return Number(match[1]) * (SIZE_BYTES[unit] ?? 1);
}

/** The inverse of parseDuration for messages and `floodgate check` output. */
export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/**
 * A token bucket as an operator thinks of it: `5/s (burst 10)`, `100/m`, `3/10s`. The burst is
 * shown only when it differs from the rate (its default).
 */
export function formatRate(rate: number, perMs: number, burst?: number): string {
  const per =
    perMs === 1000 ? "s" : perMs === 60_000 ? "m" : perMs === 3_600_000 ? "h" : formatDuration(perMs);
  return `${rate}/${per}${burst === undefined || burst === rate ? "" : ` (burst ${burst})`}`;
}
