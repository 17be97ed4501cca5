import { createHash } from "node:crypto";
import { connect } from "node:net";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { eventually } from "../../helpers/eventually.js";
import { poolYaml, startGateway } from "../../helpers/gateway.js";
import { completion, gate, jsonResponse, sleep, startUpstream } from "../../helpers/upstream.js";

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function setup(extra = "") {
  const upstream = await startUpstream((_req, res) => jsonResponse(res, 200, completion));
  const gw = await startGateway(poolYaml([upstream.url]) + extra);
  cleanups.push(
    () => upstream.close(),
    () => gw.close(),
  );
  return { upstream, gw };
}

async function call(
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
) {
  const res = await request(url, { method: init.method ?? "POST", headers: init.headers, body: init.body });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) };
}

const JSON_HEADERS = { "content-type": "application/json" };

function expectOpenAIError(body: { error?: Record<string, unknown> }, code: string, type?: string) {
  expect(Object.keys(body.error ?? {}).sort()).toEqual(["code", "message", "param", "type"]);
  expect(body.error).toMatchObject({ message: expect.any(String), type: type ?? expect.any(String), code });
}

describe("errors have the OpenAI shape and the right status", () => {
  it("404 model_not_found for an unknown model", async () => {
    const { gw, upstream } = await setup();
    const res = await call(`${gw.url}/v1/chat/completions`, {
      headers: JSON_HEADERS,
      body: '{"model":"nope"}',
    });
    expect(res.status).toBe(404);
    expectOpenAIError(res.json(), "model_not_found", "invalid_request_error");
    expect(res.json().error.param).toBe("model");
    expect(upstream.received).toHaveLength(0);
  });

  it("400 for malformed JSON, a missing model, or a non-object body", async () => {
    const { gw } = await setup();
    const bad = await call(`${gw.url}/v1/chat/completions`, { headers: JSON_HEADERS, body: '{"model": ' });
    expect(bad.status).toBe(400);
    expectOpenAIError(bad.json(), "invalid_json", "invalid_request_error");
    const noModel = await call(`${gw.url}/v1/completions`, { headers: JSON_HEADERS, body: '{"prompt":"x"}' });
    expect(noModel.status).toBe(400);
    expect(noModel.json().error.param).toBe("model");
    const array = await call(`${gw.url}/v1/embeddings`, { headers: JSON_HEADERS, body: "[1,2]" });
    expect(array.status).toBe(400);
    const empty = await call(`${gw.url}/v1/chat/completions`, { headers: JSON_HEADERS, body: "" });
    expect(empty.status).toBe(400);
    expectOpenAIError(empty.json(), "invalid_json");
  });

  it("413 for a body over the limit, 415 for a non-JSON body", async () => {
    const { gw } = await setup("server: { bodyLimit: 1kb }\n");
    const big = JSON.stringify({ model: "test-model", prompt: "x".repeat(2000) });
    const res = await call(`${gw.url}/v1/completions`, { headers: JSON_HEADERS, body: big });
    expect(res.status).toBe(413);
    expectOpenAIError(res.json(), "request_too_large", "invalid_request_error");
    const text = await call(`${gw.url}/v1/completions`, {
      headers: { "content-type": "text/plain" },
      body: "hi",
    });
    expect(text.status).toBe(415);
    expectOpenAIError(text.json(), "unsupported_media_type");
  });

  it("431 for headers over the limit", async () => {
    const { gw } = await setup("server: { maxHeaderSize: 2kb }\n");
    const res = await call(`${gw.url}/v1/models`, { method: "GET", headers: { "x-big": "y".repeat(4000) } });
    expect(res.status).toBe(431);
    expectOpenAIError(res.json(), "request_header_fields_too_large");
  });

  it("408 in the OpenAI shape for a client too slow to send its request, within the timeout", async () => {
    const { gw } = await setup("server: { requestTimeout: 500ms, headersTimeout: 400ms }\n");
    const { hostname, port } = new URL(gw.url);
    const started = performance.now();
    const answer = await new Promise<string>((resolve) => {
      const socket = connect(Number(port), hostname, () => {
        // Headers promise a body that never comes.
        socket.write(
          "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        );
      });
      let out = "";
      socket.on("data", (d) => {
        out += d.toString();
      });
      socket.on("close", () => resolve(out));
    });
    expect(answer).toMatch(/^HTTP\/1.1 408/);
    expect(JSON.parse(answer.split("\r\n\r\n")[1] ?? "{}")).toMatchObject({
      error: { code: "request_timeout" },
    });
    // Well before any default would answer; 10 × the timeout allows for a busy machine.
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it("404 unknown_url for a path no route serves", async () => {
    const { gw } = await setup();
    const res = await call(`${gw.url}/v2/nothing`, { method: "GET" });
    expect(res.status).toBe(404);
    expectOpenAIError(res.json(), "unknown_url");
  });

  it("503 with retry-after, retry-after-ms and x-should-retry when no backend can take it", async () => {
    const answers = gate();
    const upstream = await startUpstream(async (_req, res) => {
      await answers.opened;
      jsonResponse(res, 200, completion);
    });
    const gw = await startGateway(
      `pools: { main: { models: [test-model], backends: [{ url: "${upstream.url}", maxConcurrency: 1 }], admission: { enabled: false } } }`,
    );
    cleanups.push(
      async () => answers.open(),
      () => upstream.close(),
      () => gw.close(),
    );
    const body = JSON.stringify({ model: "test-model" });
    const firstSent = performance.now();
    const first = call(`${gw.url}/v1/chat/completions`, { headers: JSON_HEADERS, body });
    await eventually(() => upstream.received.length === 1, { what: "the first request at the backend" });
    const second = await call(`${gw.url}/v1/chat/completions`, { headers: JSON_HEADERS, body });
    const slotAge = performance.now() - firstSent;
    expect(second.status).toBe(503);
    expectOpenAIError(second.json(), "no_backend_available", "server_error");
    // When a slot is expected: the drain estimate's prior (a slot is held one second) less the
    // age of the one slot in use (at most the time since the first request was sent), at least
    // 10 ms, with up to 20% jitter on top.
    expect(["1", "2"]).toContain(second.headers["retry-after"]);
    expect(Number(second.headers["retry-after-ms"])).toBeGreaterThanOrEqual(Math.max(10, 1000 - slotAge) - 1);
    expect(Number(second.headers["retry-after-ms"])).toBeLessThanOrEqual(1200);
    expect(second.headers["x-should-retry"]).toBe("true");
    answers.open();
    expect((await first).status).toBe(200);
  });

  it("5xx details stay out of the response body", async () => {
    const gw = await startGateway(poolYaml(["http://127.0.0.1:1"]));
    cleanups.push(() => gw.close());
    const res = await call(`${gw.url}/v1/chat/completions`, {
      headers: JSON_HEADERS,
      body: '{"model":"test-model"}',
    });
    // The refused connect ejected the only backend: the retry finds none, and the client is
    // told when the ejection ends rather than given a bare 502.
    expect(res.status).toBe(503);
    expectOpenAIError(res.json(), "no_backend_available", "server_error");
    expect(Number(res.headers["retry-after-ms"])).toBeGreaterThan(25_000);
    expect(res.text).not.toMatch(/ECONNREFUSED|127\.0\.0\.1|stack/);
  });
});

describe("auth", () => {
  const keyA = "sk-team-a-0123456789";
  const keyB = "sk-team-b-0123456789";
  const authYaml = `
auth:
  keys:
    - { key: "\${KEY_A}", tenant: team-a }
    - { sha256: ${createHash("sha256").update(keyB).digest("hex")}, tenant: team-b }
tenants: { team-a: {}, team-b: { priority: batch } }
`;

  it("401 without a key or with a wrong one; keys and digests both work; the key is not forwarded", async () => {
    const upstream = await startUpstream((_req, res) => jsonResponse(res, 200, completion));
    const gw = await startGateway(poolYaml([upstream.url]) + authYaml, { KEY_A: keyA });
    cleanups.push(
      () => upstream.close(),
      () => gw.close(),
    );
    const body = '{"model":"test-model"}';
    const none = await call(`${gw.url}/v1/chat/completions`, { headers: JSON_HEADERS, body });
    expect(none.status).toBe(401);
    expectOpenAIError(none.json(), "missing_api_key", "authentication_error");
    const wrong = await call(`${gw.url}/v1/chat/completions`, {
      headers: { ...JSON_HEADERS, authorization: "Bearer sk-wrong" },
      body,
    });
    expect(wrong.status).toBe(401);
    expectOpenAIError(wrong.json(), "invalid_api_key");
    for (const key of [keyA, keyB]) {
      const ok = await call(`${gw.url}/v1/chat/completions`, {
        headers: { ...JSON_HEADERS, authorization: `Bearer ${key}` },
        body,
      });
      expect(ok.status).toBe(200);
    }
    expect(upstream.received).toHaveLength(2);
    for (const r of upstream.received) expect(r.headers.authorization).toBeUndefined();
    // Probes need no key.
    expect((await call(`${gw.url}/healthz`, { method: "GET" })).status).toBe(200);
  });

  it("admin /admin/* needs the admin token; /metrics is for Prometheus", async () => {
    const { gw } = await setup();
    expect((await call(`${gw.adminUrl}/admin/status`, { method: "GET" })).status).toBe(401);
    const ok = await call(`${gw.adminUrl}/admin/status`, {
      method: "GET",
      headers: { authorization: "Bearer test-admin-token-0123456789" },
    });
    expect(ok.status).toBe(200);
    expect(ok.json().pools[0].name).toBe("main");
    expect((await call(`${gw.adminUrl}/metrics`, { method: "GET" })).status).toBe(200);
  });
});

describe("models, probes, metrics, shutdown", () => {
  it("GET /v1/models lists the models of every pool", async () => {
    const upstream = await startUpstream((_req, res) => jsonResponse(res, 200, completion));
    const gw = await startGateway(`pools:
  a: { models: [m1, m2], backends: [{ url: "${upstream.url}" }] }
  b: { models: [m3], backends: [{ url: "${upstream.url}" }] }
`);
    cleanups.push(
      () => upstream.close(),
      () => gw.close(),
    );
    const res = await call(`${gw.url}/v1/models`, { method: "GET" });
    expect(res.json()).toMatchObject({ object: "list" });
    expect(
      res
        .json()
        .data.map((m: { id: string }) => m.id)
        .sort(),
    ).toEqual(["m1", "m2", "m3"]);
  });

  it("counts requests by route, model, pool, code and error without keys in labels", async () => {
    const { gw } = await setup();
    await call(`${gw.url}/v1/chat/completions`, { headers: JSON_HEADERS, body: '{"model":"test-model"}' });
    await call(`${gw.url}/v1/chat/completions`, { headers: JSON_HEADERS, body: '{"model":"made-up-model"}' });
    const text = (await call(`${gw.adminUrl}/metrics`, { method: "GET" })).text;
    expect(text).toContain(
      'floodgate_requests_total{route="/v1/chat/completions",model="test-model",pool="main",tenant="",code="200",error=""} 1',
    );
    expect(text).toContain(
      'floodgate_requests_total{route="/v1/chat/completions",model="unknown",pool="",tenant="",code="404",error="model_not_found"} 1',
    );
    expect(text).toMatch(/floodgate_request_duration_seconds_bucket\{.*model="test-model"/);
    expect(text).toContain("floodgate_backend_in_flight");
    expect(text).not.toContain("made-up-model");
  });

  it("on close: /readyz turns 503, an in-flight stream finishes, new requests are refused", async () => {
    // The stream is held after its first event until the test has seen the gateway closing.
    const rest = gate();
    const upstream = await startUpstream(async (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(`data: {"i":0}\n\n`);
      await rest.opened;
      for (let i = 1; i < 5; i++) {
        res.write(`data: {"i":${i}}\n\n`);
        await sleep(20);
      }
      res.end("data: [DONE]\n\n");
    });
    const gw = await startGateway(poolYaml([upstream.url]));
    cleanups.push(
      async () => rest.open(),
      () => upstream.close(),
    );
    expect((await call(`${gw.url}/readyz`, { method: "GET" })).status).toBe(200);
    const streaming = call(`${gw.url}/v1/chat/completions`, {
      headers: JSON_HEADERS,
      body: '{"model":"test-model","stream":true}',
    });
    await eventually(() => upstream.received.length === 1, { what: "the stream at the backend" });
    const closing = gw.close();
    // Refused outright, or 503 on a kept-alive socket.
    await eventually(
      async () => {
        const refused = await call(`${gw.url}/readyz`, { method: "GET" }).catch(() => ({ status: 0 }));
        return refused.status === 0 || refused.status === 503;
      },
      { what: "/readyz to refuse" },
    );
    rest.open();
    const done = await streaming;
    expect(done.status).toBe(200);
    expect(done.text.trim().endsWith("data: [DONE]")).toBe(true);
    await closing;
  });
});
