/**
 * The official openai SDK runs a batch end to end through floodgate in front of simulator
 * backends, its lines run by the gateway's job runner: files.create, batches.create,
 * batches.retrieve polled until completed, and files.content of the output (every good line's
 * answer, each custom_id once) and of the error file (the one bad line).
 */
import OpenAI, { toFile } from "openai";
import { afterEach, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";

let sims: SimServer[] = [];
let gateway: RunningGateway | undefined;
afterEach(async () => {
  await gateway?.close();
  await Promise.all(sims.map((s) => s.close()));
  sims = [];
  gateway = undefined;
});

describe("the openai npm client runs a batch through floodgate", () => {
  it("300 lines, one of them bad: 299 answers in the output, the bad line in the error file", async () => {
    for (let i = 0; i < 2; i++) {
      sims.push(
        await startSim({ models: ["sim-model"], decodeStepMs: 1, decodeMsPerSeq: 0, prefillMsPerToken: 0 }),
      );
    }
    const backends = sims.map((s) => `{ url: "${s.url}", maxConcurrency: 8 }`).join(", ");
    gateway = await startGateway(`pools: { sims: { models: [sim-model], backends: [${backends}] } }`);
    const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey: "unused", maxRetries: 0 });

    const lines = Array.from({ length: 300 }, (_, i) =>
      i === 137
        ? '{"custom_id": "req-137", "method": "POST", "url": "/v1/chat/completions", "body": '
        : JSON.stringify({
            custom_id: `req-${i}`,
            method: "POST",
            url: "/v1/chat/completions",
            body: {
              model: "sim-model",
              messages: [{ role: "user", content: `Question ${i}?` }],
              max_tokens: 4,
            },
          }),
    );
    const file = await client.files.create({
      file: await toFile(Buffer.from(`${lines.join("\n")}\n`), "questions.jsonl"),
      purpose: "batch",
    });
    expect(file.purpose).toBe("batch");

    const batch = await client.batches.create({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
      metadata: { suite: "sdk" },
    });
    expect(["validating", "in_progress", "completed"]).toContain(batch.status);
    expect(batch.request_counts?.total).toBe(300);

    const seen = new Set<string>();
    // eventually() returns the check's first truthy answer: the completed batch.
    const done = (await eventually(
      async () => {
        const now = await client.batches.retrieve(batch.id);
        seen.add(now.status);
        return now.status === "completed" ? now : undefined;
      },
      { timeout: 120_000, interval: 100, what: "the batch to complete" },
    )) as OpenAI.Batch;
    expect(seen.has("failed")).toBe(false);
    expect(done.request_counts).toEqual({ total: 300, completed: 299, failed: 1 });
    expect(done.completed_at).toBeGreaterThanOrEqual(done.created_at);
    expect(done.metadata).toEqual({ suite: "sdk" });

    const output = (await (await client.files.content(done.output_file_id ?? "")).text())
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
    expect(output).toHaveLength(299);
    const ids = output.map((l) => l.custom_id as string);
    expect(new Set(ids).size).toBe(299);
    const expected = Array.from({ length: 300 }, (_, i) => `req-${i}`).filter((id) => id !== "req-137");
    expect([...ids].sort()).toEqual([...expected].sort());
    for (const entry of output) {
      expect(entry.error).toBeNull();
      expect(entry.response.status_code).toBe(200);
      expect(entry.response.request_id).toEqual(expect.any(String));
      expect(entry.response.body.object).toBe("chat.completion");
      expect(entry.response.body.usage.completion_tokens).toBe(4);
    }

    const errorLines = (await (await client.files.content(done.error_file_id ?? "")).text())
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
    expect(errorLines).toHaveLength(1);
    expect(errorLines[0]).toMatchObject({
      custom_id: null,
      response: null,
      error: { code: "invalid_json_line" },
    });
    expect(errorLines[0].id).toBe(`batch_req_${batch.id.slice("batch_".length)}_137`);

    // The sims answered every good line, once each (a re-run would show more).
    expect(sims.reduce((n, s) => n + s.stats().received, 0)).toBe(299);
  });
});
