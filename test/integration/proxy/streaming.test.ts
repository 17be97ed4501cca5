import type { AddressInfo } from "node:net";
import { createServer as createTcpServer, type Socket, type Server as TcpServer } from "node:net";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { eventually } from "../../helpers/eventually.js";
import { poolYaml, type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { postStream, spreadOf } from "../../helpers/sse.js";
import { chunkEvent, completion, jsonResponse, sleep, startUpstream } from "../../helpers/upstream.js";

const chat = (extra: Record<string, unknown> = {}) => ({
  model: "test-model",
  messages: [{ role: "user", content: "hi" }],
  ...extra,
});

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function setup(handler: Parameters<typeof startUpstream>[0], timeouts?: string) {
  const upstream = await startUpstream(handler);
  const gw = await startGateway(poolYaml([upstream.url], { timeouts }));
  cleanups.push(
    () => upstream.close(),
    () => gw.close(),
  );
  return { upstream, gw };
}

/** A stream of `n` events spaced `gapMs` apart, then [DONE]; `sent` counts the events written. */
function slowStream(n: number, gapMs: number, sent = { events: 0 }) {
  return async (_req: unknown, res: import("node:http").ServerResponse) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    for (let i = 0; i < n && !res.destroyed; i++) {
      res.write(chunkEvent(i, `t${i}`));
      sent.events++;
      await sleep(gapMs);
    }
    if (!res.destroyed) res.end("data: [DONE]\n\n");
  };
}

describe("streaming", () => {
  it("relays each SSE event as the backend sends it, not at the end", async () => {
    const { gw } = await setup(slowStream(5, 60));
    const { status, events } = await postStream(`${gw.url}/v1/chat/completions`, chat({ stream: true }));
    expect(status).toBe(200);
    expect(events.map((e) => e.data).at(-1)).toBe("[DONE]");
    expect(events).toHaveLength(6);
    // Buffered relaying would deliver everything together; spaced arrivals show no buffering.
    const { medianGap, spread } = spreadOf(events.slice(0, 5));
    expect(medianGap).toBeGreaterThan(30);
    expect(spread).toBeGreaterThan(120);
  });

  it("a whole stream arriving in one chunk still ends (regression: its end was lost at the commit point)", async () => {
    const { gw } = await setup((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(`${chunkEvent(0, "a")}${chunkEvent(1, "b")}data: [DONE]\n\n`);
    });
    // A lost end would hold each stream until the 30 s idle timeout.
    const started = performance.now();
    for (let i = 0; i < 20; i++) {
      const { events } = await postStream(`${gw.url}/v1/chat/completions`, chat({ stream: true }));
      expect(events.map((e) => e.data.includes("[DONE]") || e.data.includes('"content"'))).toEqual([
        true,
        true,
        true,
      ]);
    }
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  it("a stream that ends with no event at all is retried, then a 502, never a hang", async () => {
    const { gw, upstream } = await setup((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end();
    });
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(chat({ stream: true })),
    });
    expect(res.statusCode).toBe(502);
    expect(await res.body.json()).toMatchObject({ error: { code: "upstream_bad_response" } });
    expect(upstream.received.length).toBe(3); // the first try and two retries
  });

  // Counted in the backend's events, not in ms: its gaps are timers, so a stalled machine
  // stalls the backend too. A backend left running writes all 100 and ends its response.
  it("aborts the upstream request at once when the client leaves mid-stream", async () => {
    const sent = { events: 0 };
    const { gw, upstream } = await setup(slowStream(100, 20, sent));
    const controller = new AbortController();
    let sentAtAbort = 0;
    await postStream(`${gw.url}/v1/chat/completions`, chat({ stream: true }), {
      signal: controller.signal,
      onEvent: (e) => {
        if (e.data.includes("t3")) {
          sentAtAbort = sent.events;
          controller.abort();
        }
      },
    }).catch(() => undefined);
    await waitFor(() => upstream.received[0]?.abortedAt !== undefined);
    expect(sent.events - sentAtAbort).toBeLessThan(50);
  });

  // Nothing else would end it soon: the firstByte timeout is 60 s.
  it("aborts the upstream request at once when the client leaves before the response starts", async () => {
    const { gw, upstream } = await setup(() => {}); // never answers
    const controller = new AbortController();
    const pending = request(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(chat()),
      signal: controller.signal,
    }).catch(() => undefined);
    await waitFor(() => upstream.received.length === 1);
    controller.abort();
    await pending;
    await waitFor(() => upstream.received[0]?.abortedAt !== undefined);
    await waitFor(() => gw.gateway.upstreams.pools.get("main")?.backends[0]?.inFlight === 0);
  });

  it("ends a stream whose backend dies mid-way with an SSE error event", async () => {
    const { gw } = await setup(async (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(chunkEvent(0, "a"));
      await sleep(20);
      res.write(chunkEvent(1, "b"));
      await sleep(20);
      res.socket?.destroy();
    });
    const { status, events } = await postStream(`${gw.url}/v1/chat/completions`, chat({ stream: true }));
    expect(status).toBe(200);
    expect(events.slice(0, 2).map((e) => e.event)).toEqual([undefined, undefined]);
    const last = events.at(-1);
    expect(last?.event).toBe("error");
    expect(JSON.parse(last?.data ?? "{}")).toMatchObject({
      error: { type: "server_error", code: "upstream_unavailable" },
    });
  });

  it("answers 502, not a cut-off body, when a non-streamed response dies mid-body", async () => {
    const { gw } = await setup((_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "1000" });
      res.write('{"id":"chatcmpl-1","choi');
      setTimeout(() => res.socket?.destroy(), 10);
    });
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(chat()),
    });
    expect(res.statusCode).toBe(502);
    expect(await res.body.json()).toMatchObject({
      error: { type: "server_error", code: "upstream_unavailable" },
    });
  });
});

describe("timeouts", () => {
  it("connect: 504 upstream_connect_timeout when the TLS handshake never completes", async () => {
    // A TCP listener that accepts and stays silent: the TLS connect phase cannot finish.
    const sockets: Socket[] = [];
    const silent: TcpServer = createTcpServer((s) => sockets.push(s));
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const port = (silent.address() as AddressInfo).port;
    const gw = await startGateway(
      poolYaml([`https://127.0.0.1:${port}`], {
        timeouts: "{ connect: 150ms, firstByte: 5s }",
        extra: "    retry: { attempts: 0 }\n",
      }),
    );
    cleanups.push(
      () => gw.close(),
      () =>
        new Promise<void>((r) => {
          for (const s of sockets) s.destroy();
          silent.close(() => r());
        }),
    );
    const started = Date.now();
    const res = await post(gw, chat());
    expect(res.status).toBe(504);
    expect(res.body).toMatchObject({ error: { code: "upstream_connect_timeout", type: "server_error" } });
    expect(res.headers["x-should-retry"]).toBe("true");
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it("first byte: 504 upstream_first_byte_timeout when the backend never answers", async () => {
    const { gw, upstream } = await setup(() => {}, "{ firstByte: 150ms }");
    const res = await post(gw, chat());
    expect(res.status).toBe(504);
    expect(res.body).toMatchObject({ error: { code: "upstream_first_byte_timeout" } });
    expect(res.headers["retry-after-ms"]).toBeDefined();
    await waitFor(() => upstream.received[0]?.abortedAt !== undefined);
  });

  it("idle: a stream that goes silent gets an SSE error event", async () => {
    const { gw } = await setup((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(chunkEvent(0, "a")); // then silence
    }, "{ idle: 150ms }");
    const { events } = await postStream(`${gw.url}/v1/chat/completions`, chat({ stream: true }));
    expect(events).toHaveLength(2);
    expect(events[1]?.event).toBe("error");
    expect(JSON.parse(events[1]?.data ?? "{}").error.code).toBe("upstream_idle_timeout");
  });

  it("total: a stream still running at the total timeout gets an SSE error event", async () => {
    // 1000 events 20 ms apart: the stream would run 20 s.
    const sent = { events: 0 };
    const { gw, upstream } = await setup(slowStream(1000, 20, sent), "{ total: 300ms }");
    const { events } = await postStream(`${gw.url}/v1/chat/completions`, chat({ stream: true }));
    expect(sent.events).toBeLessThan(1000);
    expect(events.length).toBeGreaterThan(1);
    expect(events.at(-1)?.event).toBe("error");
    expect(JSON.parse(events.at(-1)?.data ?? "{}").error.code).toBe("upstream_total_timeout");
    await waitFor(() => upstream.received[0]?.abortedAt !== undefined);
  });

  it("total: 504 upstream_total_timeout before the response started", async () => {
    const { gw } = await setup(() => {}, "{ firstByte: 10s, total: 200ms }");
    const res = await post(gw, chat());
    expect(res.status).toBe(504);
    expect(res.body).toMatchObject({ error: { code: "upstream_total_timeout" } });
  });

  it("a stream that streams longer than firstByte is fine", async () => {
    // 6 × 100 ms, twice firstByte; headers come at once and idle is 20 gaps, so no stall trips them.
    const { gw } = await setup(slowStream(6, 100), "{ firstByte: 300ms, idle: 2s }");
    const { events } = await postStream(`${gw.url}/v1/chat/completions`, chat({ stream: true }));
    expect(events.at(-1)?.data).toBe("[DONE]");
    expect(events.some((e) => e.event === "error")).toBe(false);
  });
});

describe("non-streamed", () => {
  it("passes the backend's JSON answer and status through", async () => {
    const { gw, upstream } = await setup((_req, res) => jsonResponse(res, 200, completion));
    const res = await post(gw, chat());
    expect(res.status).toBe(200);
    expect(res.body).toEqual(completion);
    expect(JSON.parse(upstream.received[0]?.body ?? "")).toEqual(chat());
    expect(upstream.received[0]?.url).toBe("/v1/chat/completions");
  });

  it("passes a backend error through with its status", async () => {
    const busy = { error: { message: "busy", type: "server_error", code: "server_busy" } };
    const { gw } = await setup((_req, res) => jsonResponse(res, 503, busy, { "retry-after": "2" }));
    const res = await post(gw, chat());
    expect(res.status).toBe(503);
    expect(res.body).toEqual(busy);
    expect(res.headers["retry-after"]).toBe("2");
  });
});

async function post(gw: RunningGateway, body: unknown, headers: Record<string, string> = {}) {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  return {
    status: res.statusCode,
    headers: res.headers,
    body: (await res.body.json()) as Record<string, unknown>,
  };
}

const waitFor = (predicate: () => boolean) => eventually(predicate, { interval: 5 });
