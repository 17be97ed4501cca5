/**
 * The OpenAI routes: each request runs the OpenAI request path; GET /v1/models lists the pools'
 * models (those the tenant may use).
 */
import type { FastifyInstance, FastifyRequest } from "fastify";
import type { Json } from "../context.js";
import type { GatewayPath } from "../request-path.js";
import type { Upstreams } from "../upstream/pool.js";
import { OPENAI_ROUTES } from "./routes.js";
import { sendAnswer } from "./send-answer.js";

export function registerOpenAIRoutes(
  app: FastifyInstance,
  /** The request path of the config generation the request runs on. */
  pathOf: (request: FastifyRequest) => GatewayPath,
  upstreams: Upstreams,
  sendTimeout: number,
): void {
  // Rebuilt only when a reload changes the pools.
  let listed = upstreams.models();
  let modelList = toList(listed);
  const models = () => {
    const now = upstreams.models();
    if (
      now.length !== listed.length ||
      now.some((m, i) => m.model !== listed[i]?.model || m.pool !== listed[i]?.pool)
    ) {
      listed = now;
      modelList = toList(now);
    }
    return modelList;
  };
  // A tenant with a model list sees only those models: the others answer it model_not_found.
  app.get("/v1/models", async (request) => {
    const tenant = request.gw.tenant;
    const all = models();
    if (!tenant?.models) return all;
    return { object: "list", data: all.data.filter((m) => tenant.mayUse(m.id)) };
  });

  for (const route of OPENAI_ROUTES) {
    app.post(route, async (request, reply) => {
      const state = request.gw;
      state.route = route;
      state.incoming = request;
      state.body = request.body as Json;
      const path = pathOf(request);
      state.path = path;
      return sendAnswer(reply, state, await path.run(state), sendTimeout);
    });
  }
}

function toList(models: { model: string; pool: string }[]) {
  return {
    object: "list",
    data: models.map(({ model, pool }) => ({ id: model, object: "model", created: 0, owned_by: pool })),
  };
}
