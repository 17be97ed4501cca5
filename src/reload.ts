/**
 * Hot reload: what a new config may change while the gateway runs, and the watch of its file.
 *
 * A reload (SIGHUP, POST /admin/reload, or a change of the file when `reload.watch` is on) reads
 * and validates the whole file first; on any error the running config stays and every error is
 * reported (the log, the admin answer, floodgate_config_reloads_total{result="failure"}). A valid
 * config becomes the next generation:
 * - keys, tenants, limits, token budgets, routes, fallbacks and every pool setting apply to
 *   requests that arrive from then on; a request under way finishes on the generation it
 *   started with (its stages, its pool timeouts), and a queued one keeps the deadline it
 *   entered with until dispatch;
 * - pools that stay keep their backends' state (health, ejections, breakers, slow start,
 *   in-flight counts, drain flags); new backends join through a health check and slow start;
 *   removed ones drain; a removed pool refuses its queue with retry headers (its requests'
 *   fallback chains may take them);
 * - the cache and the store's buckets, leases and reservations survive (they live in the store);
 * - the sections bound to sockets, processes or memory at start (RESTART_SECTIONS) are kept as
 *   they are, and the reload says which of them changed and need a restart.
 */
import { readFileSync, watch as watchFolder } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, dirname } from "node:path";
import { isDeepStrictEqual } from "node:util";
import type { GatewayConfig } from "./config/index.js";
import type { PoolChanges } from "./upstream/pool.js";

/** Sections a running gateway cannot change: a reload reports them, the restart applies them. */
export const RESTART_SECTIONS = [
  "listen",
  "admin",
  "server",
  "store",
  "log",
  "cache",
  "dns",
  "reload",
] as const;

export interface ReloadReport {
  ok: boolean;
  /** The generation running after the reload (unchanged when it failed). */
  generation: number;
  trigger: string;
  /** Every problem found, each with its YAML path (the running config stayed). */
  errors: string[];
  /** Sections that changed but apply only at the next start (the rest of the reload applied). */
  restartNeeded: string[];
  pools: PoolChanges | undefined;
}

/** The restart-only sections that differ; the admin token alone applies at once. */
export function restartNeeded(running: GatewayConfig, next: GatewayConfig): string[] {
  const changed: string[] = [];
  for (const section of RESTART_SECTIONS) {
    const a = section === "admin" ? { ...running.admin, token: undefined } : running[section];
    const b = section === "admin" ? { ...next.admin, token: undefined } : next[section];
    if (!isDeepStrictEqual(a, b)) changed.push(section);
  }
  return changed;
}

/**
 * Calls onChange when the file's content changes. The folder is watched, not the file: a
 * Kubernetes ConfigMap update swaps a symlink (`..data`) in the folder, and an editor that
 * saves by rename replaces the file's inode; both would end a watch on the file itself.
 * Events are debounced, and a change is one of content (the same bytes written again is none).
 */
export function watchConfigFile(
  file: string,
  debounceMs: number,
  onChange: () => void,
  onError: (err: unknown) => void,
): () => void {
  // The content to compare with, read before the watch starts: read asynchronously, it could
  // come from a change made right after, which would then never count as one.
  let last = readOrUndefined(file);
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  const name = basename(file);
  const check = async () => {
    try {
      const text = await readFile(file, "utf8");
      if (closed || text === last) return;
      last = text;
      onChange();
    } catch (err) {
      // Mid-swap the file may be missing for a moment: the next event reads it again.
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") onError(err);
    }
  };
  const watcher = watchFolder(dirname(file), (_event, changed) => {
    // ConfigMap swaps touch `..data` and timestamped folders, not the file's own name.
    if (changed !== null && changed !== name && !changed.startsWith("..")) return;
    clearTimeout(timer);
    timer = setTimeout(() => void check(), debounceMs);
  });
  watcher.on("error", onError);
  watcher.unref();
  return () => {
    closed = true;
    clearTimeout(timer);
    watcher.close();
  };
}

function readOrUndefined(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}
