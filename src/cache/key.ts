/**
 * Response-cache keys and the cacheability rule. Pure: no I/O, no clock.
 *
 * cacheKey = hex sha256 of the canonical JSON of
 *   ["floodgate-cache-v1", scope, pool, model, route, body-without-ignored-fields]
 * An array of JSON strings is unambiguous (no separator can be forged by a tenant or model
 * name), and the version tag lets a later format change every key at once.
 *
 * Canonical JSON: object keys sorted by UTF-16 code units at every depth, arrays in their order,
 * no whitespace, strings and numbers exactly as JSON.stringify writes them (so 1, 1.0 and 1e0
 * from a request body are the same number, and -0 is 0). Properties whose value JSON would drop
 * (undefined, functions, symbols) are dropped; in arrays they are null, as in JSON. The form is
 * written straight to a string, never into a new object, so a `__proto__` key in a parsed body
 * is plain data: it is hashed like any other key and cannot reach a prototype. A cycle (only
 * possible from code, never from JSON.parse) is a TypeError rather than a stack overflow.
 *
 * Top-level body fields left out of the key, because they do not change the answer's content
 * (fields of the same name deeper in the body, e.g. inside messages, are kept):
 *   user, safety_identifier  end-user ids for the provider's abuse tracking; tenants are already
 *                            kept apart by `scope`, and one user id per end user would make every
 *                            user miss on the same question
 *   stream                   a streamed request can be answered from a non-streamed entry and the
 *                            reverse (render.ts converts)
 *   stream_options           only says whether the usage chunk is sent (include_usage), which
 *                            render.ts adds or drops on replay
 *   metadata, store          OpenAI's stored-completions tagging; never reaches the model
 *   service_tier, priority   which processing lane (latency, price, vLLM's scheduling priority)
 *                            serves the request, not what it generates
 *   prompt_cache_key         a routing hint for the provider's prefix cache
 *   request_id               vLLM's tracing id: it labels the answer, and as a per-request value
 *                            it would make every request a miss
 * Everything else (messages, temperature, seed, max_tokens, tools, logprobs, response_format…)
 * is in the key: two requests that differ anywhere else are different questions.
 */
import { hash } from "node:crypto";

export const IGNORED_BODY_FIELDS: ReadonlySet<string> = new Set([
  "user",
  "safety_identifier",
  "stream",
  "stream_options",
  "metadata",
  "store",
  "service_tier",
  "priority",
  "prompt_cache_key",
  "request_id",
]);

const KEY_VERSION = "floodgate-cache-v1";

export interface CacheKeyParts {
  /** Whose cache: the tenant (or "" for an open gateway). Entries never cross scopes. */
  scope: string;
  pool: string;
  model: string;
  /** The API route, e.g. "/v1/chat/completions". */
  route: string;
  /** The parsed request body. */
  body: Record<string, unknown>;
}

export function cacheKey(parts: CacheKeyParts): string {
  const text = `[${JSON.stringify(KEY_VERSION)},${JSON.stringify(parts.scope)},${JSON.stringify(parts.pool)},${JSON.stringify(parts.model)},${JSON.stringify(parts.route)},${writeObject(parts.body, 0, undefined, IGNORED_BODY_FIELDS)}]`;
  // One-shot hash: no Hash object per key (createHash + update + digest cost 3x as much for a
  // request-sized text).
  return hash("sha256", text, "hex");
}

/** The canonical JSON text of a value (exported for tests and debugging). */
export function canonicalJson(value: unknown): string {
  return writeValue(value, 0, undefined) ?? "null";
}

/**
 * Past this depth the objects on the path are tracked, so a cycle is found: a cycle repeats
 * without end, so it always gets this deep, and a body from JSON.parse (limited to
 * server.maxJsonDepth) rarely does, so it costs no set.
 */
const TRACK_DEPTH = 64;

/**
 * The text is built by concatenation (V8 keeps it as a rope until the hash reads it once),
 * which measured 2x faster than pushing parts to an array and joining them.
 */
/** The value's text; undefined when JSON would omit it (undefined, function, symbol). */
function writeValue(value: unknown, depth: number, path: Set<object> | undefined): string | undefined {
  switch (typeof value) {
    case "string":
      return JSON.stringify(value);
    case "number":
      // JSON.stringify: shortest round-trip form, -0 → 0, NaN/Infinity → null.
      return JSON.stringify(value);
    case "boolean":
      return value ? "true" : "false";
    case "bigint":
      // Never from JSON.parse; written as the integer it is instead of throwing like JSON does.
      return value.toString();
    case "object":
      if (value === null) return "null";
      return Array.isArray(value)
        ? writeArray(value, depth, path)
        : writeObject(value as Record<string, unknown>, depth, path, undefined);
    default:
      return undefined;
  }
}

function writeArray(value: readonly unknown[], depth: number, path: Set<object> | undefined): string {
  if (depth >= TRACK_DEPTH) path = enter(value, path);
  let out = "[";
  for (let i = 0; i < value.length; i++) {
    if (i > 0) out += ",";
    out += writeValue(value[i], depth + 1, path) ?? "null";
  }
  path?.delete(value);
  return `${out}]`;
}

function writeObject(
  value: Record<string, unknown>,
  depth: number,
  path: Set<object> | undefined,
  skip: ReadonlySet<string> | undefined,
): string {
  if (depth >= TRACK_DEPTH) path = enter(value, path);
  let out = "{";
  let first = true;
  // Own enumerable string keys only (what JSON.stringify sees); an own "__proto__" is among them.
  const keys = Object.keys(value);
  if (keys.length > 1) keys.sort();
  for (const key of keys) {
    if (skip?.has(key)) continue;
    // Own-property read: a "__proto__" data property shadows the accessor on Object.prototype,
    // and an accessor's getter is not run (JSON.parse makes none).
    const text = writeValue(Object.getOwnPropertyDescriptor(value, key)?.value, depth + 1, path);
    if (text === undefined) continue;
    out += first ? `${JSON.stringify(key)}:${text}` : `,${JSON.stringify(key)}:${text}`;
    first = false;
  }
  path?.delete(value);
  return `${out}}`;
}

function enter(value: object, path: Set<object> | undefined): Set<object> {
  const set = path ?? new Set<object>();
  if (set.has(value)) throw new TypeError("cacheKey: the request body has a cycle");
  set.add(value);
  return set;
}

export type CacheRule = "deterministic" | "always";

export type Cacheability = { ok: true } | { ok: false; reason: string };

/**
 * Whether an answer to this request may be stored and reused.
 *   every rule      `n`, when present and not null, must be 1: an entry holds one choice-set and
 *                   n > 1 asks for deliberately different samples
 *   "deterministic" the request must not sample at random: `temperature` exactly 0 (greedy) or
 *                   an integer `seed` (the caller asked for reproducible sampling). A request
 *                   without temperature gets the server's default (1), so it is not cacheable.
 *                   Embeddings (route "/v1/embeddings") are deterministic by nature.
 *   "always"        the operator accepts that a repeated question gets the same sample
 * logprobs, top_logprobs and tools change the answer's shape, not its reproducibility: they are
 * in the key and are cacheable.
 */
/** The one answer for every cacheable request (no object per request). */
const CACHEABLE: Cacheability = Object.freeze({ ok: true });

export function isCacheable(body: Record<string, unknown>, rule: CacheRule, route?: string): Cacheability {
  const n = own(body, "n");
  if (n !== undefined && n !== null && n !== 1) {
    return { ok: false, reason: `n is ${JSON.stringify(n)}; only n = 1 is cached` };
  }
  if (rule === "always" || route === "/v1/embeddings") return CACHEABLE;
  if (own(body, "temperature") === 0) return CACHEABLE;
  const seed = own(body, "seed");
  if (typeof seed === "number" && Number.isInteger(seed)) return CACHEABLE;
  return { ok: false, reason: "sampling is random: neither temperature 0 nor an integer seed" };
}

/** An own property only, so `__proto__` or inherited names never answer for the body. */
function own(body: Record<string, unknown>, key: string): unknown {
  return Object.hasOwn(body, key) ? body[key] : undefined;
}
