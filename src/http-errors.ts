/** Fastify's and Node's HTTP errors in the catalogue's terms, for the gateway and the admin listener alike. */
import { STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import type { FastifyError, FastifyRequest } from "fastify";
import { errors, GatewayError } from "./errors.js";

export function fromFastifyError(err: FastifyError | GatewayError, request: FastifyRequest): GatewayError {
  if (err instanceof GatewayError) return err;
  switch (err.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return errors.bodyTooLarge(Number(/\d+/.exec(err.message)?.[0] ?? 0));
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return errors.unsupportedMediaType(request.headers["content-type"] ?? "(none)");
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return errors.invalidJson("the body is empty");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      return errors.invalidJson("it could not be parsed");
  }
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) {
    return errors.invalidRequest(err.message);
  }
  return errors.internal();
}

/** Errors Node's HTTP parser raises before Fastify sees a request: still the OpenAI shape. */
export function writeClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  // A pipelined bad request behind one whose answer is under way: writing a response now would
  // land in the middle of that answer. Close the connection instead, as Node itself does.
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
  if (inFlight?.headersSent) {
    socket.destroy(err);
    return;
  }
  let gw: GatewayError;
  if (err.code === "HPE_HEADER_OVERFLOW") gw = errors.headersTooLarge();
  else if (err.code === "ERR_HTTP_REQUEST_TIMEOUT") gw = errors.requestTimeout();
  else gw = errors.invalidRequest("The request could not be parsed as HTTP.");
  const body = JSON.stringify(gw.body());
  socket.end(
    `HTTP/1.1 ${gw.statusCode} ${STATUS_CODES[gw.statusCode] ?? "Bad Request"}\r\n` +
      `Connection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}
