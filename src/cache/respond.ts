/**
 * The cache at the HTTP edge: reading a client's Cache-Control, turning a complete backend
 * answer into an entry (with its lifetimes), and rendering an entry for a client, streamed or
 * not, whichever form it was recorded in.
 */
import { Readable } from "node:stream";
import type { CacheConfig } from "../config/index.js";
import { type CachedAnswer, type CachedUsage, type CacheRoute, isUsage } from "./entry.js";
import { jsonToStream, replayEvents, streamToJson } from "./render.js";

export interface CacheDirectives {
  readonly noStore: boolean;
  readonly noCache: boolean;
}

const NO_DIRECTIVES: CacheDirectives = Object.freeze({ noStore: false, noCache: false });

/** `no-store`: neither read nor write the cache; `no-cache`: do not read, do store (revalidate). */
export function cacheDirectives(header: string | string[] | undefined): CacheDirectives {
  // Most requests send none: no string to build, no pattern to run.
  if (header === undefined) return NO_DIRECTIVES;
  const text = (Array.isArray(header) ? header.join(",") : (header ?? "")).toLowerCase();
  return { noStore: /(^|,)\s*no-store\s*(,|$)/.test(text), noCache: /(^|,)\s*no-cache\s*(,|$)/.test(text) };
}

/**
 * Fresh for ttl plus up to jitterPercent more (so entries written together do not expire
 * together), then stale for as long as the longer stale window allows.
 */
export function lifetimes(
  config: CacheConfig,
  now: number,
  random = Math.random,
): { freshUntil: number; staleUntil: number } {
  const freshUntil = now + config.ttl * (1 + (config.jitterPercent / 100) * random());
  return { freshUntil, staleUntil: freshUntil + Math.max(config.staleWhileRevalidate, config.staleIfError) };
}

interface Common {
  route: CacheRoute;
  model: string;
  config: CacheConfig;
  now: number;
}

/** An entry from a complete non-streamed 200 answer, parsed (size is checked on store). */
export function answerFromJson(c: Common, record: Record<string, unknown>): CachedAnswer {
  const usage = normalizeUsage(record.usage);
  return {
    v: 1,
    route: c.route,
    model: c.model,
    json: record,
    ...(usage ? { usage } : {}),
    createdAt: c.now,
    ...lifetimes(c.config, c.now),
  };
}

/** An entry from a recorded stream that reached its end, or undefined. */
export function answerFromStream(
  c: Common,
  events: CachedAnswer["events"],
  usage: Record<string, unknown> | undefined,
): CachedAnswer | undefined {
  if (!events || events.length === 0) return undefined;
  const u = normalizeUsage(usage);
  return {
    v: 1,
    route: c.route,
    model: c.model,
    events,
    ...(u ? { usage: u } : {}),
    createdAt: c.now,
    ...lifetimes(c.config, c.now),
  };
}

/** Embeddings report no completion tokens; an entry's usage always has all three counts. */
function normalizeUsage(usage: unknown): CachedUsage | undefined {
  if (usage === null || typeof usage !== "object") return undefined;
  const u = usage as Record<string, unknown>;
  const candidate = {
    prompt_tokens: u.prompt_tokens,
    completion_tokens: u.completion_tokens ?? 0,
    total_tokens: u.total_tokens,
  };
  return isUsage(candidate) ? candidate : undefined;
}

export interface Rendered {
  contentType: string;
  body: string | Readable;
}

/**
 * An entry as the client asked for it. A stream replays the recorded events (or renders a
 * stored JSON answer as events) at once, or, with replay "paced", as far apart as recorded.
 */
export function render(
  answer: CachedAnswer,
  stream: boolean,
  includeUsage: boolean,
  paced: boolean,
): Rendered {
  if (!stream) {
    return { contentType: "application/json", body: JSON.stringify(answer.json ?? streamToJson(answer)) };
  }
  const payloads = answer.events ? replayEvents(answer, includeUsage) : jsonToStream(answer, includeUsage);
  const lines = [...payloads.map((p) => `data: ${p}\n\n`), "data: [DONE]\n\n"];
  if (!paced || !answer.events) return { contentType: "text/event-stream", body: lines.join("") };
  const times = answer.events.map((e) => e.at);
  return { contentType: "text/event-stream", body: Readable.from(paceLines(lines, times)) };
}

async function* paceLines(lines: string[], times: number[]): AsyncGenerator<string> {
  const start = performance.now();
  for (let i = 0; i < lines.length; i++) {
    const at = times[Math.min(i, times.length - 1)] ?? 0;
    const wait = start + at - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    yield lines[i] as string;
  }
}
