/**
 * Request limits: every limit that applies (by IP, key, tenant, model, global) counts the
 * request; the tightest one's state goes into the response headers. A refusal is a 429 thrown
 * here (after giving back what the other limits took).
 */
import type { PathAnswer, RequestContext } from "../context.js";
import { requestHeaders } from "../ratelimit/headers.js";
import type { RequestLimits } from "../ratelimit/request-limits.js";
import { setHeaders } from "./route.js";
import type { Stage } from "./stage.js";

export function requestLimitsStage(limits: RequestLimits): Stage<RequestContext, PathAnswer> {
  return {
    name: "request-limits",
    async enter(state) {
      const result = await limits.check({
        ip: state.incoming?.ip ?? "",
        tenant: state.tenant?.id,
        keyId: state.keyId,
        model: state.model,
      });
      if (result) setHeaders(state, requestHeaders(result));
      return undefined;
    },
  };
}
