/**
 * A request's place in admission: its band (the tenant's priority, or the pool's
 * `defaultPriority` for a request with no tenant), lowered, never raised, by
 * `x-floodgate-priority`; its deadline (the band's maxWait from arrival, shortened by
 * `x-floodgate-max-wait`); its tenant and weight for fair queuing; its prefix-affinity key when
 * the pool keeps prefixes or sessions together (src/upstream/affinity.ts); patience for a job's
 * run (src/jobs/runner.ts), which is never refused on the estimate of its wait.
 */
import type { RequestContext } from "../context.js";
import { errors } from "../errors.js";
import type { Admit } from "../proxy/exchange.js";
import { type AffinityKey, affinityKey } from "../upstream/affinity.js";
import type { UpstreamPool } from "../upstream/pool.js";
import { promptBlocks } from "../upstream/prefix-model.js";
import { BAND_NAMES, type BandName } from "./queue.js";

export const PRIORITY_HEADER = "x-floodgate-priority";
export const MAX_WAIT_HEADER = "x-floodgate-max-wait";

export function admitFor(state: RequestContext, pool: UpstreamPool): Admit {
  const config = pool.config.admission;
  const tenant = state.tenant;
  const headers = state.incoming?.headers;
  let band = BAND_NAMES.indexOf(tenant?.priority ?? config.defaultPriority);
  const asked = headers?.[PRIORITY_HEADER];
  if (asked !== undefined) {
    const index = typeof asked === "string" ? BAND_NAMES.indexOf(asked.trim() as BandName) : -1;
    if (index === -1) {
      throw errors.invalidRequest(
        `The ${PRIORITY_HEADER} header must be one of ${BAND_NAMES.join(", ")}.`,
        PRIORITY_HEADER,
      );
    }
    band = Math.max(band, index);
  }
  let maxWait = config.bands[BAND_NAMES[band] ?? "interactive"].maxWait;
  const wait = headers?.[MAX_WAIT_HEADER];
  if (wait !== undefined) maxWait = Math.min(maxWait, parseWait(wait));
  return {
    band,
    tenant: tenant?.id ?? "",
    weight: tenant?.weight ?? 1,
    deadline: state.startedAt + maxWait,
    // A job's run waits its turn: only its deadline or a full queue refuses it, never the estimate.
    patient: state.deferred,
    affinity: affinityOf(state, pool),
  };
}

/** The request's affinity key, with its prompt's blocks when the pool models the caches. */
function affinityOf(state: RequestContext, pool: UpstreamPool): AffinityKey | undefined {
  const affinity = pool.config.affinity;
  if (affinity.by === "off") return undefined;
  const hash = affinityKey(state.body, affinity, state.incoming?.headers);
  if (hash === undefined) return undefined;
  const maxBlocks = pool.modelBlocks;
  if (affinity.by !== "prefix" || maxBlocks === 0) return { hash };
  return { hash, blocks: promptBlocks(state.body, affinity.blockChars, maxBlocks) };
}

/** Milliseconds, as a plain number or with a unit (250ms, 2s, 1m). */
function parseWait(value: string | string[]): number {
  const match = typeof value === "string" ? /^\s*(\d+(?:\.\d+)?)(ms|s|m)?\s*$/.exec(value) : null;
  if (!match) {
    throw errors.invalidRequest(
      `The ${MAX_WAIT_HEADER} header must be a duration such as 500, 500ms or 2s.`,
      MAX_WAIT_HEADER,
    );
  }
  const unit = match[2] ?? "ms";
  return Number(match[1]) * (unit === "ms" ? 1 : unit === "s" ? 1000 : 60_000);
}
