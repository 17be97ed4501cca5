/** Sends what a request path answered: a backend's answer as it came, or a cached one rendered. */
import type { Readable } from "node:stream";
import type { FastifyReply } from "fastify";
import { render } from "../cache/respond.js";
import type { PathAnswer, RequestContext } from "../context.js";
import { isJson } from "../stages/route.js";
import { guardSlowReader, SLICE, SlicedBody } from "./send-timeout.js";

export function sendAnswer(
  reply: FastifyReply,
  state: RequestContext,
  answer: PathAnswer,
  sendTimeout: number,
): FastifyReply {
  if (state.headers) reply.headers(state.headers);
  if (answer.kind === "cached") {
    const { hit } = answer;
    state.answeredAt = performance.now();
    reply.code(200);
    if (!state.stream && hit.body) {
      // The usual hit: the JSON body rendered once for the entry, sent as is.
      reply.header("content-type", "application/json").send(hit.body);
    } else if (hit.answer) {
      const options = isJson(state.body?.stream_options) ? state.body.stream_options : {};
      const out = render(
        hit.answer,
        state.stream,
        options.include_usage === true,
        state.target?.config.cache.replay === "paced",
      );
      reply.header("content-type", out.contentType);
      if (state.stream) reply.header("cache-control", "no-cache");
      reply.send(out.body);
    } else {
      throw new Error("a cache hit with neither a body nor an entry");
    }
    guardSlowReader(reply.raw, sendTimeout);
    return reply;
  }
  reply.code(answer.status).headers(answer.headers);
  if (answer.kind === "buffered" && answer.body.length <= SLICE) {
    reply.send(answer.body);
    guardSlowReader(reply.raw, sendTimeout);
    return reply;
  }
  let body: Readable;
  if (answer.kind === "buffered") {
    reply.header("content-length", String(answer.body.length));
    body = new SlicedBody(answer.body, sendTimeout);
  } else {
    body = answer.body;
  }
  // The body is watched while it has data to give; then what the socket still holds.
  body.once("end", () => guardSlowReader(reply.raw, sendTimeout));
  return reply.send(body);
}
