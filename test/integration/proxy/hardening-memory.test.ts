/**
 * Issue 16, items 1, 2 and 11: memory that one answer or one client could exhaust, and requests
 * past a backend's connection cap that waited unseen. Real misbehaving backends on port 0 (they
 * write one reused 64 KB buffer with backpressure, so they stay small themselves), real
 * gateways, and the gateway process's RSS growth measured against a baseline taken in the same
 * test (the backends and clients share the process, and are built to hold next to nothing).
 */
import type { ServerResponse } from "node:http";
import { connect, type Socket } from "node:net";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { poolYaml, type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { postStream } from "../../helpers/sse.js";
import {
  chunkEvent,
  completion,
  drainOrClose,
  jsonResponse,
  startUpstream,
  type TestUpstream,
} from "../../helpers/upstream.js";

const MB = 1024 * 1024;
const FILLER = Buffer.alloc(64 * 1024, "a");
/** A backend that "writes forever" stops here (and holds its connection): a gateway that buffers it all must not take the machine with it. */
const SAFETY_STOP = 1024 * MB;

const chat = (extra: Record<string, unknown> = {}) => ({
  model: "test-model",
  messages: [{ role: "user", content: "hi" }],
  ...extra,
});

let cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

/** Cleanups run last-first: client sockets, then backends, then the gateway (put at the front). */
async function backend(handler: Parameters<typeof startUpstream>[0]): Promise<TestUpstream> {
  const upstream = await startUpstream(handler);
  cleanups.push(() => upstream.close());
  return upstream;
}

async function gateway(yaml: string): Promise<RunningGateway> {
  const gw = await startGateway(yaml);
  cleanups.unshift(() => gw.close());
  return gw;
}

/** What one backend response wrote, and whether it got to the end. */
interface Sent {
  bytes: number;
  ended: boolean;
}

/**
 * Writes `bytes` of filler (one reused buffer, with backpressure), stopping when the response
 * closes; `Infinity` writes until then (up to the safety stop, where it holds the connection).
 */
async function writeFiller(res: ServerResponse, bytes: number, sent: Sent): Promise<void> {
  let left = Math.min(bytes, SAFETY_STOP);
  while (left > 0 && !res.destroyed) {
    const part = left >= FILLER.length ? FILLER : FILLER.subarray(0, left);
    left -= part.length;
    sent.bytes += part.length;
    if (!res.write(part)) await drainOrClose(res);
  }
}

const JSON_HEAD = Buffer.from(
  '{"id":"chatcmpl-big","object":"chat.completion","created":0,"model":"test-model","choices":[{"index":0,"message":{"role":"assistant","content":"',
);
const JSON_TAIL = Buffer.from(
  '"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}',
);

/** A complete, valid chat.completion of about `total` bytes: only its size is wrong. */
async function bigJson(
  res: ServerResponse,
  total: number,
  sent: Sent,
  headers: Record<string, string> = {},
): Promise<void> {
  const filler = total - JSON_HEAD.length - JSON_TAIL.length;
  res.writeHead(200, { "content-type": "application/json", ...headers });
  res.write(JSON_HEAD);
  await writeFiller(res, filler, sent);
  if (res.destroyed || sent.bytes < filler) return;
  res.end(JSON_TAIL, () => {
    sent.ended = true;
  });
}

/** Peak RSS growth over the baseline taken now, sampled every 20 ms until stop(). */
function watchMemory(): { stop(): number } {
  const baseline = process.memoryUsage.rss();
  let peak = baseline;
  const sample = () => {
    const rss = process.memoryUsage.rss();
    if (rss > peak) peak = rss;
  };
  const timer = setInterval(sample, 20);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return (peak - baseline) / MB;
    },
  };
}

/** POSTs JSON; the body is counted, and kept (as text) only if small. */
async function post(url: string, body: unknown) {
  const res = await request(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const kept: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of res.body) {
    const c = chunk as Buffer;
    if (bytes + c.length <= MB) kept.push(c);
    bytes += c.length;
  }
  const json = (): unknown => {
    if (bytes > MB) throw new Error(`expected a small JSON body, got ${bytes} bytes`);
    return JSON.parse(Buffer.concat(kept).toString("utf8"));
  };
  return { status: res.statusCode, headers: res.headers, bytes, json };
}

async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  what: string,
  ms = 15_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`not in time: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function clientConnections(gw: RunningGateway): Promise<number> {
  return new Promise((resolve, reject) =>
    gw.gateway.app.server.getConnections((err, n) => (err ? reject(err) : resolve(n))),
  );
}

/** A raw HTTP/1.1 client that sends one chat request and then reads only what `onData` lets it. */
function rawClient(port: number, body: unknown): Promise<Socket> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => {
      socket.write(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`,
      );
      resolve(socket);
    });
    socket.on("error", () => {}); // the gateway cutting it off is the point
    socket.once("error", reject);
    cleanups.push(() => {
      socket.destroy();
    });
  });
}

const inFlight = (gw: RunningGateway) =>
  (gw.gateway.upstreams.pools.get("main")?.backends ?? []).reduce((n, b) => n + b.inFlight, 0);

describe("issue 16 item 1: a buffered answer is bounded", () => {
  it("a 200 MB non-streamed answer: 502 upstream_bad_response, the backend cut off, memory bounded", async () => {
    const sent: Sent = { bytes: 0, ended: false };
    const upstream = await backend((_req, res) => bigJson(res, 200 * MB, sent));
    const gw = await gateway(poolYaml([upstream.url], { extra: "    retry: { attempts: 0 }\n" }));

    const memory = watchMemory();
    const res = await post(`${gw.url}/v1/chat/completions`, chat());
    const growthMb = memory.stop();

    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ error: { code: "upstream_bad_response" } });
    await waitFor(() => upstream.received[0]?.abortedAt !== undefined, "the backend's response closed");
    expect(sent.ended).toBe(false);
    expect(sent.bytes).toBeLessThan(200 * MB - JSON_HEAD.length - JSON_TAIL.length);
    expect(upstream.received).toHaveLength(1);
    // The cap is response.maxSize (16 MB by default); the old code added ~395 MB.
    expect(growthMb).toBeLessThan(150);
  });

  it("a Content-Length of 1 GB: 502 at once, while the backend has sent next to nothing", async () => {
    const upstream = await backend((_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": String(1024 * MB) });
      res.write(JSON_HEAD); // ... and then nothing: the gateway must not wait for the rest
    });
    const gw = await gateway(poolYaml([upstream.url], { extra: "    retry: { attempts: 0 }\n" }));

    const res = await post(`${gw.url}/v1/chat/completions`, chat());
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ error: { code: "upstream_bad_response" } });
    await waitFor(() => upstream.received[0]?.abortedAt !== undefined, "the backend's response closed");
  });

  it("an oversized answer is retried on another backend before the commit point: the client gets the good 200", async () => {
    const oversized: Sent[] = [];
    const bad = await backend((_req, res) => {
      const sent: Sent = { bytes: 0, ended: false };
      oversized.push(sent);
      return bigJson(res, 200 * MB, sent);
    });
    const good = await backend((_req, res) => jsonResponse(res, 200, completion));
    // Weights make the oversized backend the first pick almost always; the loop makes it certain.
    const gw = await gateway(`pools:
  main:
    models: [test-model]
    backends:
      - { url: "${bad.url}", weight: 1000 }
      - { url: "${good.url}", weight: 0.01 }
`);

    let asked = 0;
    while (bad.received.length === 0 && asked < 10) {
      asked++;
      const res = await post(`${gw.url}/v1/chat/completions`, chat());
      expect(res.status).toBe(200);
      expect(res.json()).toMatchObject({ choices: [{ message: { content: "hi" } }] });
    }
    expect(bad.received.length).toBeGreaterThanOrEqual(1);
    expect(good.received).toHaveLength(asked);
    await waitFor(() => bad.received.every((r) => r.abortedAt !== undefined), "the oversized answers closed");
    expect(oversized.every((s) => !s.ended)).toBe(true);
  });

  it("an endless application/json body: 502 long before timeouts.total, every backend response closed", async () => {
    const writes: Sent[] = [];
    const upstream = await backend(async (_req, res) => {
      const sent: Sent = { bytes: 0, ended: false };
      writes.push(sent);
      res.writeHead(200, { "content-type": "application/json" });
      res.write(JSON_HEAD);
      await writeFiller(res, Number.POSITIVE_INFINITY, sent);
    });
    // timeouts.total stays at its 10 min default: this test's own timeout is the bound.
    const gw = await gateway(poolYaml([upstream.url]));

    const res = await post(`${gw.url}/v1/chat/completions`, chat());
    expect(res.status).toBe(502);
    expect(res.json()).toMatchObject({ error: { code: "upstream_bad_response" } });
    expect(upstream.received.length).toBeGreaterThanOrEqual(1);
    await waitFor(
      () => upstream.received.every((r) => r.abortedAt !== undefined),
      "every endless response closed by the gateway",
    );
    // Cut off near the 16 MB cap (plus what the sockets hold), far from the safety stop.
    for (const w of writes) expect(w.bytes).toBeLessThan(128 * MB);
  });
});

describe("issue 16 item 1: a client that stops reading is cut off", () => {
  it("clients that never read their ~32 MB answers: the gateway closes their connections, the backend is done", async () => {
    const size = 32 * MB;
    const writes: Sent[] = [];
    const upstream = await backend((_req, res) => {
      const sent: Sent = { bytes: 0, ended: false };
      writes.push(sent);
      return bigJson(res, size, sent, { "content-length": String(size) });
    });
    const gw = await gateway(`server: { sendTimeout: 500ms }
${poolYaml([upstream.url], { extra: "    response: { maxSize: 64mb }\n" })}`);

    const clients = 3;
    const port = Number(new URL(gw.url).port);
    const sockets = await Promise.all(Array.from({ length: clients }, () => rawClient(port, chat())));
    for (const s of sockets) s.pause(); // and never read

    await waitFor(() => upstream.received.length === clients, "every request reached the backend");
    await waitFor(
      () => writes.length === clients && writes.every((w) => w.ended),
      "the backend sent every answer",
    );
    // The answers were taken whole from the backend; the clients that do not read them are cut off.
    await waitFor(
      async () => (await clientConnections(gw)) === 0,
      "the gateway closed the stalled connections",
    );
    expect(inFlight(gw)).toBe(0);
    expect(upstream.received.every((r) => r.abortedAt === undefined)).toBe(true);
  });

  it("a client that reads slowly but steadily is never cut off: sendTimeout is about taking nothing", async () => {
    const size = 2 * MB;
    const upstream = await backend((_req, res) =>
      bigJson(res, size, { bytes: 0, ended: false }, { "content-length": String(size) }),
    );
    const gw = await gateway(`server: { sendTimeout: 1s }
${poolYaml([upstream.url])}`);
    const socket = await rawClient(Number(new URL(gw.url).port), chat());
    socket.pause();
    // 64 KB every 100 ms: the whole answer takes several times sendTimeout.
    let received = 0;
    let reads = 0;
    await new Promise<void>((resolve) => {
      const tick = () => {
        const chunk = (socket.read(64 * 1024) ?? socket.read()) as Buffer | null;
        if (chunk) received += chunk.length;
        reads++;
        if (received > size || socket.destroyed || socket.readableEnded) resolve();
        else setTimeout(tick, 100);
      };
      tick();
    });
    expect(reads).toBeGreaterThan(15); // it was slow
    expect(received).toBeGreaterThan(size); // the head and the whole body arrived
    expect(socket.destroyed).toBe(false);
  });

  it("a client that stops reading a long stream: cut off, and the backend's stream aborted", async () => {
    const sent: Sent = { bytes: 0, ended: false };
    const event = Buffer.from(chunkEvent(0, "x".repeat(1000)));
    const upstream = await backend(async (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      // Events for ever (until the safety stop), as fast as the gateway takes them.
      while (!res.destroyed && sent.bytes < SAFETY_STOP) {
        sent.bytes += event.length;
        if (!res.write(event)) await drainOrClose(res);
      }
    });
    const gw = await gateway(`server: { sendTimeout: 500ms }
${poolYaml([upstream.url])}`);

    const socket = await rawClient(Number(new URL(gw.url).port), chat({ stream: true }));
    await new Promise<void>((resolve) =>
      socket.once("data", () => {
        socket.pause(); // got the head and the first events; reads nothing more
        resolve();
      }),
    );

    await waitFor(() => upstream.received[0]?.abortedAt !== undefined, "the backend's stream aborted");
    await waitFor(
      async () => (await clientConnections(gw)) === 0,
      "the gateway closed the stalled connection",
    );
    expect(inFlight(gw)).toBe(0);
    expect(sent.bytes).toBeLessThan(SAFETY_STOP);
  });
});

describe("issue 16 item 2: recording a cacheable stream is bounded", () => {
  it("a ~100 MB temperature-0 stream: every event and [DONE] arrive, memory bounded, nothing stored", async () => {
    const event = chunkEvent(0, "x".repeat(1000));
    const perBlock = Math.floor(FILLER.length / event.length);
    const block = Buffer.from(event.repeat(perBlock));
    const blocks = Math.ceil((100 * MB) / block.length);
    const events = blocks * perBlock;
    const done = Buffer.from("data: [DONE]\n\n");
    let asked = 0;
    const upstream = await backend(async (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      if (++asked > 1) {
        res.end(`${chunkEvent(0, "again")}data: [DONE]\n\n`);
        return;
      }
      for (let i = 0; i < blocks && !res.destroyed; i++) {
        if (!res.write(block)) await drainOrClose(res);
      }
      if (!res.destroyed) res.end(done);
    });
    const gw = await gateway(
      poolYaml([upstream.url], { extra: "    cache: { enabled: true, maxEntrySize: 64kb }\n" }),
    );
    const body = chat({ stream: true, temperature: 0 });

    const memory = watchMemory();
    const res = await request(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    // Counted as it passes (every event ends in one "\n\n", and no other LF is sent), not kept.
    let bytes = 0;
    let lineFeeds = 0;
    let tail = Buffer.alloc(0);
    for await (const chunk of res.body) {
      const c = chunk as Buffer;
      bytes += c.length;
      for (let i = c.indexOf(0x0a); i !== -1; i = c.indexOf(0x0a, i + 1)) lineFeeds++;
      tail = Buffer.concat([tail, c.subarray(Math.max(0, c.length - 64))]).subarray(-64);
    }
    const growthMb = memory.stop();

    expect(res.statusCode).toBe(200);
    expect(res.headers["x-floodgate-cache"]).toBe("MISS");
    expect(lineFeeds / 2).toBe(events + 1);
    expect(bytes).toBe(blocks * block.length + done.length);
    expect(tail.subarray(-done.length).toString()).toBe(done.toString());
    // The old code recorded every event and encoded them at the end: ~2x the stream.
    expect(growthMb).toBeLessThan(100);

    // Past maxEntrySize the answer was not stored: the same request goes to the backend again.
    const again = await postStream(`${gw.url}/v1/chat/completions`, body);
    expect(again.status).toBe(200);
    expect(again.headers["x-floodgate-cache"]).toBe("MISS");
    expect(again.events.map((e) => e.data).at(-1)).toBe("[DONE]");
    expect(upstream.received).toHaveLength(2);
  });
});

describe("issue 16 item 11: past a backend's maxConnections", () => {
  /** A backend whose streams hold their connection until released. */
  async function holdingBackend() {
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const upstream = await backend(async (_req, res, record) => {
      if (!(JSON.parse(record.body) as { stream?: boolean }).stream) {
        jsonResponse(res, 200, completion);
        return;
      }
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      res.write(chunkEvent(0, "held"));
      await released;
      res.end(`${chunkEvent(1, "released")}data: [DONE]\n\n`);
    });
    return { upstream, release: () => release() };
  }

  /** Two streams hold both connections of a gateway whose pool has this admission block. */
  async function twoHeld(admission: string) {
    const { upstream, release } = await holdingBackend();
    const gw = await gateway(`pools:
  main:
    models: [test-model]
    backends:
      - { url: "${upstream.url}", maxConnections: 2 }
    ${admission}
`);
    const order: string[] = [];
    const { held, started } = holdTwo(gw.url, order);
    await waitFor(started, "both held streams started");
    return { upstream, release, gw, order, held };
  }

  function holdTwo(url: string, order: string[]) {
    let firstEvents = 0;
    const held = [0, 1].map((i) =>
      postStream(`${url}/v1/chat/completions`, chat({ stream: true }), {
        onEvent: (e) => {
          if (e.data.includes("held")) firstEvents++;
        },
      }).then((r) => {
        order.push(`held ${i} ended`);
        return r;
      }),
    );
    return { held, started: () => firstEvents === 2 };
  }

  it("a third request waits for a connection in the admission queue, unseen by the backend, and is served when one frees", async () => {
    const { upstream, release, gw, order, held } = await twoHeld(
      "admission: { bands: { interactive: { maxWait: 60s } } }",
    );

    const third = post(`${gw.url}/v1/chat/completions`, chat()).then((r) => {
      order.push("third answered");
      return r;
    });
    const pool = gw.gateway.upstreams.pools.get("main");
    await waitFor(() => pool?.admission.queue.total === 1, "the third request queued");
    expect(upstream.received).toHaveLength(2); // the third has not reached the backend

    release();
    const streams = await Promise.all(held);
    const answer = await third;
    expect(answer.status).toBe(200);
    expect(answer.json()).toMatchObject({ choices: [{ message: { content: "hi" } }] });
    expect(Number(answer.headers["x-floodgate-queue-ms"])).toBeGreaterThanOrEqual(0);
    expect(order.indexOf("third answered")).toBeGreaterThan(0);
    for (const s of streams) {
      expect(s.status).toBe(200);
      expect(s.events.map((e) => e.data).at(-1)).toBe("[DONE]");
    }
    expect(upstream.received).toHaveLength(3);
    expect(pool?.backends[0]?.inFlight).toBe(0);
  });

  it("with admission off, a third request gets a fast 503 no_backend_available while two streams hold both connections", async () => {
    const { upstream, release, gw, order, held } = await twoHeld("admission: { enabled: false }");

    const third = await post(`${gw.url}/v1/chat/completions`, chat());
    order.push("third answered");
    expect(third.status).toBe(503);
    expect(third.json()).toMatchObject({ error: { code: "no_backend_available" } });
    expect(Number(third.headers["retry-after"])).toBeGreaterThanOrEqual(1);
    expect(Number(third.headers["retry-after-ms"])).toBeGreaterThan(0);
    expect(upstream.received).toHaveLength(2); // the third never reached the backend

    release();
    const streams = await Promise.all(held);
    expect(order[0]).toBe("third answered");
    for (const s of streams) {
      expect(s.status).toBe(200);
      expect(s.events.map((e) => e.data).at(-1)).toBe("[DONE]");
    }

    const fourth = await post(`${gw.url}/v1/chat/completions`, chat());
    expect(fourth.status).toBe(200);
    expect(fourth.json()).toMatchObject({ choices: [{ message: { content: "hi" } }] });
  });
});
