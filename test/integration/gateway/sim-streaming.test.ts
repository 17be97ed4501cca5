/** Streaming and aborts through floodgate against the simulated GPU backend. */
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
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

  // Measured in the backend's own work, not in ms: its steps are timers, so a stalled machine
  // stalls the generation too, and the tokens made after the client left stay few.
  it("a client leaving mid-stream stops the generation at once", async () => {
    const { gw, sim } = await setup({ decodeStepMs: 10 });
    const controller = new AbortController();
    let tokensAtAbort = 0;
    await postStream(`${gw.url}/v1/chat/completions`, body({ stream: true, max_tokens: 500 }), {
      signal: controller.signal,
      onEvent: () => {
        if (!controller.signal.aborted) {
          tokensAtAbort = sim.stats().completionTokens;
          controller.abort();
        }
      },
    }).catch(() => undefined);
    await until(() => sim.stats().aborted + sim.stats().completed === 1);
    expect(sim.stats()).toMatchObject({ aborted: 1, completed: 0, running: 0 });
    // Of the 500 tokens, the ones made between the client leaving and the gateway hanging up.
    expect(sim.stats().completionTokens - tokensAtAbort).toBeLessThan(100);
  });

  // The 2 s latency fault, then 5 tokens: a backend left running would complete the request.
  it("a client leaving while its request is queued or prefilling frees the backend at once", async () => {
    const { gw, sim } = await setup({ decodeStepMs: 10, faults: { latencyMs: 2000 } });
    const controller = new AbortController();
    const pending = request(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body({ max_tokens: 5 })),
      signal: controller.signal,
    }).catch(() => undefined);
    await until(() => sim.stats().received === 1);
    controller.abort();
    await pending;
    await until(() => sim.stats().aborted + sim.stats().completed === 1);
    expect(sim.stats()).toMatchObject({ aborted: 1, completed: 0, completionTokens: 0 });
  });
});

const until = (predicate: () => boolean) => eventually(predicate, { interval: 5 });
