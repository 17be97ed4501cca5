#!/usr/bin/env node
/**
 * A trivial OpenAI-shaped backend for the overhead benchmark: fixed answers, no generation work,
 * so that the backend costs as little CPU as possible on the core it shares with the load
 * generator. Non-streamed requests get one chat.completion (the size of `floodgate sim`'s);
 * `"stream": true` gets 16 chunk events, a final event and `[DONE]`, written at once. GET /health
 * and GET /v1/models answer as an OpenAI-compatible server does (floodgate's health checks).
 * GET /stats counts the POSTs answered so far (`{"posts":N,"streamed":M}`): the benchmark reads
 * it around a measurement to see how many requests reached the backend (cache hits do not).
 *
 * usage: node bench/overhead/backend.mjs --port N [--model NAME]
 */
import { createServer } from "node:http";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { port: { type: "string", default: "0" }, model: { type: "string", default: "bench-model" } },
});
const model = values.model;
const created = Math.floor(Date.now() / 1000);
const words =
  "Pattern grows simple steady token design attention river many server keeps memory or river throughput in".split(
    " ",
  );

const completion = Buffer.from(
  JSON.stringify({
    id: "chatcmpl-bench",
    object: "chat.completion",
    created,
    model,
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: words.join(" "), refusal: null },
        logprobs: null,
        finish_reason: "length",
      },
    ],
    usage: { prompt_tokens: 7, completion_tokens: 16, total_tokens: 23 },
    system_fingerprint: null,
  }),
);

function chunk(delta, finish) {
  return `data: ${JSON.stringify({
    id: "chatcmpl-bench",
    object: "chat.completion.chunk",
    created,
    model,
    system_fingerprint: null,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  })}\n\n`;
}
const models = Buffer.from(
  JSON.stringify({ object: "list", data: [{ id: model, object: "model", created, owned_by: "bench" }] }),
);
const health = Buffer.from('{"status":"ok"}');
const stats = { posts: 0, streamed: 0 };

const stream = Buffer.from(
  [
    chunk({ role: "assistant", content: "", refusal: null }, null),
    ...words.map((w, i) => chunk({ content: i === 0 ? w : ` ${w}` }, null)),
    chunk({}, "length"),
    "data: [DONE]\n\n",
  ].join(""),
);

const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
  if (req.method !== "POST") {
    // floodgate's health checks probe /v1/models and want the pool's model listed there.
    const body =
      req.url === "/v1/models"
        ? models
        : req.url === "/health"
          ? health
          : req.url === "/stats"
            ? Buffer.from(JSON.stringify(stats))
            : undefined;
    res.writeHead(body ? 200 : 404, {
      "content-type": "application/json",
      "content-length": body?.length ?? 0,
    });
    res.end(body);
    return;
  }
  stats.posts++;
  const parts = [];
  req.on("data", (c) => parts.push(c));
  req.on("end", () => {
    let wantsStream = false;
    try {
      wantsStream = JSON.parse(Buffer.concat(parts).toString("utf8")).stream === true;
    } catch {
      res.writeHead(400, { "content-type": "application/json" });
      res.end('{"error":{"message":"invalid json","type":"invalid_request_error","code":null}}');
      return;
    }
    if (wantsStream) {
      stats.streamed++;
      res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" });
      res.end(stream);
    } else {
      res.writeHead(200, { "content-type": "application/json", "content-length": completion.length });
      res.end(completion);
    }
  });
});
server.listen(Number(values.port), "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ listening: server.address().port })}\n`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
