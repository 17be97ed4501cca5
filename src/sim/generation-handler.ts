/**
 * Serves one chat or text completion, streamed or not, on the batch scheduler or (when every
 * batching time is zero) synchronously.
 *
 * Streams send their headers as soon as the sequence is accepted, before it is even admitted to
 * a slot, as vLLM does; the first data event comes after prefill. So header time measures the
 * gateway-to-backend hop, and time to first event measures queueing plus prefill.
 */

import type { OutgoingHttpHeaders, ServerResponse } from "node:http";
import { completionBody, type ResponseMeta, StreamEncoder, type Usage, usageOf } from "./openai-format.js";
import type { GenerationRequest } from "./request-parse.js";
import {
  consultPrefixCache,
  dropConnection,
  type RequestLife,
  type SimRuntime,
  submitOrReject,
} from "./runtime.js";
import { type FinishReason, type Generation, generateAll, startGeneration } from "./text-generator.js";

const SSE_HEADERS: OutgoingHttpHeaders = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  connection: "keep-alive",
};

function unixSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

function recordSuccess(rt: SimRuntime, finishReason: FinishReason): void {
  rt.counters.completed++;
  if (finishReason === "stop") rt.counters.finishedStop++;
  else rt.counters.finishedLength++;
}

export function serveGeneration(
  rt: SimRuntime,
  res: ServerResponse,
  life: RequestLife,
  request: GenerationRequest,
): void {
  const generation = startGeneration({
    serverSeed: rt.options.seed,
    model: request.model,
    promptKey: request.promptKey,
    maxTokens: request.maxTokens,
    requestSeed: request.requestSeed,
    deterministic: request.deterministic,
    requestCounter: rt.nextRequestNumber(),
    outputTokensMin: rt.options.outputTokensMin,
    outputTokensMax: rt.options.outputTokensMax,
  });
  const meta: ResponseMeta = {
    id: rt.newId(request.kind === "chat" ? "chatcmpl" : "cmpl"),
    created: unixSeconds(),
    model: request.model,
  };
  const usage = usageOf(request.promptTokens, generation.outputTokens);
  if (request.stream) serveStream(rt, res, life, request, generation, meta, usage);
  else serveUnary(rt, res, life, request, generation, meta, usage);
}

function serveStream(
  rt: SimRuntime,
  res: ServerResponse,
  life: RequestLife,
  request: GenerationRequest,
  generation: Generation,
  meta: ResponseMeta,
  usage: Usage,
): void {
  const dropAfter = rt.faults().dropMidStreamAfterTokens;

  if (rt.instant) {
    // All events exist at the same instant, so one write carries them all: cheap for benchmarks.
    let buffer = "";
    const encoder = new StreamEncoder(request.kind, meta, request.includeUsage, (event) => {
      buffer += event;
    });
    rt.counters.promptTokens += request.promptTokens;
    consultPrefixCache(rt, request.promptKey, request.promptTokens);
    res.writeHead(200, { ...life.headers, ...SSE_HEADERS });
    for (let i = 0; i < generation.outputTokens; i++) {
      if (dropAfter === i) {
        res.write(buffer);
        dropConnection(rt, res, life);
        return;
      }
      encoder.token(i, generation.nextToken());
      rt.counters.completionTokens++;
    }
    if (dropAfter === generation.outputTokens) {
      res.write(buffer);
      dropConnection(rt, res, life);
      return;
    }
    encoder.finish(generation.finishReason, usage);
    recordSuccess(rt, generation.finishReason);
    res.end(buffer);
    return;
  }

  const encoder = new StreamEncoder(request.kind, meta, request.includeUsage, (event) => {
    res.write(event);
  });
  const accepted = submitOrReject(rt, res, life, {
    priority: request.priority,
    promptTokens: request.promptTokens,
    cachedPromptTokens: () => consultPrefixCache(rt, request.promptKey, request.promptTokens),
    outputTokens: generation.outputTokens,
    onToken(index) {
      encoder.token(index, generation.nextToken());
      rt.counters.completionTokens++;
      if (dropAfter === index + 1) dropConnection(rt, res, life);
    },
    onFinish() {
      life.onAbort = null;
      encoder.finish(generation.finishReason, usage);
      recordSuccess(rt, generation.finishReason);
      res.end();
    },
  });
  if (!accepted) return;
  rt.counters.promptTokens += request.promptTokens;
  res.writeHead(200, { ...life.headers, ...SSE_HEADERS });
  res.flushHeaders();
  if (dropAfter === 0) dropConnection(rt, res, life);
}

function serveUnary(
  rt: SimRuntime,
  res: ServerResponse,
  life: RequestLife,
  request: GenerationRequest,
  generation: Generation,
  meta: ResponseMeta,
  usage: Usage,
): void {
  const send = (text: string) => {
    const payload = JSON.stringify(completionBody(request.kind, meta, text, generation.finishReason, usage));
    sendBody(rt, res, life, payload);
    if (!life.closedByServer) recordSuccess(rt, generation.finishReason);
  };

  if (rt.instant) {
    rt.counters.promptTokens += request.promptTokens;
    consultPrefixCache(rt, request.promptKey, request.promptTokens);
    rt.counters.completionTokens += generation.outputTokens;
    send(generateAll(generation));
    return;
  }

  let text = "";
  const accepted = submitOrReject(rt, res, life, {
    priority: request.priority,
    promptTokens: request.promptTokens,
    cachedPromptTokens: () => consultPrefixCache(rt, request.promptKey, request.promptTokens),
    outputTokens: generation.outputTokens,
    onToken() {
      text += generation.nextToken();
      rt.counters.completionTokens++;
    },
    onFinish() {
      life.onAbort = null;
      send(text);
    },
  });
  if (accepted) rt.counters.promptTokens += request.promptTokens;
}

/**
 * Writes a complete JSON body, or, under the drop fault, the headers and the first half of it
 * before cutting the connection, so the client sees a body shorter than its content-length.
 */
export function sendBody(rt: SimRuntime, res: ServerResponse, life: RequestLife, payload: string): void {
  const bytes = Buffer.from(payload, "utf8");
  res.writeHead(200, {
    ...life.headers,
    "content-type": "application/json",
    "content-length": bytes.length,
  });
  if (rt.faults().dropMidStreamAfterTokens !== null) {
    res.write(bytes.subarray(0, Math.floor(bytes.length / 2)));
    dropConnection(rt, res, life);
    return;
  }
  res.end(bytes);
}
