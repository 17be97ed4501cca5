/** Engine load signals end to end: read from the simulator's vLLM metrics, shown, and routed on. */
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";

let sims: SimServer[] = [];
let gw: RunningGateway | undefined;
afterEach(async () => {
  await gw?.close();
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
});

describe("engine load signals", () => {
  it("a backend whose engine reports a queue is avoided, and the reading is in /metrics", async () => {
    const opts = { models: ["m"], prefillMsPerToken: 0, decodeMsPerSeq: 0 };
    const queued = await startSim({ ...opts, slots: 1, decodeStepMs: 100 });
    const idle = await startSim({ ...opts, slots: 16, decodeStepMs: 1 });
    sims = [queued, idle];
    // Fill the first backend's engine queue directly, as other gateways' traffic would: 5 s
    // requests, so the queue lasts however slowly the rest goes, cut off at the end.
    const others = new AbortController();
    const direct = Array.from({ length: 4 }, () =>
      request(`${queued.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "m", max_tokens: 50, messages: [{ role: "user", content: "x" }] }),
        signal: others.signal,
      }).then(
        (r) => r.body.dump(),
        () => undefined,
      ),
    );
    gw = await startGateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${queued.url}", name: queued, engine: vllm }, { url: "${idle.url}", name: idle, engine: vllm }]
    loadSignals: { interval: 50ms, staleAfter: 2s }
`);
    // The first reading arrives within an interval or two; a loaded machine may take longer.
    const gateway = gw.gateway;
    await expect
      .poll(() => gateway.metrics.registry.getSingleMetricAsString("floodgate_backend_engine_waiting"), {
        timeout: 10_000,
      })
      .toMatch(/floodgate_backend_engine_waiting\{pool="p",backend="queued"\} [1-9]/);
    const before = queued.stats().received;
    for (let i = 0; i < 20; i++) {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "m", max_tokens: 1, messages: [{ role: "user", content: "x" }] }),
      });
      await res.body.dump();
      expect(res.statusCode).toBe(200);
    }
    // Two backends: power of two choices always compares both, and the queued one costs more.
    expect(queued.stats().received - before).toBe(0);
    expect(queued.stats().waiting).toBeGreaterThan(0); // the queue lasted throughout
    others.abort();
    await Promise.all(direct);
  });
});
