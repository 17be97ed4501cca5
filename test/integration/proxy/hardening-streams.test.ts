/**
 * Issue 16, items 4-7 and 9: streams that are odd but valid reach the client byte for byte, a
 * 20 MB event leaves the event loop free, a compressing backend is asked for identity, and a
 * stream that stops without [DONE] is not passed off as complete. Each backend is a real
 * node:http server on port 0 misbehaving in one way.
 */
import { createHash, randomBytes } from "node:crypto";
import type { ServerResponse } from "node:http";
import { gzipSync } from "node:zlib";
import { request } from "undici";
import { afterEach, describe, expect, it, onTestFailed } from "vitest";
import { poolYaml, type RunningGateway, startGateway } from "../../helpers/gateway.js";
import {
  chunkEvent,
  completion,
  drainOrClose,
  type Received,
  sleep,
  startUpstream,
  type TestUpstream,
} from "../../helpers/upstream.js";

const KEY = "sk-team-a-0123456789";

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

/**
 * How the gateway sees the stream. Before the fix only "cache leader" and "token budget" ran
 * the usage tap (where items 4-6 broke); now every OpenAI stream is parsed.
 */
type Mode = "cache leader" | "token budget" | "plain";
const TAPPED: Mode[] = ["cache leader", "token budget"];
const ALL_MODES: Mode[] = [...TAPPED, "plain"];

async function setup(
  handler: Parameters<typeof startUpstream>[0],
  mode: Mode,
  poolExtra = "",
): Promise<{ upstream: TestUpstream; gw: RunningGateway }> {
  const upstream = await startUpstream(handler);
  cleanups.push(() => upstream.close());
  const cache = mode === "cache leader" ? "    cache: { enabled: true }\n" : "";
  const tenants =
    mode === "token budget"
      ? `auth: { keys: [{ key: "${KEY}", tenant: team-a }] }
tenants: { team-a: { limits: { tokens: { rate: 10000000, per: 1m } } } }
`
      : "";
  const gw = await startGateway(`${tenants}${poolYaml([upstream.url], { extra: cache + poolExtra })}`);
  cleanups.push(() => gw.close());
  return { upstream, gw };
}

/** A temperature-0 chat request (cacheable), with the key a budgeted tenant needs. */
function ask(
  mode: Mode,
  extra: Record<string, unknown> = {},
): { body: Record<string, unknown>; headers: Record<string, string> } {
  return {
    body: {
      model: "test-model",
      temperature: 0,
      max_tokens: 16,
      messages: [{ role: "user", content: "hi" }],
      ...extra,
    },
    headers: mode === "token budget" ? { authorization: `Bearer ${KEY}` } : {},
  };
}

interface RawAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** POST and collect the exact bytes of the answer (undici request() does not decode anything). */
async function postRaw(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<RawAnswer> {
  const res = await request(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
    signal,
  });
  const chunks: Buffer[] = [];
  for await (const chunk of res.body) chunks.push(chunk as Buffer);
  return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) };
}

/** Writes `data` in `size`-byte writes, waiting for 'drain' whenever write() says so. */
async function writeInPieces(res: ServerResponse, data: Buffer, size: number): Promise<void> {
  for (let at = 0; at < data.length && !res.destroyed; at += size) {
    if (!res.write(data.subarray(at, at + size))) await drainOrClose(res);
  }
}

/** A backend that sends `parts` as separate writes, `gapMs` apart, then ends. */
function sends(parts: string[], gapMs = 15) {
  return async (_req: unknown, res: ServerResponse) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    for (const [i, part] of parts.entries()) {
      if (i > 0) await sleep(gapMs);
      if (res.destroyed) return;
      res.write(part);
    }
    res.end();
  };
}

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** The error event the gateway appended after `sent`, parsed; fails when the bytes before it differ. */
function appendedError(body: Buffer, sent: string): { event: string; data: unknown } {
  const prefix = Buffer.from(sent);
  expect(body.subarray(0, prefix.length).equals(prefix)).toBe(true);
  const rest = body.subarray(prefix.length).toString("utf8");
  const m = /^event: (\S+)\ndata: (.*)\n\n$/.exec(rest);
  expect(m, `expected one SSE error event after the backend's bytes, got ${JSON.stringify(rest)}`).not.toBe(
    null,
  );
  return { event: m?.[1] ?? "", data: JSON.parse(m?.[2] ?? "null") };
}

describe("item 4: a 20 MB SSE event does not freeze the gateway", () => {
  it.each(TAPPED)("%s: /healthz answers throughout, and the client gets every byte", async (mode) => {
    // One data line of 20 MB (random text, so any lost, doubled or reordered piece shows).
    const content = randomBytes(15 * 1024 * 1024).toString("base64");
    const event = `data: ${JSON.stringify({
      id: "c1",
      object: "chat.completion.chunk",
      created: 0,
      model: "test-model",
      choices: [{ index: 0, delta: { content }, finish_reason: null }],
    })}\n\n`;
    const sent = Buffer.from(`${event}data: [DONE]\n\n`);
    expect(sent.length).toBeGreaterThan(20_000_000);
    let streaming = false;
    const { gw } = await setup(async (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      streaming = true;
      await writeInPieces(res, sent, 64 * 1024);
      res.end();
    }, mode);

    const { body, headers } = ask(mode, { stream: true });
    let finished = false;
    const client = new AbortController();
    const answer = postRaw(`${gw.url}/v1/chat/completions`, body, headers, client.signal);
    const stop = () => {
      finished = true;
    };
    answer.then(stop, stop);
    // On a failed bound, leave: the gateway then stops the backend and can close.
    onTestFailed(() => client.abort());
    // Poll /healthz one after another for as long as the stream runs. The old tap rescanned
    // all it held on every chunk and /healthz waited 4-5 s, most of the stream. The bound: 1.5 s,
    // or a third of the stream's own duration on a machine slow enough to stretch it.
    const waits: number[] = [];
    while (!streaming && !finished) await sleep(5);
    const streamStarted = performance.now();
    while (!finished) {
      const started = performance.now();
      const res = await request(`${gw.url}/healthz`);
      await res.body.text();
      waits.push(performance.now() - started);
      expect(res.statusCode).toBe(200);
      await sleep(10);
    }
    const got = await answer;
    const bound = Math.max(1500, (performance.now() - streamStarted) / 3);
    for (const [i, waited] of waits.entries()) {
      expect(waited, `/healthz answer ${i + 1}, during the 20 MB event`).toBeLessThan(bound);
    }
    const polls = waits.length;

    expect(got.status).toBe(200);
    expect(got.body.length).toBe(sent.length);
    expect(sha256(got.body)).toBe(sha256(sent));
    expect(polls).toBeGreaterThan(0);
  });
});

describe("item 5: a last event without its blank line", () => {
  const endings = [
    ["one LF", "data: [DONE]\n"],
    ["no LF at all", "data: [DONE]"],
  ] as const;
  for (const mode of ALL_MODES) {
    for (const [name, last] of endings) {
      it(`${mode}, [DONE] with ${name}: the client gets exactly the backend's bytes, no error event`, async () => {
        const parts = [chunkEvent(0, "a"), chunkEvent(1, "b"), last];
        const { gw } = await setup(sends(parts), mode);
        const { body, headers } = ask(mode, { stream: true, messages: [{ role: "user", content: name }] });
        const got = await postRaw(`${gw.url}/v1/chat/completions`, body, headers);
        expect(got.status).toBe(200);
        expect(got.body.toString("utf8")).toBe(parts.join(""));
      });
    }
  }
});

describe("item 6: CR and CRLF line endings", () => {
  const data = (content: string) =>
    JSON.stringify({
      id: "c1",
      object: "chat.completion.chunk",
      created: 0,
      model: "test-model",
      choices: [{ index: 0, delta: { content }, finish_reason: null }],
    });
  const streams: [string, string[]][] = [
    ["CR only", [`data: ${data("a")}\r\r`, `data: ${data("b")}\r\r`, "data: [DONE]\r\r"]],
    ["CRLF", [`data: ${data("a")}\r\n\r\n`, `data: ${data("b")}\r\n\r\n`, "data: [DONE]\r\n\r\n"]],
    [
      // Each CRLF of an event's end split across two writes: "\r" ends one, "\n" starts the next.
      "CRLF split across writes",
      [`data: ${data("a")}\r\n\r`, `\ndata: ${data("b")}\r`, "\n\r", "\ndata: [DONE]\r", "\n\r", "\n"],
    ],
  ];
  for (const mode of ALL_MODES) {
    for (const [name, parts] of streams) {
      it(`${mode}, ${name}: status 200 and exactly the backend's bytes, no error event`, async () => {
        const { gw } = await setup(sends(parts, 30), mode);
        const { body, headers } = ask(mode, { stream: true, messages: [{ role: "user", content: name }] });
        const got = await postRaw(`${gw.url}/v1/chat/completions`, body, headers);
        expect(got.status).toBe(200);
        expect(got.body.toString("utf8")).toBe(parts.join(""));
      });
    }
  }
});

describe("item 7: a backend that compresses", () => {
  const sse = `${chunkEvent(0, "a")}${chunkEvent(1, "b")}data: [DONE]\n\n`;

  /** Gzips when the request's Accept-Encoding names gzip, as nginx with `gzip on` does. */
  function gzipWhenAsked(always = false) {
    return (_req: unknown, res: ServerResponse, record: Received) => {
      const accept = String(record.headers["accept-encoding"] ?? "");
      const stream = (JSON.parse(record.body) as { stream?: unknown }).stream === true;
      const plain = Buffer.from(stream ? sse : JSON.stringify(completion));
      const type = stream ? "text/event-stream" : "application/json";
      if (always || /\bgzip\b/.test(accept)) {
        const zipped = gzipSync(plain);
        res.writeHead(200, {
          "content-type": type,
          "content-encoding": "gzip",
          vary: "Accept-Encoding",
          "content-length": zipped.length,
        });
        res.end(zipped);
      } else {
        res.writeHead(200, { "content-type": type, "content-length": plain.length });
        res.end(plain);
      }
    };
  }

  it("JSON: the backend is asked for identity, the client gets plain JSON, and it is cached", async () => {
    const { gw, upstream } = await setup(gzipWhenAsked(), "cache leader");
    const { body } = ask("cache leader");
    const first = await postRaw(`${gw.url}/v1/chat/completions`, body, { "accept-encoding": "gzip" });
    expect(upstream.received[0]?.headers["accept-encoding"]).toBe("identity");
    expect(first.status).toBe(200);
    expect(first.headers["content-encoding"]).toBeUndefined();
    expect(JSON.parse(first.body.toString("utf8"))).toEqual(completion);
    expect(first.headers["x-floodgate-cache"]).toBe("MISS");

    const second = await postRaw(`${gw.url}/v1/chat/completions`, body, { "accept-encoding": "gzip" });
    expect(second.status).toBe(200);
    expect(second.headers["x-floodgate-cache"]).toBe("HIT");
    expect(second.headers["content-encoding"]).toBeUndefined();
    expect(JSON.parse(second.body.toString("utf8"))).toMatchObject({
      choices: [{ message: { content: "hi" } }],
    });
    expect(upstream.received).toHaveLength(1);
  });

  it("SSE: the backend is asked for identity and the client gets the plain stream byte for byte", async () => {
    const { gw, upstream } = await setup(gzipWhenAsked(), "cache leader");
    const { body } = ask("cache leader", { stream: true });
    const got = await postRaw(`${gw.url}/v1/chat/completions`, body, { "accept-encoding": "gzip" });
    expect(upstream.received[0]?.headers["accept-encoding"]).toBe("identity");
    expect(got.status).toBe(200);
    expect(got.headers["content-encoding"]).toBeUndefined();
    expect(got.body.toString("utf8")).toBe(sse);
  });

  it("a backend that gzips whatever it is asked for: 502 upstream_bad_response, not the gzip bytes", async () => {
    const { gw, upstream } = await setup(gzipWhenAsked(true), "plain");
    const { body } = ask("plain");
    const got = await postRaw(`${gw.url}/v1/chat/completions`, body, { "accept-encoding": "gzip" });
    expect(got.status).toBe(502);
    expect(got.headers["content-encoding"]).toBeUndefined();
    expect(JSON.parse(got.body.toString("utf8"))).toEqual({
      error: {
        message: expect.any(String),
        type: "server_error",
        code: "upstream_bad_response",
        param: null,
      },
    });
    expect(upstream.received.length).toBeGreaterThan(0);
    for (const r of upstream.received) expect(r.headers["accept-encoding"]).toBe("identity");
  });
});

describe("item 9: a stream that ends cleanly without [DONE]", () => {
  const parts = [chunkEvent(0, "a"), chunkEvent(1, "b")];
  for (const mode of ["plain", "cache leader"] as const) {
    it(`${mode}: the events that arrived, then an SSE error event upstream_bad_response`, async () => {
      const { gw } = await setup(sends(parts), mode);
      const { body, headers } = ask(mode, { stream: true });
      const got = await postRaw(`${gw.url}/v1/chat/completions`, body, headers);
      expect(got.status).toBe(200);
      const error = appendedError(got.body, parts.join(""));
      expect(error.event).toBe("error");
      expect(error.data).toMatchObject({ error: { type: "server_error", code: "upstream_bad_response" } });
    });
  }

  it("with response.requireDone false on the pool the same stream ends with no error event", async () => {
    const { gw } = await setup(sends(parts), "plain", "    response: { requireDone: false }\n");
    const { body, headers } = ask("plain", { stream: true });
    const got = await postRaw(`${gw.url}/v1/chat/completions`, body, headers);
    expect(got.status).toBe(200);
    expect(got.body.toString("utf8")).toBe(parts.join(""));
  });
});
