/**
 * Serves /v1/embeddings on the embeddings engine (embedding-engine.ts): one call, whatever its
 * number of inputs, waits for an engine slot, costs its fixed overhead plus its inputs and
 * tokens, then answers. With every embeddings cost zero it answers synchronously.
 */

import type { ServerResponse } from "node:http";
import { embed, embeddingToBase64 } from "./embeddings.js";
import { sendBody } from "./generation-handler.js";
import { sendError } from "./http-io.js";
import { embeddingsBody } from "./openai-format.js";
import type { EmbeddingsRequest } from "./request-parse.js";
import { type RequestLife, SERVER_BUSY, type SimRuntime } from "./runtime.js";

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

function count(rt: SimRuntime, request: EmbeddingsRequest): void {
  rt.counters.promptTokens += request.promptTokens;
  rt.counters.embeddingCalls++;
  rt.counters.embeddingInputs += request.inputs.length;
}

export function serveEmbeddings(
  rt: SimRuntime,
  res: ServerResponse,
  life: RequestLife,
  request: EmbeddingsRequest,
): void {
  if (rt.embedInstant) {
    count(rt, request);
    answer(rt, res, life, request);
    return;
  }
  const handle = rt.embeddings.submit({
    inputs: request.inputs.length,
    promptTokens: request.promptTokens,
    onFinish() {
      life.onAbort = null;
      answer(rt, res, life, request);
    },
  });
  if (handle === null) {
    rt.counters.rejectedBusy++;
    sendError(res, SERVER_BUSY, life.headers);
    return;
  }
  life.onAbort = () => {
    rt.embeddings.abort(handle);
  };
  count(rt, request);
}
