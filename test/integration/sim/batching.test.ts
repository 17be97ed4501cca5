import { request } from "undici";
import { describe, expect, it } from "vitest";
import { type SimAbortEvent, startSim } from "../../../src/sim/index.js";
import { call, chatBody, chunks, type StreamResult, stream, waitFor } from "./sim-http.js";

describe("sim continuous batching over HTTP", () => {
  it("writes each token event as it is generated: events arrive spaced by the decode step", async () => {
    const sim = await startSim({ decodeStepMs: 12, decodeMsPerSeq: 0, prefillMsPerToken: 0 });
    try {
      const t0 = performance.now();
      const s = await stream(
        `${sim.url}/v1/chat/completions`,
        chatBody("hi", { stream: true, max_tokens: 6 }),
      );
      const contentEvents = s.events.filter(
        (e) => e.data.includes('"content":"') && !e.data.includes('"role"'),
      );
      expect(contentEvents).toHaveLength(6);
      // Token k leaves the server (k + 1) steps after the request arrived: timers fire late, never early.
      contentEvents.forEach((e, k) => {
        expect(e.at - t0).toBeGreaterThanOrEqual((k + 1) * 12 - 1);
      });
      // A buffering server would deliver them all at once at the end.
      expect((contentEvents.at(-1)?.at ?? 0) - (contentEvents[0]?.at ?? 0)).toBeGreaterThan(30);
      expect(s.events.at(-1)?.data).toBe("[DONE]");
    } finally {
      await sim.close();
    }
  });

  it("flushes stream headers when the sequence is accepted, before prefill ends", async () => {
    // "hi" is 7 prompt tokens with chat overhead: a prefill of 7 s, which no stall outlasts. The
    // headers arrive while no token exists yet; a server that sent them with the first token
    // would have counted it before they left.
    const sim = await startSim({ decodeStepMs: 1, decodeMsPerSeq: 0, prefillMsPerToken: 1000 });
    const controller = new AbortController();
    try {
      const res = await request(`${sim.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(chatBody("hi", { stream: true, max_tokens: 2 })),
        signal: controller.signal,
      });
      expect(res.statusCode).toBe(200);
      expect(res.headers["content-type"]).toMatch(/^text\/event-stream/);
      expect(sim.stats()).toMatchObject({ running: 1, completionTokens: 0 });
      controller.abort();
      await res.body.dump().catch(() => undefined);
      expect(await waitFor(() => sim.stats().aborted === 1)).toBe(true);
    } finally {
      controller.abort();
      await sim.close();
    }
  });

  it("slows every step as the batch grows (decodeMsPerSeq)", async () => {
    const sim = await startSim({ slots: 8, decodeStepMs: 2, decodeMsPerSeq: 3, prefillMsPerToken: 0 });
    try {
      const duration = async (concurrent: number) => {
        const t0 = performance.now();
        await Promise.all(
          Array.from({ length: concurrent }, () =>
            call(`${sim.url}/v1/chat/completions`, { body: chatBody("x", { max_tokens: 8 }) }),
          ),
        );
        return performance.now() - t0;
      };
      // The fastest of three runs alone: a stall only lengthens a run, so one cannot spoil it.
      const alone = Math.min(await duration(1), await duration(1), await duration(1)); // 8 steps * 5 ms
      const crowded = await duration(6); // 8 steps * 20 ms
      expect(crowded).toBeGreaterThan(alone * 2);
    } finally {
      await sim.close();
    }
  });

  it("answers 503 server_busy when every slot and the queue are taken, and reports load in /metrics", async () => {
    const sim = await startSim({
      slots: 1,
      maxQueue: 1,
      decodeStepMs: 5,
      decodeMsPerSeq: 0,
      prefillMsPerToken: 0,
    });
    const controller = new AbortController();
    try {
      const long = chatBody("x", { stream: true, max_tokens: 10_000 });
      const pending = [
        stream(`${sim.url}/v1/chat/completions`, long, { signal: controller.signal }),
        stream(`${sim.url}/v1/chat/completions`, long, { signal: controller.signal }),
      ];
      expect(await waitFor(() => sim.stats().running === 1 && sim.stats().waiting === 1)).toBe(true);

      const busy = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x") });
      expect(busy.status).toBe(503);
      expect(busy.text).toBe(
        '{"error":{"message":"server busy, try again later","type":"server_error","code":"server_busy"}}',
      );
      expect(sim.stats().rejectedBusy).toBe(1);

      const metrics = (await call(`${sim.url}/metrics`)).text;
      expect(metrics).toContain('vllm:num_requests_running{model_name="sim-model"} 1');
      expect(metrics).toContain('vllm:num_requests_waiting{model_name="sim-model"} 1');
      const usage = Number(/^vllm:gpu_cache_usage_perc\{[^}]*\} (\S+)$/m.exec(metrics)?.[1]);
      expect(usage).toBeGreaterThan(0);
      expect(usage).toBeLessThanOrEqual(1);

      controller.abort();
      await Promise.allSettled(pending);
      expect(await waitFor(() => sim.stats().running === 0 && sim.stats().waiting === 0)).toBe(true);
    } finally {
      controller.abort();
      await sim.close();
    }
  });

  it("sees a client abort at once and frees the slot", async () => {
    const sim = await startSim({
      slots: 1,
      maxQueue: 4,
      decodeStepMs: 5,
      decodeMsPerSeq: 0,
      prefillMsPerToken: 0,
    });
    try {
      const events: SimAbortEvent[] = [];
      sim.onAbort((e) => events.push(e));
      const controller = new AbortController();
      let abortedAt = 0;
      const streamed: StreamResult = await stream(
        `${sim.url}/v1/chat/completions`,
        chatBody("x", { stream: true, max_tokens: 10_000 }),
        {
          signal: controller.signal,
          onEvent: (_e, all) => {
            if (all.length === 3) {
              abortedAt = Date.now();
              controller.abort();
            }
          },
        },
      );
      expect(streamed.error).not.toBeNull();
      expect(await waitFor(() => sim.stats().aborted === 1, undefined, 1)).toBe(true);
      const stats = sim.stats();
      expect(stats.lastAbortAt).not.toBeNull();
      // At once: the rest of the 10,000 tokens would take 50 s; 2 s allows for a busy machine.
      expect((stats.lastAbortAt ?? 0) - abortedAt).toBeLessThan(2000);
      expect(events).toHaveLength(1);
      expect(events[0]?.path).toBe("/v1/chat/completions");
      expect(stats.running).toBe(0);
      expect(stats.completed).toBe(0);

      // A request waiting in the queue is removed too.
      const holder = new AbortController();
      const first = stream(
        `${sim.url}/v1/chat/completions`,
        chatBody("x", { stream: true, max_tokens: 10_000 }),
        {
          signal: holder.signal,
        },
      );
      const queued = new AbortController();
      const second = request(`${sim.url}/v1/chat/completions`, {
        method: "POST",
        body: JSON.stringify(chatBody("x", { max_tokens: 5 })),
        signal: queued.signal,
      }).catch((err: unknown) => err);
      expect(await waitFor(() => sim.stats().waiting === 1)).toBe(true);
      queued.abort();
      expect(await waitFor(() => sim.stats().waiting === 0 && sim.stats().aborted === 2, undefined, 1)).toBe(
        true,
      );
      holder.abort();
      await Promise.allSettled([first, second]);
      expect(await waitFor(() => sim.stats().running === 0)).toBe(true);
    } finally {
      await sim.close();
    }
  });

  it("answers immediately with zero timings, streamed and not", async () => {
    const sim = await startSim({
      prefillMsPerToken: 0,
      decodeStepMs: 0,
      decodeMsPerSeq: 0,
      slots: 1,
      maxQueue: 0,
    });
    try {
      const t0 = performance.now();
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          call(`${sim.url}/v1/chat/completions`, { body: chatBody(`q${i}`, { max_tokens: 32 }) }),
        ),
      );
      expect(results.every((r) => r.status === 200)).toBe(true);
      // With one slot and no queue any time taken would have refused some (rejectedBusy, below);
      // the bound only catches a stuck step (32 tokens × 50 in turn would take many seconds).
      expect(performance.now() - t0).toBeLessThan(10_000);
      const s = await stream(
        `${sim.url}/v1/chat/completions`,
        chatBody("x", { stream: true, max_tokens: 20, stream_options: { include_usage: true } }),
      );
      expect(chunks(s).at(-1)).toMatchObject({ usage: { completion_tokens: 20 } });
      expect(s.events.at(-1)?.data).toBe("[DONE]");
      const stats = sim.stats();
      expect(stats.completed).toBe(51);
      expect(stats.rejectedBusy).toBe(0);
    } finally {
      await sim.close();
    }
  });

  it("queues embeddings on the batch like prefill-only work", async () => {
    const sim = await startSim({ prefillMsPerToken: 5, decodeStepMs: 0, decodeMsPerSeq: 0 });
    try {
      const t0 = performance.now();
      const res = await call(`${sim.url}/v1/embeddings`, { body: { input: "one two three four five six" } });
      expect(res.status).toBe(200);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(25);
    } finally {
      await sim.close();
    }
  });
});
