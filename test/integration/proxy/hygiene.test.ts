import { connect } from "node:net";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { startGateway } from "../../helpers/gateway.js";
import { completion, jsonResponse, startUpstream } from "../../helpers/upstream.js";

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function twoServers() {
  const backend = await startUpstream((req, res) => {
    if (req.url?.startsWith("/v1/chat")) return jsonResponse(res, 200, completion);
    jsonResponse(res, 200, { path: req.url, host: req.headers.host });
  });
  // Any request reaching this server is an SSRF: only `backend` is configured.
  const victim = await startUpstream((_req, res) => jsonResponse(res, 200, { victim: true }));
  const gw = await startGateway(`
pools:
  main:
    models: [test-model]
    backends:
      - { url: "${backend.url}", headers: { x-backend-key: from-config } }
routes:
  - { prefix: /tokenize, pool: main }
  - { prefix: /extras, pool: main, stripPrefix: true }
`);
  cleanups.push(
    () => backend.close(),
    () => victim.close(),
    () => gw.close(),
  );
  return { backend, victim, gw };
}

/** Send raw bytes, so nothing in a client library normalises the request target. */
function raw(url: string, text: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => socket.write(text));
    let out = "";
    socket.on("data", (d) => {
      out += d.toString("utf8");
    });
    socket.on("end", () => resolve(out));
    socket.on("error", reject);
    socket.setTimeout(3000, () => {
      socket.destroy();
      resolve(out);
    });
  });
}

describe("SSRF: the backend host comes only from config", () => {
  it("ignores the Host header, absolute-form targets and // paths", async () => {
    const { backend, victim, gw } = await twoServers();
    const victimHost = new URL(victim.url).host;
    const attempts = [
      `GET /tokenize/x HTTP/1.1\r\nHost: ${victimHost}\r\nConnection: close\r\n\r\n`,
      `GET ${victim.url}/tokenize/x HTTP/1.1\r\nHost: ${victimHost}\r\nConnection: close\r\n\r\n`,
      `GET //${victimHost}/tokenize HTTP/1.1\r\nHost: ${victimHost}\r\nConnection: close\r\n\r\n`,
      `GET /tokenize//${victimHost}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      `GET /extras/%2e%2e/%2e%2e/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      `GET /tokenize/../../v1/secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      `POST /v1/chat/completions HTTP/1.1\r\nHost: ${victimHost}\r\nContent-Type: application/json\r\nContent-Length: 22\r\nConnection: close\r\n\r\n{"model":"test-model"}`,
    ];
    const answers: string[] = [];
    for (const a of attempts) answers.push(await raw(gw.url, a));
    expect(victim.received).toHaveLength(0);
    for (const r of backend.received) {
      expect(r.headers.host).toBe(new URL(backend.url).host);
      expect(r.url.startsWith("/tokenize") || r.url === "/v1/chat/completions").toBe(true);
    }
    // Traversal out of the prefix is refused rather than forwarded.
    expect(answers[4]).toMatch(/^HTTP\/1.1 400/);
    expect(answers[5]).toMatch(/^HTTP\/1.1 400/);
  });

  it("passes a configured prefix through with method, query and body", async () => {
    const { backend, gw } = await twoServers();
    const res = await request(`${gw.url}/tokenize/abc?x=1`, {
      method: "POST",
      body: "hello",
      headers: { "content-type": "text/plain" },
    });
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toMatchObject({ path: "/tokenize/abc?x=1" });
    expect(backend.received[0]?.body).toBe("hello");
    const stripped = await request(`${gw.url}/extras/health?y=2`);
    expect(await stripped.body.json()).toMatchObject({ path: "/health?y=2" });
  });
});

describe("hop-by-hop headers", () => {
  it("strips them and those named in Connection, both ways", async () => {
    const backend = await startUpstream((_req, res) => {
      res.writeHead(200, {
        "content-type": "application/json",
        connection: "x-backend-hop, keep-alive",
        "x-backend-hop": "1",
        "keep-alive": "timeout=5",
        "proxy-authenticate": "Basic",
        "x-end-to-end": "kept",
      });
      res.end(JSON.stringify(completion));
    });
    const gw = await startGateway(
      `pools: { main: { models: [test-model], backends: [{ url: "${backend.url}" }] } }`,
    );
    cleanups.push(
      () => backend.close(),
      () => gw.close(),
    );
    const body = '{"model":"test-model"}';
    const answer = await raw(
      gw.url,
      "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n" +
        `Content-Length: ${body.length}\r\nConnection: close, x-client-hop\r\nX-Client-Hop: secret\r\n` +
        "Keep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Authorization: Basic abc\r\nX-End-To-End: kept\r\n\r\n" +
        body,
    );
    const seen = backend.received[0]?.headers ?? {};
    for (const h of ["x-client-hop", "keep-alive", "te", "proxy-authorization"])
      expect(seen[h]).toBeUndefined();
    expect(seen.connection ?? "keep-alive").not.toMatch(/x-client-hop/);
    expect(seen["x-end-to-end"]).toBe("kept");
    const head = answer.split("\r\n\r\n")[0]?.toLowerCase() ?? "";
    expect(head).not.toContain("x-backend-hop");
    expect(head).not.toContain("proxy-authenticate");
    expect(head).not.toContain("timeout=5");
    expect(head).toContain("x-end-to-end: kept");
  });
});

describe("request id", () => {
  it("keeps the client's id, sends it upstream and returns it; generates one otherwise", async () => {
    const { backend, gw } = await twoServers();
    const given = await request(`${gw.url}/tokenize`, { headers: { "x-request-id": "abc-123" } });
    expect(given.headers["x-request-id"]).toBe("abc-123");
    await given.body.dump();
    expect(backend.received[0]?.headers["x-request-id"]).toBe("abc-123");
    const generated = await request(`${gw.url}/tokenize`);
    await generated.body.dump();
    expect(generated.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
    expect(backend.received[1]?.headers["x-request-id"]).toBe(generated.headers["x-request-id"]);
    // An id that could smuggle text into logs is replaced.
    const bad = await request(`${gw.url}/tokenize`, { headers: { "x-request-id": 'a b"c' } });
    await bad.body.dump();
    expect(bad.headers["x-request-id"]).not.toBe('a b"c');
  });

  it("adds the per-backend headers from config", async () => {
    const { backend, gw } = await twoServers();
    await (await request(`${gw.url}/tokenize`)).body.dump();
    expect(backend.received[0]?.headers["x-backend-key"]).toBe("from-config");
  });
});
