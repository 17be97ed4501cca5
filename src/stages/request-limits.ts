/**
 * Request limits: every limit that applies (by IP, key, tenant, model, global) counts the
 * request; the tightest one's state goes into the response headers. A refusal is a 429 thrown
 * here. @fastify/rate-limit does the keying and the store protocol, and it reads the Fastify
 * request: this stage is the one that still holds it.
 */
import type { FastifyRequest } from "fastify";
import type { PathAnswer, RequestContext } from "../context.js";
import { requestHeaders } from "../ratelimit/headers.js";
import type { RequestLimits } from "../ratelimit/request-limits.js";
import { setHeaders } from "./route.js";
import type { Stage } from "./stage.js";

export function requestLimitsStage(
  limits: RequestLimits,
  requestOf: (state: RequestContext) => FastifyRequest,
): Stage<RequestContext, PathAnswer> {
  return {
    name: "request-limits",
    async enter(state) {
      const result = await limits.check(requestOf(state));
      if (result) setHeaders(state, requestHeaders(result));
      return undefined;
    },
  };
}
