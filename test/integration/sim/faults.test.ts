import { request } from "undici";
import { describe, expect, it } from "vitest";
import { startSim } from "../../../src/sim/index.js";
import { call, chatBody, chunks, sleep, stream, waitFor } from "./sim-http.js";

const fast = { prefillMsPerToken: 0, decodeStepMs: 2, decodeMsPerSeq: 0 };

/** The error code of a failed undici/fetch call, looking through `cause`. */
function errorCode(err: unknown): string | undefined {
  let current: unknown = err;
  for (let depth = 0; depth < 5 && typeof current === "object" && current !== null; depth++) {
    if ("code" in current && typeof current.code === "string") return current.code;
    current = "cause" in current ? current.cause : undefined;
  }
  return undefined;
}

describe("sim faults", () => {
  it("injects errors with the configured status and retry-after, before any work", async () => {
    const sim = await startSim({ ...fast, faults: { errorRate: 1, errorStatus: 429, errorRetryAfterS: 2 } });
    try {
      const limited = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x") });
      expect(limited.status).toBe(429);
      expect(limited.headers["retry-after"]).toBe("2");
      expect(limited.body).toMatchObject({ error: { code: "rate_limit_exceeded" } });

      await sim.setFaults({ errorStatus: 503 });
      const busy = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x", { stream: true }) });
      expect(busy.status).toBe(503);
      expect(busy.headers["retry-after"]).toBe("2");
      expect(busy.body).toEqual({
        error: { message: "server busy, try again later", type: "server_error", code: "server_busy" },
      });

      await sim.setFaults({ errorStatus: 500 });
      const failed = await call(`${sim.url}/v1/embeddings`, { body: { input: "x" } });
      expect(failed.status).toBe(500);
      expect(failed.headers["retry-after"]).toBeUndefined();

      const stats = sim.stats();
      expect(stats.errorsInjected).toBe(3);
      expect(stats.completed).toBe(0);
      expect(stats.promptTokens).toBe(0);

      await sim.setFaults({ errorRate: 0.5 });
      const statuses = await Promise.all(
        Array.from({ length: 40 }, () =>
          call(`${sim.url}/v1/chat/completions`, { body: chatBody("x", { max_tokens: 1 }) }),
        ),
      );
      const failures = statuses.filter((r) => r.status === 500).length;
      expect(failures).toBeGreaterThan(5);
      expect(failures).toBeLessThan(35);
    } finally {
      await sim.close();
    }
  });

  it("adds latency before the response starts", async () => {
    const sim = await startSim({ timeScale: 0, faults: { latencyMs: 500 } });
    try {
      const t0 = performance.now();
      const s = await stream(
        `${sim.url}/v1/chat/completions`,
        chatBody("x", { stream: true, max_tokens: 2 }),
      );
      expect(s.headersAt - t0).toBeGreaterThanOrEqual(495);
      await sim.setFaults({ latencyMs: 0 });
      // Without the fault an answer takes a few ms; one still delayed would take 500 ms or more.
      const t1 = performance.now();
      await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x", { max_tokens: 2 }) });
      expect(performance.now() - t1).toBeLessThan(495);
    } finally {
      await sim.close();
    }
  });

  it("hangs until the client gives up, then counts an abort", async () => {
    const sim = await startSim({ ...fast, faults: { hang: true } });
    try {
      const t0 = Date.now();
      const outcome = await request(`${sim.url}/v1/chat/completions`, {
        method: "POST",
        body: JSON.stringify(chatBody("x")),
        signal: AbortSignal.timeout(150),
      }).catch((err: unknown) => err);
      expect(outcome).toBeInstanceOf(Error);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
      expect(await waitFor(() => sim.stats().aborted === 1, undefined, 1)).toBe(true);
      expect(sim.stats().hung).toBe(1);
      // The admin side still answers while inference hangs.
      expect((await call(`${sim.url}/sim/faults`)).body).toMatchObject({ hang: true });
    } finally {
      await sim.close();
    }
  });

  it("drops a stream after N tokens, and a plain body halfway", async () => {
    for (const timing of [fast, { timeScale: 0 }]) {
      const sim = await startSim({ ...timing, faults: { dropMidStreamAfterTokens: 3 } });
      try {
        const s = await stream(
          `${sim.url}/v1/chat/completions`,
          chatBody("x", { stream: true, max_tokens: 10 }),
        );
        expect(s.status).toBe(200);
        expect(s.error).not.toBeNull();
        const content = chunks(s).filter(
          (c) => JSON.stringify(c).includes('"content":"') && !JSON.stringify(c).includes("role"),
        );
        expect(content).toHaveLength(3);
        expect(s.events.some((e) => e.data === "[DONE]")).toBe(false);

        const res = await request(`${sim.url}/v1/chat/completions`, {
          method: "POST",
          body: JSON.stringify(chatBody("x", { max_tokens: 5 })),
        });
        expect(res.statusCode).toBe(200);
        await expect(res.body.text()).rejects.toThrow();

        const stats = sim.stats();
        expect(stats.droppedMidStream).toBe(2);
        expect(stats.aborted).toBe(0);
        expect(stats.completed).toBe(0);
        expect(await waitFor(() => sim.stats().running === 0)).toBe(true);
      } finally {
        await sim.close();
      }
    }
  });

  it("refuses connections, then listens again on the same port", async () => {
    const sim = await startSim({ timeScale: 0 });
    try {
      expect((await call(`${sim.url}/health`)).status).toBe(200);
      await sim.setFaults({ refuseConnections: true });
      const refused = await request(`${sim.url}/health`).catch((err: unknown) => err);
      expect(errorCode(refused)).toBe("ECONNREFUSED");
      const viaFetch = await fetch(`${sim.url}/health`).catch((err: unknown) => err);
      expect(errorCode(viaFetch)).toBe("ECONNREFUSED");

      await sim.setFaults({ refuseConnections: false });
      const back = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x", { max_tokens: 2 }) });
      expect(back.status).toBe(200);
      expect(sim.url).toBe(`http://127.0.0.1:${sim.port}`);
    } finally {
      await sim.close();
    }
  });

  it("can be refused through the admin endpoint and recovered programmatically", async () => {
    const sim = await startSim({ timeScale: 0 });
    try {
      const res = await call(`${sim.url}/sim/faults`, { body: { refuseConnections: true } });
      expect(res.body).toMatchObject({ refuseConnections: true });
      expect(errorCode(await request(`${sim.url}/health`).catch((err: unknown) => err))).toBe("ECONNREFUSED");
      await sim.clearFaults();
      expect((await call(`${sim.url}/health`)).status).toBe(200);
    } finally {
      await sim.close();
    }
  });

  it("resets new connections", async () => {
    const sim = await startSim({ timeScale: 0 });
    try {
      expect((await call(`${sim.url}/health`)).status).toBe(200);
      await sim.setFaults({ resetConnections: true });
      const reset = await request(`${sim.url}/health`).catch((err: unknown) => err);
      expect(reset).toBeInstanceOf(Error);
      expect(["ECONNRESET", "UND_ERR_SOCKET"]).toContain(errorCode(reset));
      expect(sim.stats().connectionsReset).toBeGreaterThanOrEqual(1);
      await sim.setFaults({ resetConnections: false });
      expect((await call(`${sim.url}/health`)).status).toBe(200);
    } finally {
      await sim.close();
    }
  });

  it("starts slow after slowStartMs is set, easing back to normal", async () => {
    const sim = await startSim({ prefillMsPerToken: 0, decodeStepMs: 10, decodeMsPerSeq: 0 });
    try {
      const timed = async () => {
        const t0 = performance.now();
        await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x", { max_tokens: 3 }) });
        return performance.now() - t0;
      };
      await timed(); // warms the connection
      // The fastest of a few runs: a stall only lengthens a run, so one cannot spoil it.
      const fastest = async (runs: number) => {
        let best = Number.POSITIVE_INFINITY;
        for (let i = 0; i < runs; i++) best = Math.min(best, await timed());
        return best;
      };
      const normal = await fastest(2);
      await sim.setFaults({ slowStartMs: 400 });
      // Steps start at x5 and ease off: ~50 + 45 + 40 ms for 3 tokens, against 30 ms when warm.
      // Lower bounds are safe (timers never fire early).
      const cold = await timed();
      expect(cold).toBeGreaterThanOrEqual(120);
      await sleep(400);
      const warm = await fastest(3);
      expect(warm).toBeGreaterThanOrEqual(29);
      // Back to normal: nearer the normal time than the slow one, both measured here.
      expect(warm).toBeLessThan((normal + cold) / 2);
    } finally {
      await sim.close();
    }
  });

  it("reports unhealthy on /health while inference keeps working", async () => {
    const sim = await startSim({ timeScale: 0, faults: { unhealthy: true } });
    try {
      expect((await call(`${sim.url}/health`)).status).toBe(503);
      expect((await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x") })).status).toBe(200);
    } finally {
      await sim.close();
    }
  });

  it("reads, merges, validates and clears faults over the admin API", async () => {
    const sim = await startSim({ timeScale: 0 });
    try {
      const merged = await call(`${sim.url}/sim/faults`, { body: { latencyMs: 5, errorStatus: 503 } });
      expect(merged.status).toBe(200);
      expect(merged.body).toMatchObject({ latencyMs: 5, errorStatus: 503, errorRate: 0 });
      await call(`${sim.url}/sim/faults`, { body: { errorRate: 0.25 } });
      expect((await call(`${sim.url}/sim/faults`)).body).toMatchObject({ latencyMs: 5, errorRate: 0.25 });
      expect(sim.faults()).toMatchObject({ latencyMs: 5, errorRate: 0.25 });

      const bad = await call(`${sim.url}/sim/faults`, { body: { errorRate: 3 } });
      expect(bad.status).toBe(400);
      expect((bad.body as { error: { message: string } }).error.message).toContain("errorRate");
      expect((await call(`${sim.url}/sim/faults`, { body: { bogus: true } })).status).toBe(400);

      const cleared = await call(`${sim.url}/sim/faults`, { method: "DELETE" });
      expect(cleared.body).toMatchObject({ latencyMs: 0, errorRate: 0, errorStatus: 500 });
      await expect(sim.setFaults({ errorRate: -1 })).rejects.toThrow(RangeError);

      const stats = await call(`${sim.url}/sim/stats`);
      expect(stats.body).toMatchObject({
        received: 0,
        aborted: 0,
        lastAbortAt: null,
        running: 0,
        waiting: 0,
      });
    } finally {
      await sim.close();
    }
  });
});
