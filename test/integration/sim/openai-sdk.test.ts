import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { countTokens } from "../../../src/tokens/tokenizer.js";

describe("sim with the official openai client", () => {
  let sim: SimServer;
  let client: OpenAI;

  beforeAll(async () => {
    sim = await startSim({
      models: ["llama-3.1-8b"],
      prefillMsPerToken: 0,
      decodeStepMs: 1,
      decodeMsPerSeq: 0,
    });
    client = new OpenAI({ baseURL: `${sim.url}/v1`, apiKey: "sk-test", maxRetries: 0 });
  });
  afterAll(() => sim.close());

  it("creates a chat completion", async () => {
    const completion = await client.chat.completions.create({
      model: "llama-3.1-8b",
      messages: [{ role: "user", content: "Say something" }],
      max_tokens: 9,
      temperature: 0,
    });
    expect(completion.choices[0]?.message.content).toBeTruthy();
    expect(completion.choices[0]?.finish_reason).toBe("length");
    expect(completion.usage?.completion_tokens).toBe(9);
    expect(countTokens(completion.choices[0]?.message.content ?? "")).toBe(9);
  });

  it("streams a chat completion with usage", async () => {
    const stream = await client.chat.completions.create({
      model: "llama-3.1-8b",
      messages: [{ role: "user", content: "Say something" }],
      max_tokens: 9,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(finish).toBe("length");
    expect(usage?.completion_tokens).toBe(9);
    expect(countTokens(text)).toBe(9);
  });

  it("lists models, embeds (base64 by default in the SDK) and surfaces API errors", async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(["llama-3.1-8b"]);

    const embedding = await client.embeddings.create({ model: "llama-3.1-8b", input: "hello world" });
    expect(embedding.data[0]?.embedding).toHaveLength(256);
    expect(embedding.usage.prompt_tokens).toBe(2);

    await expect(
      client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }),
    ).rejects.toMatchObject({ status: 404, code: "model_not_found" });

    await sim.setFaults({ errorRate: 1, errorStatus: 503 });
    try {
      await expect(
        client.chat.completions.create({ model: "llama-3.1-8b", messages: [{ role: "user", content: "x" }] }),
      ).rejects.toBeInstanceOf(OpenAI.InternalServerError);
    } finally {
      await sim.clearFaults();
    }
  });
});
