/** Fastify's own errors in the catalogue's terms, for the gateway and the admin listener alike. */
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
