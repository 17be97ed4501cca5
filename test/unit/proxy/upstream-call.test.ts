/** UpstreamCall against a real HTTP server: held chunks, aborts in every phase, backpressure. */
import { Pool } from "undici";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type BodySink, UpstreamCall } from "../../../src/proxy/upstream-call.js";
import { startUpstream, type TestUpstream } from "../../helpers/upstream.js";

const POST = { path: "/x", method: "POST" as const, body: "{}" };

let upstream: TestUpstream;
let pool: Pool;

afterEach(async () => {
  await pool?.destroy();
  await upstream?.close();
});

function collector(): BodySink & { chunks: string[]; ended: boolean; error?: Error } {
  const sink = {
    chunks: [] as string[],
    ended: false,
    error: undefined as Error | undefined,
    onData(chunk: Buffer) {
      sink.chunks.push(chunk.toString());
      return true;
    },
    onEnd() {
      sink.ended = true;
    },
    onError(err: Error) {
      sink.error = err;
    },
  };
  return sink;
}

describe("UpstreamCall", () => {
  describe("with a backend that answers at once", () => {
    beforeEach(async () => {
      upstream = await startUpstream((_req, res) => {
        res.writeHead(200, { "content-type": "text/plain", "x-seen": "yes" });
        res.end("whole answer");
      });
      pool = new Pool(upstream.url);
    });

    it("resolves at the headers and reads the body whole", async () => {
      const call = new UpstreamCall();
      await call.start(pool, POST, 60_000);
      expect(call.statusCode).toBe(200);
      expect(call.headers["x-seen"]).toBe("yes");
      expect((await call.body(1 << 20)).toString()).toBe("whole answer");
      expect(call.finished).toBe(true);
    });

    it("a body that arrived whole is there without waiting, and only once", async () => {
      const call = new UpstreamCall();
      await call.start(pool, POST, 60_000);
      await expect.poll(() => call.finished, { timeout: 10_000 }).toBe(true);
      expect(call.completeBody()?.toString()).toBe("whole answer");
      expect(call.completeBody()).toBeUndefined();
    });

    it("a body still on its way is not complete", async () => {
      const call = new UpstreamCall();
      call.attach(collector());
      expect(call.completeBody()).toBeUndefined();
    });

    it("holds what arrived before a consumer attached and hands it over, end included", async () => {
      const call = new UpstreamCall();
      await call.start(pool, POST, 60_000);
      // Let the body and its end arrive with nobody listening.
      await expect.poll(() => call.finished, { timeout: 10_000 }).toBe(true);
      const sink = collector();
      call.attach(sink);
      expect(sink.chunks.join("")).toBe("whole answer");
      expect(sink.ended).toBe(true);
    });
  });

  it("abort mid-body: the consumer gets the error and the backend sees the connection close", async () => {
    upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write("data: 1\n\n");
      // ...and never ends.
    });
    pool = new Pool(upstream.url);
    const call = new UpstreamCall();
    await call.start(pool, POST, 60_000);
    const sink = collector();
    call.attach(sink);
    await expect.poll(() => sink.chunks.length).toBe(1);
    const reason = new Error("the client went away");
    call.abort(reason);
    expect(sink.error).toBe(reason);
    await expect.poll(() => upstream.received[0]?.abortedAt).toBeDefined();
  });

  it("abort while queued behind a busy connection: rejected at once, never sent", async () => {
    upstream = await startUpstream(() => {
      // Holds every request: the pool's only connection stays busy.
    });
    pool = new Pool(upstream.url, { connections: 1 });
    const first = new UpstreamCall();
    void first.start(pool, POST, 60_000).catch(() => undefined);
    await expect.poll(() => upstream.received.length).toBe(1);

    const queued = new UpstreamCall();
    const head = queued.start(pool, POST, 60_000);
    const reason = new Error("the total timeout passed");
    queued.abort(reason);
    await expect(head).rejects.toBe(reason);
    first.abort(new Error("done"));
    // The queued request reaches the connection after the first ends, and is aborted there.
    await new Promise((r) => setTimeout(r, 100));
    expect(upstream.received).toHaveLength(1);
  });

  it("a consumer that returns false pauses the backend's body until resume()", async () => {
    const big = "x".repeat(64 * 1024);
    upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream" });
      for (let i = 0; i < 64; i++) res.write(big);
      res.end();
    });
    pool = new Pool(upstream.url);
    const call = new UpstreamCall();
    await call.start(pool, POST, 60_000);
    let received = 0;
    let ended = false;
    call.attach({
      onData(chunk) {
        received += chunk.length;
        return false;
      },
      onEnd() {
        ended = true;
      },
      onError() {},
    });
    await new Promise((r) => setTimeout(r, 100));
    const whilePaused = received;
    expect(whilePaused).toBeLessThan(64 * big.length);
    expect(ended).toBe(false);
    while (!ended) {
      call.resume();
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(received).toBe(64 * big.length);
  });

  it("the first-byte timeout covers the wait for a connection, not only the wait on a socket", async () => {
    upstream = await startUpstream(() => {
      // Holds every request: the pool's only connection stays busy.
    });
    pool = new Pool(upstream.url, { connections: 1, headersTimeout: 60_000 });
    const first = new UpstreamCall();
    const firstHead = first.start(pool, POST, 60_000).catch((err: unknown) => err);
    await expect.poll(() => upstream.received.length).toBe(1);
    const queued = new UpstreamCall();
    // Dispatched onto a busy pool: its own timer bounds the wait (undici's starts on a socket).
    const err = await queued.start(pool, POST, 200).catch((e: unknown) => e);
    expect((err as { code?: string }).code).toBe("UND_ERR_HEADERS_TIMEOUT");
    // The first, on its socket, is still waiting: only the queued call timed out.
    expect(first.finished).toBe(false);
    first.abort(new Error("done"));
    await firstHead;
  });

  it("body(max): an answer past max bytes, or declaring more, is cut with ResponseExceededMaxSizeError", async () => {
    const big = Buffer.alloc(64 * 1024, 0x61);
    upstream = await startUpstream((req, res) => {
      if (req.url === "/declared") {
        res.writeHead(200, { "content-length": String(1 << 30) });
        res.write(big);
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      const pump = () => {
        while (!res.destroyed && res.write(big)) {
          // keep writing until the socket pushes back
        }
        if (!res.destroyed) res.once("drain", pump);
      };
      pump();
    });
    pool = new Pool(upstream.url);
    for (const path of ["/endless", "/declared"]) {
      const call = new UpstreamCall();
      await call.start(pool, { ...POST, path }, 60_000);
      const err = await call.body(1 << 20).catch((e: unknown) => e);
      expect((err as { code?: string }).code).toBe("UND_ERR_RES_EXCEEDED_MAX_SIZE");
    }
    // Both answers were cut off at the backend.
    await expect.poll(() => upstream.received.filter((r) => r.abortedAt !== undefined).length).toBe(2);
  });
});
