#!/usr/bin/env node
/**
 * The floor for a Node proxy: node:http in front, one undici Pool behind, nothing else (no
 * framework, no hooks, no metrics, no logs). It does the least floodgate must do for one
 * request: read the body, parse it (routing needs `model`), forward it, read a JSON answer whole
 * or relay an event stream as it arrives. What floodgate costs beyond this is floodgate's;
 * what this costs over direct is Node's, on this machine.
 *
 * usage: node bench/overhead/floor-proxy.mjs --port N --upstream http://127.0.0.1:PORT
 */
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Pool } from "undici";

const { values } = parseArgs({
  options: { port: { type: "string", default: "0" }, upstream: { type: "string" } },
});
if (!values.upstream) throw new Error("--upstream is required");
const pool = new Pool(values.upstream, { connections: 256, pipelining: 1, keepAliveTimeout: 4_000 });

const server = createServer({ keepAliveTimeout: 75_000 }, (req, res) => {
  const parts = [];
  req.on("data", (c) => parts.push(c));
  req.on("end", () => {
    const body = Buffer.concat(parts);
    if (req.method === "POST") JSON.parse(body.toString("utf8"));
    forward(req, res, body).catch(() => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
  });
});

async function forward(req, res, body) {
  const upstream = await pool.request({
    path: req.url,
    method: req.method,
    headers: { "content-type": "application/json", "content-length": String(body.length) },
    body: req.method === "POST" ? body : undefined,
  });
  const type = String(upstream.headers["content-type"] ?? "");
  if (type.startsWith("text/event-stream")) {
    res.writeHead(upstream.statusCode, { "content-type": type, "cache-control": "no-cache" });
    upstream.body.pipe(res);
    return;
  }
  const answer = Buffer.from(await upstream.body.arrayBuffer());
  res.writeHead(upstream.statusCode, { "content-type": type, "content-length": answer.length });
  res.end(answer);
}

server.listen(Number(values.port), "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
