#!/usr/bin/env node
/**
 * The floors for a Node proxy: the least floodgate must do for one request, with nothing else
 * (no hooks, metrics, logs, timeouts or breakers): read the body, parse it (routing needs
 * `model`), forward it through one undici Pool with the dispatch API, as floodgate does, then
 * read a JSON answer whole or relay an event stream as it arrives. Two front ends run the same forwarding code:
 *   --server node     node:http alone: what any Node proxy pays on this machine (node-floor)
 *   --server fastify  a Fastify 5 app with one route and a raw-body JSON parser, as floodgate
 *                     registers it: what any Fastify proxy pays (fastify-floor)
 * What floodgate costs beyond fastify-floor is floodgate's own; fastify-floor beyond node-floor
 * is the framework's.
 *
 * usage: node bench/overhead/floor-proxy.mjs --port N --upstream http://127.0.0.1:PORT
 *          [--server node|fastify]
 */
import { createServer } from "node:http";
import { Readable } from "node:stream";
import { parseArgs } from "node:util";
import Fastify from "fastify";
import { Pool } from "undici";

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "0" },
    upstream: { type: "string" },
    server: { type: "string", default: "node" },
  },
});
if (!values.upstream) throw new Error("--upstream is required");
if (!["node", "fastify"].includes(values.server)) throw new Error("--server must be node or fastify");
const pool = new Pool(values.upstream, { connections: 256, pipelining: 1, keepAliveTimeout: 4_000 });

/**
 * Forwards one request with undici's dispatch API (as floodgate does: no body stream object for
 * a JSON answer, no promise per chunk). Resolves at the response headers with the whole JSON
 * body, or with a Readable that relays an event stream chunk by chunk, with backpressure.
 */
function forward(method, path, body) {
  return new Promise((resolve, reject) => {
    let status = 0;
    let type = "";
    let parts;
    let stream;
    pool.dispatch(
      {
        path,
        method,
        headers: { "content-type": "application/json", "content-length": String(body?.length ?? 0) },
        body,
      },
      {
        onRequestStart() {},
        onResponseStart(controller, statusCode, headers) {
          status = statusCode;
          type = String(headers["content-type"] ?? "");
          if (!type.startsWith("text/event-stream")) {
            parts = [];
            return;
          }
          stream = new Readable({ read: () => controller.resume() });
          resolve({ status, type, stream });
        },
        onResponseData(controller, chunk) {
          if (parts) parts.push(chunk);
          else if (!stream.push(chunk)) controller.pause();
        },
        onResponseEnd() {
          if (parts) resolve({ status, type, json: Buffer.concat(parts) });
          else stream.push(null);
        },
        onResponseError(_controller, err) {
          if (stream) stream.destroy(err);
          else reject(err);
        },
      },
    );
  });
}

function nodeServer() {
  return createServer({ keepAliveTimeout: 75_000 }, (req, res) => {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", () => {
      const body = req.method === "POST" ? Buffer.concat(parts) : undefined;
      if (body) JSON.parse(body.toString("utf8"));
      forward(req.method, req.url, body).then(
        (answer) => {
          if (answer.stream) {
            res.writeHead(answer.status, { "content-type": answer.type, "cache-control": "no-cache" });
            answer.stream.pipe(res);
          } else {
            res.writeHead(answer.status, {
              "content-type": answer.type,
              "content-length": answer.json.length,
            });
            res.end(answer.json);
          }
        },
        () => {
          if (!res.headersSent) res.writeHead(502);
          res.end();
        },
      );
    });
  });
}

async function fastifyServer() {
  const app = Fastify({ logger: false, keepAliveTimeout: 75_000 });
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (request, body, done) => {
    request.rawBody = body;
    try {
      done(null, JSON.parse(body.toString("utf8")));
    } catch (err) {
      done(err, undefined);
    }
  });
  app.route({
    method: ["GET", "POST"],
    url: "/*",
    handler: async (request, reply) => {
      const answer = await forward(request.method, request.url, request.rawBody);
      reply.code(answer.status).header("content-type", answer.type);
      if (answer.stream) return reply.header("cache-control", "no-cache").send(answer.stream);
      return reply.send(answer.json);
    },
  });
  return app;
}

if (values.server === "fastify")
  await (await fastifyServer()).listen({ port: Number(values.port), host: "127.0.0.1" });
else nodeServer().listen(Number(values.port), "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
