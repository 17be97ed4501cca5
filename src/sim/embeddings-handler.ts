/**
 * Serves /v1/embeddings. An embedding is prefill-only work: it takes a batch slot for one step
 * costed by its prompt tokens, then answers.
 */

import type { ServerResponse } from "node:http";
import { embed, embeddingToBase64 } from "./embeddings.js";
import { sendBody } from "./generation-handler.js";
import { embeddingsBody } from "./openai-format.js";
import type { EmbeddingsRequest } from "./request-parse.js";
import { type RequestLife, type SimRuntime, submitOrReject } from "./runtime.js";

function answer(rt: SimRuntime, res: ServerResponse, life: RequestLife, request: EmbeddingsRequest): void {
  const vectors = request.inputs.map((text) => {
    const vector = embed(text, request.dimensions, request.model);
    return request.encoding === "base64" ? embeddingToBase64(vector) : Array.from(vector);
  });
  sendBody(rt, res, life, JSON.stringify(embeddingsBody(request.model, vectors, request.promptTokens)));
  if (!life.closedByServer) {
    rt.counters.completed++;
    rt.counters.finishedStop++;
  }
}

export function serveEmbeddings(
  rt: SimRuntime,
  res: ServerResponse,
  life: RequestLife,
  request: EmbeddingsRequest,
): void {
  if (rt.instant) {
    rt.counters.promptTokens += request.promptTokens;
    answer(rt, res, life, request);
    return;
  }
  const accepted = submitOrReject(rt, res, life, {
    promptTokens: request.promptTokens,
    outputTokens: 0,
    onToken() {},
    onFinish() {
      life.onAbort = null;
      answer(rt, res, life, request);
    },
  });
  if (accepted) rt.counters.promptTokens += request.promptTokens;
}
