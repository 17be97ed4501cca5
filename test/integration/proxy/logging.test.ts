/** The access log and the error log, as an operator reads them. */
import { Writable } from "node:stream";
import pino from "pino";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { buildGateway, type Gateway } from "../../../src/app.js";
import { parseConfig } from "../../../src/config/index.js";
import { eventually } from "../../helpers/eventually.js";
import { startUpstream, type TestUpstream } from "../../helpers/upstream.js";

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

/** A gateway whose log lines land in an array. */
async function logged(
  upstream: TestUpstream,
  accessLog = true,
): Promise<{ gw: Gateway; url: string; lines: Record<string, unknown>[] }> {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split("\n"))
        if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const config = parseConfig(
    `listen: { host: 127.0.0.1, port: 0 }
admin: { enabled: false }
log: { level: info, accessLog: ${accessLog} }
auth: { keys: [{ key: "sk-secret-key-0123456789", tenant: t }] }
tenants: { t: {} }
pools: { p: { models: [m], backends: [{ url: "${upstream.url}" }], healthCheck: { enabled: false }, retry: { attempts: 0 } } }
`,
    "test",
    {},
  );
  const gw = buildGateway(config, { processMetrics: false, logger: pino({ level: "info" }, sink) });
  const { url } = await gw.listen();
  cleanups.push(() => gw.close());
  return { gw, url, lines };
}

/** One chat completion with the tenant's key; the body is read and dropped. */
async function chat(url: string) {
  const res = await request(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer sk-secret-key-0123456789" },
    body: JSON.stringify({ model: "m" }),
  });
  await res.body.dump();
  return res;
}

describe("logs", () => {
  it("a client that leaves while the backend thinks: a 499 access line, no error line", async () => {
    const upstream = await startUpstream(() => {}); // never answers
    cleanups.push(() => upstream.close());
    const { url, lines } = await logged(upstream);
    const controller = new AbortController();
    const pending = request(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer sk-secret-key-0123456789" },
      body: JSON.stringify({ model: "m" }),
      signal: controller.signal,
    }).catch(() => undefined);
    await eventually(() => upstream.received.length === 1, { what: "the request at the backend" });
    controller.abort();
    await pending;
    const access = await eventually(() => lines.find((l) => l.msg === "request"), {
      what: "the access line",
    });
    expect(lines.filter((l) => (l.level as number) >= 50)).toEqual([]);
    expect(access).toMatchObject({
      status: 499,
      tenant: "t",
      model: "m",
      pool: "p",
      route: "/v1/chat/completions",
    });
    expect(typeof access?.requestId).toBe("string");
  });

  it("the access line carries the answer's prompt and completion tokens, for charging usage back", async () => {
    const upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          id: "c",
          object: "chat.completion",
          choices: [{ index: 0, message: { role: "assistant", content: "hi" }, finish_reason: "stop" }],
          usage: { prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 },
        }),
      );
    });
    cleanups.push(() => upstream.close());
    const { url, lines } = await logged(upstream);
    await chat(url);
    const access = await eventually(() => lines.find((l) => l.msg === "request"), {
      what: "the access line",
    });
    expect(access).toMatchObject({
      status: 200,
      promptTokens: 12,
      completionTokens: 3,
    });
  });

  it("a backend failure: one error line with the request id and the cause; keys never appear", async () => {
    const upstream = await startUpstream((_req, res) => {
      res.socket?.destroy();
    });
    cleanups.push(() => upstream.close());
    const { url, lines } = await logged(upstream);
    const res = await chat(url);
    expect(res.statusCode).toBe(502);
    // The access line is the request's last: its error line is in by then.
    await eventually(() => lines.some((l) => l.msg === "request"), { what: "the access line" });
    const errorsLogged = lines.filter((l) => (l.level as number) >= 50);
    expect(errorsLogged).toHaveLength(1);
    expect(errorsLogged[0]).toMatchObject({
      code: "upstream_unavailable",
      requestId: res.headers["x-request-id"],
    });
    expect(JSON.stringify(errorsLogged[0]?.err)).toMatch(/socket|closed|ECONNRESET/i);
    expect(JSON.stringify(lines)).not.toContain("sk-secret-key");
  });
});
