/** Route: the request's `model` names the pool that serves it, if the tenant may use it. */
import type { Json, PathAnswer, RequestContext } from "../context.js";
import { errors } from "../errors.js";
import type { Upstreams } from "../upstream/pool.js";
import type { Stage } from "./stage.js";

export function routeStage(upstreams: Upstreams): Stage<RequestContext, PathAnswer> {
  return {
    name: "route",
    enter(state) {
      const body = state.body;
      if (!isJson(body)) throw errors.invalidRequest("The request body must be a JSON object.");
      const model = body.model;
      if (typeof model !== "string" || model === "") {
        throw errors.invalidRequest("You must provide a model parameter.", "model");
      }
      state.model = model;
      // A model off the tenant's list gets the answer of a model that does not exist, as OpenAI
      // answers a key that may not see a model: 404 model_not_found, not a 403 that would tell
      // the tenant which models the gateway serves. It comes before any limit or budget is spent.
      if (state.tenant && !state.tenant.mayUse(model)) throw errors.modelNotFound(model);
      const pool = upstreams.forModel(model);
      if (!pool) throw errors.modelNotFound(model);
      state.target = pool;
      state.pool = pool.name;
      state.stream = body.stream === true;
      return undefined;
    },
  };
}

export function isJson(value: unknown): value is Json {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Adds response headers for the client. */
export function setHeaders(state: RequestContext, headers: Record<string, string>): void {
  state.headers = state.headers ? Object.assign(state.headers, headers) : { ...headers };
}
