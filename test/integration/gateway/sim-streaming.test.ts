/** Streaming and aborts through floodgate against the simulated GPU backend. */
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { postStream, spreadOf } from "../../helpers/sse.js";

let sim: SimServer | undefined;
let gw: RunningGateway | undefined;
afterEach(async () => {
  await gw?.close();
  await sim?.close();
});

async function setup(options: Parameters<typeof startSim>[0]) {
  sim = await startSim({ models: ["sim-model"], prefillMsPerToken: 0, decodeMsPerSeq: 0, ...options });
  gw = await startGateway(
    `pools: { sims: { models: [sim-model], backends: [{ url: "${sim.url}", engine: vllm }] } }`,
  );
  return { sim, gw };
}

const body = (extra: Record<string, unknown>) => ({
  model: "sim-model",
  messages: [{ role: "user", content: "hi" }],
  ...extra,
});

describe("through floodgate to the simulator", () => {
  it("each token event arrives when the backend generates it", async () => {
    const { gw } = await setup({ decodeStepMs: 40 });
    const { events } = await postStream(
      `${gw.url}/v1/chat/completions`,
      body({ stream: true, max_tokens: 6 }),
    );
    expect(events.at(-1)?.data).toBe("[DONE]");
    const tokens = events.filter((e) => e.data.includes('"content"') && !e.data.includes('"content":""'));
    expect(tokens.length).toBe(6);
    const { medianGap, spread } = spreadOf(tokens);
    expect(medianGap).toBeGreaterThan(20);
    expect(spread).toBeGreaterThan(100);
  });

  // 500 tokens at 10 ms would run ~5 s more, the 2 s latency fault 2 s: an abort within 1 s
  // (slack for a busy machine) shows the client's leaving ended the work.
  it("a client leaving mid-stream stops the generation at once (within 1 s)", async () => {
    const { gw, sim } = await setup({ decodeStepMs: 10 });
    const aborts: number[] = [];
    sim.onAbort((e) => aborts.push(e.at));
    const controller = new AbortController();
    let abortedAt = 0;
    await postStream(`${gw.url}/v1/chat/completions`, body({ stream: true, max_tokens: 500 }), {
      signal: controller.signal,
      onEvent: () => {
        if (abortedAt === 0) {
          abortedAt = Date.now();
          controller.abort();
        }
      },
    }).catch(() => undefined);
    await until(() => aborts.length === 1);
    expect((aborts[0] ?? Number.POSITIVE_INFINITY) - abortedAt).toBeLessThan(1000);
    expect(sim.stats().running).toBe(0);
  });

  it("a client leaving while its request is queued or prefilling frees the backend at once (within 1 s)", async () => {
    const { gw, sim } = await setup({ decodeStepMs: 10, faults: { latencyMs: 2000 } });
    const aborts: number[] = [];
    sim.onAbort((e) => aborts.push(e.at));
    const controller = new AbortController();
    const pending = request(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body({ max_tokens: 5 })),
      signal: controller.signal,
    }).catch(() => undefined);
    await until(() => sim.stats().received === 1);
    const abortedAt = Date.now();
    controller.abort();
    await pending;
    await until(() => aborts.length === 1);
    expect((aborts[0] ?? Number.POSITIVE_INFINITY) - abortedAt).toBeLessThan(1000);
  });
});

async function until(predicate: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 5));
  }
}
