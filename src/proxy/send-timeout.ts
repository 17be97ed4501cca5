/**
 * A client that stops reading must not hold an answer in the gateway's memory, or its
 * connection, for ever. An answer handed to the socket whole (a buffered body) that the socket
 * has not taken after `ms` is cut off with the connection. Armed only when the socket could
 * not take the answer at once (a small answer is written through synchronously), so it costs
 * nothing on the usual path. Streams are watched by the relay while it holds data; this covers
 * what is left in the socket after the last chunk.
 */
import type { ServerResponse } from "node:http";

export function guardSlowReader(res: ServerResponse, ms: number): void {
  if (res.writableFinished || res.destroyed) return;
  const timer = setTimeout(() => res.destroy(), ms);
  timer.unref();
  res.once("close", () => clearTimeout(timer));
}
