/**
 * Header hygiene at both edges. Hop-by-hop headers (RFC 9110 §7.6.1) and any header named in
 * `Connection` describe one connection, not the message, so they never cross the gateway.
 * Host is never taken from the client: the backend's host comes only from config.
 */
import type { IncomingHttpHeaders } from "node:http";

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/**
 * Headers the gateway sets itself towards the backend, so the client's copies are dropped; and
 * the job runner's credential (src/jobs/runner.ts), which never leaves the gateway.
 */
const SET_BY_GATEWAY = new Set([
  "host",
  "content-length",
  "expect",
  "x-request-id",
  "x-forwarded-for",
  "x-floodgate-job",
]);

function connectionTokens(value: string | string[] | undefined): Set<string> | undefined {
  // The usual values name only headers that are hop-by-hop anyway: nothing more to strip.
  if (value === undefined || value === "keep-alive" || value === "close" || value === "Keep-Alive")
    return undefined;
  const text = Array.isArray(value) ? value.join(",") : value;
  const tokens = new Set<string>();
  for (const token of text.split(",")) {
    const t = token.trim().toLowerCase();
    if (t) tokens.add(t);
  }
  return tokens;
}

export interface UpstreamHeaderOptions {
  requestId: string;
  clientIp: string;
  /** The gateway consumed the client's credentials: they must not reach the backend. */
  stripAuthorization: boolean;
  extra: ReadonlyArray<readonly [string, string]>;
  contentLength?: number;
  /** Ask for an unencoded answer (the gateway parses it): the client's Accept-Encoding stays here. */
  identity?: boolean;
}

export function upstreamRequestHeaders(
  incoming: IncomingHttpHeaders,
  options: UpstreamHeaderOptions,
): Record<string, string | string[]> {
  const named = connectionTokens(incoming.connection);
  const out: Record<string, string | string[]> = {};
  for (const key in incoming) {
    const value = incoming[key];
    if (value === undefined || HOP_BY_HOP.has(key) || SET_BY_GATEWAY.has(key) || named?.has(key)) continue;
    if (options.stripAuthorization && (key === "authorization" || key === "x-api-key")) continue;
    out[key] = value;
  }
  const forwarded = incoming["x-forwarded-for"];
  const prior = Array.isArray(forwarded) ? forwarded.join(", ") : forwarded;
  out["x-forwarded-for"] = prior ? `${prior}, ${options.clientIp}` : options.clientIp;
  out["x-request-id"] = options.requestId;
  if (options.contentLength !== undefined) out["content-length"] = String(options.contentLength);
  if (options.identity) out["accept-encoding"] = "identity";
  for (const [key, value] of options.extra) out[key] = value;
  return out;
}

/** Response headers safe to pass to the client; framing headers are left to the gateway's server. */
export function downstreamResponseHeaders(
  upstream: Record<string, string | string[] | undefined>,
  keepContentLength: boolean,
): Record<string, string | string[]> {
  const named = connectionTokens(upstream.connection);
  const out: Record<string, string | string[]> = {};
  for (const key in upstream) {
    const value = upstream[key];
    if (value === undefined || HOP_BY_HOP.has(key) || named?.has(key)) continue;
    if (key === "content-length" && !keepContentLength) continue;
    out[key] = value;
  }
  return out;
}
