/**
 * The OpenAI routes: each request runs the OpenAI request path; GET /v1/models lists the pools'
 * models (those the tenant may use).
 */
import type { FastifyInstance } from "fastify";
import type { Json } from "../context.js";
import type { GatewayPath } from "../request-path.js";
import type { Upstreams } from "../upstream/pool.js";
import { OPENAI_ROUTES } from "./routes.js";
import { sendAnswer } from "./send-answer.js";

export function registerOpenAIRoutes(
  app: FastifyInstance,
  path: GatewayPath,
  upstreams: Upstreams,
  sendTimeout: number,
): void {
  const modelList = {
    object: "list",
    data: upstreams
      .models()
      .map(({ model, pool }) => ({ id: model, object: "model", created: 0, owned_by: pool })),
  };
  // A tenant with a model list sees only those models: the others answer it model_not_found.
  app.get("/v1/models", async (request) => {
    const tenant = request.gw.tenant;
    if (!tenant?.models) return modelList;
    return { object: "list", data: modelList.data.filter((m) => tenant.mayUse(m.id)) };
  });

  for (const route of OPENAI_ROUTES) {
    app.post(route, async (request, reply) => {
      const state = request.gw;
      state.route = route;
      state.incoming = request;
      state.body = request.body as Json;
      state.path = path;
      return sendAnswer(reply, state, await path.run(state), sendTimeout);
    });
  }
}
