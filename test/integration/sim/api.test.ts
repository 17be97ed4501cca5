import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { countTokens } from "../../../src/tokens/tokenizer.js";
import { eventually } from "../../helpers/eventually.js";
import { call, chatBody, chunks, sleep, stream, streamedText } from "./sim-http.js";

describe("sim OpenAI API", () => {
  let sim: SimServer;

  beforeAll(async () => {
    sim = await startSim({
      models: ["sim-model", "sim-alias"],
      decodeStepMs: 1,
      decodeMsPerSeq: 0,
      prefillMsPerToken: 0,
      outputTokensMin: 5,
      outputTokensMax: 12,
    });
  });
  afterAll(() => sim.close());

  it("answers a chat completion in OpenAI's shape with usage", async () => {
    const res = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("Hello, how are you?") });
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe("application/json");
    const body = res.body as {
      id: string;
      object: string;
      model: string;
      created: number;
      choices: { index: number; message: { role: string; content: string }; finish_reason: string }[];
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
    };
    expect(body.id).toMatch(/^chatcmpl-/);
    expect(body.object).toBe("chat.completion");
    expect(body.model).toBe("sim-model");
    expect(Number.isInteger(body.created)).toBe(true);
    expect(body.choices).toHaveLength(1);
    const [choice] = body.choices;
    expect(choice?.message.role).toBe("assistant");
    expect(choice?.finish_reason).toBe("stop");
    // 3 per message + 3 priming + "Hello , how are you ?" (6)
    expect(body.usage.prompt_tokens).toBe(12);
    expect(body.usage.completion_tokens).toBe(countTokens(choice?.message.content ?? ""));
    expect(body.usage.completion_tokens).toBeGreaterThanOrEqual(5);
    expect(body.usage.completion_tokens).toBeLessThanOrEqual(12);
    expect(body.usage.total_tokens).toBe(body.usage.prompt_tokens + body.usage.completion_tokens);
  });

  it("honours max_tokens / max_completion_tokens with finish_reason length", async () => {
    for (const field of ["max_tokens", "max_completion_tokens"]) {
      const res = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x", { [field]: 7 }) });
      const body = res.body as { choices: { finish_reason: string }[]; usage: { completion_tokens: number } };
      expect(body.usage.completion_tokens).toBe(7);
      expect(body.choices[0]?.finish_reason).toBe("length");
    }
  });

  it("answers legacy completions, streamed and not", async () => {
    const res = await call(`${sim.url}/v1/completions`, {
      body: { model: "sim-alias", prompt: "Once upon", max_tokens: 4 },
    });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      object: "text_completion",
      model: "sim-alias",
      choices: [{ index: 0, finish_reason: "length" }],
      usage: { prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 },
    });
    const s = await stream(`${sim.url}/v1/completions`, { prompt: "Once upon", max_tokens: 4, stream: true });
    const parsed = chunks(s);
    expect(parsed.every((c) => c.object === "text_completion")).toBe(true);
    expect(countTokens(streamedText(s))).toBe(4);
    expect(s.events.at(-1)?.data).toBe("[DONE]");
  });

  it("echoes x-request-id", async () => {
    const res = await request(`${sim.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": "req-123" },
      body: JSON.stringify(chatBody("hi", { max_tokens: 1 })),
    });
    await res.body.text();
    expect(res.headers["x-request-id"]).toBe("req-123");
  });

  it("is deterministic for temperature 0 or a seed, and varies otherwise", async () => {
    const text = async (extra: Record<string, unknown>) => {
      const res = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("Tell me a story", extra) });
      return (res.body as { choices: { message: { content: string } }[] }).choices[0]?.message.content;
    };
    expect(await text({ temperature: 0 })).toBe(await text({ temperature: 0 }));
    expect(await text({ seed: 5, temperature: 1 })).toBe(await text({ seed: 5, temperature: 1 }));
    const sampled = new Set([await text({}), await text({}), await text({})]);
    expect(sampled.size).toBeGreaterThan(1);

    // Same seed, same request -> same text from a separate server instance too.
    const other = await startSim({ ...sim.options, port: 0 });
    try {
      const res = await call(`${other.url}/v1/chat/completions`, {
        body: chatBody("Tell me a story", { temperature: 0 }),
      });
      expect((res.body as { choices: { message: { content: string } }[] }).choices[0]?.message.content).toBe(
        await text({ temperature: 0 }),
      );
    } finally {
      await other.close();
    }
  });

  it("streams the same text it would answer, in OpenAI's chunk format", async () => {
    const unary = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("abc", { temperature: 0 }) });
    const s = await stream(
      `${sim.url}/v1/chat/completions`,
      chatBody("abc", { temperature: 0, stream: true }),
    );
    expect(s.status).toBe(200);
    expect(s.headers["content-type"]).toBe("text/event-stream; charset=utf-8");
    expect(s.headers["cache-control"]).toBe("no-cache");
    const parsed = chunks(s);
    expect(parsed[0]).toMatchObject({
      object: "chat.completion.chunk",
      choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }],
    });
    expect(parsed.at(-1)).toMatchObject({ choices: [{ delta: {}, finish_reason: "stop" }] });
    expect(parsed.every((c) => !("usage" in c))).toBe(true);
    expect(new Set(parsed.map((c) => c.id)).size).toBe(1);
    expect(s.events.at(-1)?.data).toBe("[DONE]");
    expect(streamedText(s)).toBe(
      (unary.body as { choices: { message: { content: string } }[] }).choices[0]?.message.content,
    );
  });

  it("adds a usage chunk with empty choices when stream_options.include_usage is set", async () => {
    const s = await stream(
      `${sim.url}/v1/chat/completions`,
      chatBody("count me", { stream: true, max_tokens: 3, stream_options: { include_usage: true } }),
    );
    const parsed = chunks(s);
    const last = parsed.at(-1);
    expect(last).toMatchObject({
      choices: [],
      usage: { prompt_tokens: 8, completion_tokens: 3, total_tokens: 11 },
    });
    // Every other chunk carries "usage": null, as OpenAI sends it.
    expect(parsed.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    expect(parsed.at(-2)).toMatchObject({ choices: [{ finish_reason: "length" }] });
    expect(s.events.at(-1)?.data).toBe("[DONE]");
  });

  it("serves deterministic embeddings, as floats and base64", async () => {
    const body = { model: "sim-model", input: ["the cat sat", "hello"], dimensions: 8 };
    const a = await call(`${sim.url}/v1/embeddings`, { body });
    const b = await call(`${sim.url}/v1/embeddings`, { body });
    expect(a.status).toBe(200);
    expect(a.body).toEqual(b.body);
    const parsed = a.body as {
      object: string;
      data: { index: number; embedding: number[] }[];
      usage: unknown;
    };
    expect(parsed.object).toBe("list");
    expect(parsed.data.map((d) => d.index)).toEqual([0, 1]);
    expect(parsed.data[0]?.embedding).toHaveLength(8);
    expect(parsed.usage).toEqual({ prompt_tokens: 4, total_tokens: 4 });
    const b64 = await call(`${sim.url}/v1/embeddings`, { body: { ...body, encoding_format: "base64" } });
    const encoded = (b64.body as { data: { embedding: string }[] }).data[0]?.embedding ?? "";
    const bytes = Buffer.from(encoded, "base64");
    expect(bytes.readFloatLE(0)).toBe(parsed.data[0]?.embedding[0]);
  });

  it("lists the served models", async () => {
    const res = await call(`${sim.url}/v1/models`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      object: "list",
      data: [
        { id: "sim-model", object: "model" },
        { id: "sim-alias", object: "model" },
      ],
    });
    expect((await call(`${sim.url}/v1/models/sim-alias`)).body).toMatchObject({ id: "sim-alias" });
    expect((await call(`${sim.url}/v1/models/nope`)).status).toBe(404);
  });

  it("answers 404 model_not_found, 400 for bad JSON or bad fields, 404/405 for unknown routes", async () => {
    const unknown = await call(`${sim.url}/v1/chat/completions`, {
      body: chatBody("x", { model: "gpt-nope" }),
    });
    expect(unknown.status).toBe(404);
    expect(unknown.body).toMatchObject({ error: { code: "model_not_found", type: "invalid_request_error" } });

    const malformed = await call(`${sim.url}/v1/chat/completions`, { raw: "{not json" });
    expect(malformed.status).toBe(400);
    expect(malformed.body).toMatchObject({ error: { type: "invalid_request_error", code: "invalid_json" } });

    const noMessages = await call(`${sim.url}/v1/chat/completions`, { body: { model: "sim-model" } });
    expect(noMessages.status).toBe(400);
    expect(noMessages.body).toMatchObject({ error: { param: "messages" } });

    const badMax = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("x", { max_tokens: 0 }) });
    expect(badMax.status).toBe(400);

    const tooLong = await call(`${sim.url}/v1/chat/completions`, {
      body: chatBody("x", { max_tokens: 1_000_000 }),
    });
    expect(tooLong.status).toBe(400);
    expect((tooLong.body as { error: { message: string } }).error.message).toContain(
      "maximum context length",
    );

    expect((await call(`${sim.url}/v2/nothing`)).status).toBe(404);
    const wrongMethod = await call(`${sim.url}/v1/chat/completions`, { method: "GET" });
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.allow).toBe("POST");
  });

  it("exposes vLLM's metric names with a model_name label", async () => {
    const res = await call(`${sim.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toContain("text/plain");
    for (const name of [
      "vllm:num_requests_running",
      "vllm:num_requests_waiting",
      "vllm:gpu_cache_usage_perc",
    ]) {
      expect(res.text).toMatch(new RegExp(`^${name}\\{model_name="sim-model"\\} \\d`, "m"));
    }
    expect(res.text).toMatch(
      /^vllm:request_success_total\{finished_reason="stop",model_name="sim-model"\} [1-9]/m,
    );
    expect(res.text).toMatch(/^sim_requests_aborted_total\{model_name="sim-model"\} \d+$/m);
  });

  it("exposes counters at GET /sim/stats matching stats()", async () => {
    await sleep(5);
    const res = await call(`${sim.url}/sim/stats`);
    expect(res.body).toEqual(sim.stats());
  });
});

describe("sim health and model loading", () => {
  it("answers /health 503 while loading, then 200; inference gets 503 model_loading meanwhile", async () => {
    // Loading for 1 s: the first calls land in it unless the machine stalls that long.
    const sim = await startSim({ loadTimeMs: 1000, timeScale: 0 });
    try {
      const loading = await call(`${sim.url}/health`);
      expect(loading.status).toBe(503);
      const early = await call(`${sim.url}/v1/chat/completions`, { body: chatBody("hi") });
      expect(early.status).toBe(503);
      expect(early.body).toMatchObject({ error: { code: "model_loading" } });
      expect(early.headers["retry-after"]).toBe("1");
      await eventually(async () => (await call(`${sim.url}/health`)).status === 200, { what: "loaded" });
      expect((await call(`${sim.url}/v1/chat/completions`, { body: chatBody("hi") })).status).toBe(200);
    } finally {
      await sim.close();
    }
  });
});
