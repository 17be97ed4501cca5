/**
 * The official `openai` client against floodgate in front of the simulator: what real users
 * run. Includes the proof that the SDK's retries are paced by our retry-after-ms.
 */
import OpenAI from "openai";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";

let sims: SimServer[] = [];
let gateways: RunningGateway[] = [];
afterEach(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
  gateways = [];
});

async function setup(
  maxConcurrency?: number,
  simOptions: Parameters<typeof startSim>[0] = {},
  poolExtra = "",
) {
  const sim = await startSim({
    models: ["sim-model"],
    decodeStepMs: 2,
    decodeMsPerSeq: 0,
    prefillMsPerToken: 0,
    ...simOptions,
  });
  sims.push(sim);
  const cap = maxConcurrency === undefined ? "" : `, maxConcurrency: ${maxConcurrency}`;
  const gw = await startGateway(
    `pools: { sims: { models: [sim-model], backends: [{ url: "${sim.url}"${cap} }]${poolExtra} } }`,
  );
  gateways.push(gw);
  const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "unused", maxRetries: 0 });
  return { sim, gw, client };
}

describe("the openai npm client through floodgate", () => {
  it("non-streamed chat completion with usage", async () => {
    const { client } = await setup();
    const res = await client.chat.completions.create({
      model: "sim-model",
      messages: [{ role: "user", content: "Say something." }],
      max_tokens: 12,
    });
    expect(res.object).toBe("chat.completion");
    expect(res.choices[0]?.message.content?.length).toBeGreaterThan(0);
    expect(res.usage?.completion_tokens).toBe(12);
  });

  it("streamed chat completion, every chunk in order, with include_usage", async () => {
    const { client } = await setup();
    const stream = await client.chat.completions.create({
      model: "sim-model",
      messages: [{ role: "user", content: "Count." }],
      max_tokens: 10,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null | undefined;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
    }
    expect(text.length).toBeGreaterThan(0);
    expect(finish).toBe("length");
    expect(usage?.completion_tokens).toBe(10);
  });

  it("embeddings and the model list", async () => {
    const { client } = await setup();
    const emb = await client.embeddings.create({ model: "sim-model", input: "hello world" });
    expect(emb.data[0]?.embedding.length).toBeGreaterThan(0);
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["sim-model"]);
  });

  it("an unknown model raises NotFoundError with the OpenAI code", async () => {
    const { client } = await setup();
    await expect(
      client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }),
    ).rejects.toMatchObject({ status: 404, code: "model_not_found" });
  });

  it("a backend dying mid-stream raises an error in the SDK instead of a short answer", async () => {
    const { client, sim } = await setup(undefined, { decodeStepMs: 5 });
    await sim.setFaults({ dropMidStreamAfterTokens: 3 });
    const stream = await client.chat.completions.create({
      model: "sim-model",
      messages: [{ role: "user", content: "x" }],
      max_tokens: 50,
      stream: true,
    });
    const consume = async () => {
      for await (const _chunk of stream) {
        // read until the error event
      }
    };
    await expect(consume()).rejects.toThrow(/backend/i);
  });

  it("its retries wait as long as our retry-after-ms says on a 503 from the gateway", async () => {
    // One slot and no room to wait (interactive maxQueue 0); a long generation holds the slot, so
    // the SDK's first attempt gets 503 queue_full with retry-after-ms from the drain estimate
    // (the prior, one slot-second, less the slot's age, with up to 20% jitter). The slot frees
    // after ~600 ms. Each retry is checked against the header of the answer before it, seen from
    // the client's side: the SDK's own first backoff (0.375-0.5 s) would come sooner.
    const { gw, sim, client } = await setup(
      1,
      { decodeStepMs: 20 },
      ", admission: { bands: { interactive: { maxQueue: 0 } } }",
    );
    const holder = client.chat.completions.create({
      model: "sim-model",
      messages: [{ role: "user", content: "x" }],
      max_tokens: 30,
    });
    await eventually(() => sim.stats().received === 1, { what: "the holder at the backend" });
    const attempts: { sentAt: number; doneAt: number; status: number; retryAfterMs: number }[] = [];
    const recording: typeof fetch = async (input, init) => {
      const sentAt = performance.now();
      const answer = await fetch(input, init);
      const retryAfterMs = Number(answer.headers.get("retry-after-ms"));
      attempts.push({ sentAt, doneAt: performance.now(), status: answer.status, retryAfterMs });
      return answer;
    };
    const retrying = new OpenAI({
      baseURL: `${gw.url}/v1`,
      apiKey: "unused",
      maxRetries: 5,
      fetch: recording,
    });
    const res = await retrying.chat.completions.create({
      model: "sim-model",
      messages: [{ role: "user", content: "y" }],
      max_tokens: 2,
    });
    expect(res.choices[0]?.finish_reason).toBe("length");
    await holder;
    // Refused while the slot was held (once, or again if the holder was slowed), then success.
    expect(attempts.at(-1)?.status).toBe(200);
    const refused = attempts.slice(0, -1);
    expect(refused.length).toBeGreaterThan(0);
    for (const [i, attempt] of refused.entries()) {
      expect(attempt.status).toBe(503);
      expect(attempt.retryAfterMs).toBeGreaterThan(0);
      const retry = attempts[i + 1];
      expect(retry?.sentAt ?? 0).toBeGreaterThanOrEqual(attempt.doneAt + attempt.retryAfterMs - 5);
    }
    // Every retry came from the SDK, paced by us: the gateway saw each of these attempts.
    const metrics = await gw.gateway.metrics.registry.getSingleMetricAsString("floodgate_requests_total");
    expect(metrics).toMatch(new RegExp(`code="503",error="[a-z_]+"\\} ${refused.length}\n`));
    expect(metrics).toContain('code="200",error=""} 2');
  });
});
