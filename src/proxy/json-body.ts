/**
 * Checks on a JSON request body before it is parsed: strict UTF-8, and a bound on nesting.
 *
 * JSON.parse itself takes any depth, but every walk over the body afterwards (the cache key,
 * the token estimate, the rewrites for usage and fallback) is recursive: a 200 KB body nested
 * 100,000 deep would overflow the stack there, a 500 for a client's mistake. Bounding the depth
 * at parse time makes every later walk safe. The scan is one pass over the bytes, skipping
 * string contents (where brackets are text) and escapes; a body shorter than the bound cannot
 * exceed it and is not scanned at all.
 *
 * Invalid UTF-8 is refused rather than decoded to U+FFFD: the backend gets the raw bytes, so the
 * cache key and token estimate must see the same text, and two different bodies must never
 * share a cache key.
 */
import { isUtf8 } from "node:buffer";

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACE = 0x7d;
const CLOSE_BRACKET = 0x5d;

/** Why the body cannot be taken, or undefined when it can. */
export function jsonBodyProblem(body: Buffer, maxDepth: number): string | undefined {
  if (!isUtf8(body)) return "the body is not valid UTF-8";
  if (body.length > maxDepth && depthExceeds(body, maxDepth)) {
    return `arrays and objects are nested deeper than ${maxDepth} levels`;
  }
  return undefined;
}

export function depthExceeds(body: Buffer, maxDepth: number): boolean {
  let depth = 0;
  const n = body.length;
  for (let i = 0; i < n; i++) {
    const c = body[i];
    if (c === QUOTE) {
      // Skip the string: to the next quote that is not escaped.
      for (i++; i < n; i++) {
        const d = body[i];
        if (d === BACKSLASH) i++;
        else if (d === QUOTE) break;
      }
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (++depth > maxDepth) return true;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth--;
    }
  }
  return false;
}
