/** The version in floodgate's package.json, found from this module: src/ under tsx, dist/src/ when built. */
import { readFileSync } from "node:fs";

export function packageVersion(): string {
  for (const candidate of ["../package.json", "../../package.json"]) {
    let pkg: unknown;
    try {
      pkg = JSON.parse(readFileSync(new URL(candidate, import.meta.url), "utf8"));
    } catch {
      continue;
    }
    const { name, version } = (pkg ?? {}) as { name?: unknown; version?: unknown };
    if (name === "floodgate" && typeof version === "string") return version;
  }
  throw new Error(`floodgate's package.json was not found above ${new URL(".", import.meta.url).pathname}`);
}
