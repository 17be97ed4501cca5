/**
 * The stored form of one cached answer, the same whether it arrived streamed or not and
 * whichever store holds it (memory or Redis), so any replica can serve any entry in either form
 * (render.ts converts).
 *
 * Encoding: UTF-8 JSON of the known fields only, tagged `v: 1`. JSON because answers are JSON
 * already, and a human can read an entry in redis-cli. Decoding trusts nothing: a store may hold
 * garbage, a truncated write, or an entry from a later floodgate with another version, and all
 * of those are a cache miss (undefined), never an exception on the request path. Decoding
 * rebuilds the object from checked fields, so unknown fields are dropped, not carried along.
 */

import { OPENAI_ROUTES, type OpenAIRoute } from "../proxy/routes.js";

export const ENTRY_VERSION = 1;

/** Every OpenAI route's answers can be cached. */
export type CacheRoute = OpenAIRoute;

/** Embeddings report no completion tokens: store completion_tokens 0 for them. */
export interface CachedUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface CachedEvent {
  /** The SSE `data:` payload, as the backend sent it. */
  data: string;
  /** ms since the first event. */
  at: number;
}

export interface CachedAnswer {
  v: 1;
  route: CacheRoute;
  model: string;
  /**
   * The answer as the backend sent it: a non-streamed JSON body, or the ordered SSE `data:`
   * payloads of a stream (without the final [DONE]), each with its ms offset from the first.
   */
  json?: Record<string, unknown>;
  events?: CachedEvent[];
  usage?: CachedUsage;
  /** epoch ms */
  createdAt: number;
  /** epoch ms: until then the entry is served as is. */
  freshUntil: number;
  /** epoch ms (>= freshUntil): until then it may be served stale while refreshed. */
  staleUntil: number;
}

export function encodeEntry(e: CachedAnswer): Buffer {
  const out: CachedAnswer = {
    v: 1,
    route: e.route,
    model: e.model,
    createdAt: e.createdAt,
    freshUntil: e.freshUntil,
    staleUntil: e.staleUntil,
  };
  if (e.json !== undefined) out.json = e.json;
  if (e.events !== undefined) out.events = e.events.map((ev) => ({ data: ev.data, at: ev.at }));
  if (e.usage !== undefined) out.usage = pickUsage(e.usage);
  return Buffer.from(JSON.stringify(out), "utf8");
}

/** The entry, or undefined for anything that is not a valid version-1 entry. Never throws. */
export function decodeEntry(b: Buffer): CachedAnswer | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(b.toString("utf8"));
  } catch {
    return undefined;
  }
  if (!isRecord(raw) || raw.v !== ENTRY_VERSION) return undefined;
  const { route, model, createdAt, freshUntil, staleUntil, json, events, usage } = raw;
  if (!isRoute(route) || typeof model !== "string") return undefined;
  if (!isFiniteNumber(createdAt) || !isFiniteNumber(freshUntil) || !isFiniteNumber(staleUntil))
    return undefined;
  if (staleUntil < freshUntil) return undefined;
  const out: CachedAnswer = { v: 1, route, model, createdAt, freshUntil, staleUntil };
  if (json !== undefined) {
    if (!isRecord(json)) return undefined;
    out.json = json;
  }
  if (events !== undefined) {
    if (!Array.isArray(events)) return undefined;
    const list: CachedEvent[] = [];
    for (const ev of events) {
      if (!isRecord(ev) || typeof ev.data !== "string" || !isFiniteNumber(ev.at)) return undefined;
      list.push({ data: ev.data, at: ev.at });
    }
    out.events = list;
  }
  // An entry with nothing to answer with is as useless as garbage.
  if (out.json === undefined && out.events === undefined) return undefined;
  if (usage !== undefined) {
    if (!isUsage(usage)) return undefined;
    out.usage = pickUsage(usage);
  }
  return out;
}

function pickUsage(u: CachedUsage): CachedUsage {
  return {
    prompt_tokens: u.prompt_tokens,
    completion_tokens: u.completion_tokens,
    total_tokens: u.total_tokens,
  };
}

export function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function isFiniteNumber(x: unknown): x is number {
  return typeof x === "number" && Number.isFinite(x);
}

function isRoute(x: unknown): x is CacheRoute {
  return typeof x === "string" && (OPENAI_ROUTES as readonly string[]).includes(x);
}

function isCount(x: unknown): x is number {
  return isFiniteNumber(x) && x >= 0;
}

/** A usage object with the three counts (token counts are non-negative). */
export function isUsage(x: unknown): x is CachedUsage {
  return isRecord(x) && isCount(x.prompt_tokens) && isCount(x.completion_tokens) && isCount(x.total_tokens);
}
