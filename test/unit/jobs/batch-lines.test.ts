/** The batch line checks, the line splitter, and the output/error lines (src/jobs/batch-lines.ts). */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { checkLine, inputLines, invalidLine, jobLine, oversizeLine } from "../../../src/jobs/batch-lines.js";
import type { JobRecord } from "../../../src/jobs/types.js";

const rules = { endpoint: "/v1/chat/completions", maxBodyBytes: 1000 };
const good = (id: string, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    custom_id: id,
    method: "POST",
    url: "/v1/chat/completions",
    body: { model: "m", messages: [{ role: "user", content: "hi" }] },
    ...extra,
  });

describe("checkLine", () => {
  it("takes a well-formed line, and its body as the request", () => {
    const seen = new Set<string>();
    const checked = checkLine(good("a"), rules, seen);
    expect(checked).toEqual({
      ok: true,
      customId: "a",
      body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] }),
    });
    expect(seen.has("a")).toBe(true);
  });

  it.each([
    ["not JSON", "{nope", null, "invalid_json_line", null],
    ["a JSON array", "[1,2]", null, "invalid_json_line", null],
    [
      "no custom_id",
      JSON.stringify({ method: "POST", url: "/v1/chat/completions", body: { model: "m" } }),
      null,
      "missing_required_parameter",
      "custom_id",
    ],
    ["an empty custom_id", good(""), null, "missing_required_parameter", "custom_id"],
    ["a numeric custom_id", good("x", { custom_id: 7 }), null, "missing_required_parameter", "custom_id"],
    ["method GET", good("b", { method: "GET" }), "b", "invalid_method", "method"],
    ["no method", good("b", { method: undefined }), "b", "invalid_method", "method"],
    ["another endpoint", good("b", { url: "/v1/embeddings" }), "b", "mismatched_endpoint", "url"],
    ["a body that is a string", good("b", { body: "text" }), "b", "invalid_body", "body"],
    ["a body that is an array", good("b", { body: [] }), "b", "invalid_body", "body"],
    ["no model", good("b", { body: { messages: [] } }), "b", "missing_required_parameter", "body.model"],
    [
      "a body over the limit",
      good("b", { body: { model: "m", pad: "x".repeat(1000) } }),
      "b",
      "request_too_large",
      "body",
    ],
  ])("refuses %s", (_what, text, customId, code, param) => {
    const seen = new Set<string>();
    const checked = checkLine(text, rules, seen);
    expect(checked.ok).toBe(false);
    if (checked.ok) return;
    expect(checked.customId).toBe(customId);
    expect(checked.problem.code).toBe(code);
    expect(checked.problem.param).toBe(param);
    expect(checked.problem.message.length).toBeGreaterThan(10);
    // A refused line's id stays free.
    expect(seen.size).toBe(0);
  });

  it("refuses a repeated custom_id, but not the first line that had it", () => {
    const seen = new Set<string>();
    expect(checkLine(good("a"), rules, seen).ok).toBe(true);
    const again = checkLine(good("a"), rules, seen);
    expect(again).toMatchObject({ ok: false, customId: "a", problem: { code: "duplicate_custom_id" } });
    // A refused line does not take its id: a later good line with it is taken.
    expect(checkLine(good("b", { method: "PUT" }), rules, seen).ok).toBe(false);
    expect(checkLine(good("b"), rules, seen).ok).toBe(true);
  });
});

describe("the error file's lines", () => {
  it("a refused line: response null, the error's code and message", () => {
    const line = invalidLine("batch_req_x_3", "c3", {
      code: "invalid_method",
      message: "bad",
      param: "method",
    });
    expect(line.endsWith("\n")).toBe(true);
    expect(JSON.parse(line)).toEqual({
      id: "batch_req_x_3",
      custom_id: "c3",
      response: null,
      error: { code: "invalid_method", message: "bad" },
    });
    const oversize = oversizeLine(10);
    expect(oversize.ok).toBe(false);
  });

  const job = (over: Partial<JobRecord>): JobRecord => ({
    id: "batch_req_x_0",
    tenant: "t",
    request: { url: "/v1/chat/completions", body: "{}" },
    group: "batch_x",
    seq: 0,
    customId: "c0",
    runAt: 0,
    expiresAt: 1,
    state: "queued",
    createdAt: 0,
    startedAt: undefined,
    finishedAt: undefined,
    attempts: 0,
    result: undefined,
    ...over,
  });

  it("an answer of 2xx goes to the output file, with the status, request id and body", () => {
    const out = jobLine(
      job({
        state: "succeeded",
        result: { status: 200, headers: { "x-request-id": "req-1" }, body: '{"object":"chat.completion"}' },
      }),
      false,
    );
    expect(out?.file).toBe("output");
    expect(JSON.parse(out?.line ?? "")).toEqual({
      id: "batch_req_x_0",
      custom_id: "c0",
      response: { status_code: 200, request_id: "req-1", body: { object: "chat.completion" } },
      error: null,
    });
  });

  it("an error answer goes to the error file as the answer it was (error null)", () => {
    const body = JSON.stringify({
      error: { message: "no", type: "invalid_request_error", code: "model_not_found" },
    });
    const out = jobLine(job({ state: "failed", result: { status: 404, headers: {}, body } }), false);
    expect(out?.file).toBe("error");
    expect(JSON.parse(out?.line ?? "")).toMatchObject({
      custom_id: "c0",
      response: { status_code: 404, request_id: null, body: JSON.parse(body) },
      error: null,
    });
  });

  it("a body that is not JSON is kept as text", () => {
    const out = jobLine(
      job({ state: "failed", result: { status: 502, headers: {}, body: "Bad Gateway" } }),
      false,
    );
    expect(JSON.parse(out?.line ?? "").response.body).toBe("Bad Gateway");
  });

  it("lines that never ran: expired, cancelled, and cancelled at the window's end", () => {
    const line = (state: JobRecord["state"], expired: boolean) =>
      JSON.parse(jobLine(job({ state }), expired)?.line ?? "");
    expect(line("expired", false)).toMatchObject({ response: null, error: { code: "batch_expired" } });
    expect(line("cancelled", false)).toMatchObject({ response: null, error: { code: "batch_cancelled" } });
    expect(line("cancelled", true)).toMatchObject({ response: null, error: { code: "batch_expired" } });
  });

  it("an unfinished line is in neither file", () => {
    expect(jobLine(job({ state: "queued" }), false)).toBeUndefined();
    expect(jobLine(job({ state: "running" }), true)).toBeUndefined();
  });
});

async function* chunksOf(buffer: Buffer, cuts: number[]): AsyncGenerator<Buffer> {
  let at = 0;
  for (const cut of [...cuts].sort((a, b) => a - b)) {
    if (cut <= at || cut >= buffer.length) continue;
    yield buffer.subarray(at, cut);
    at = cut;
  }
  if (at < buffer.length) yield buffer.subarray(at);
}

async function collect(lines: AsyncIterable<{ index: number; text: string | undefined }>) {
  const out: { index: number; text: string | undefined }[] = [];
  for await (const line of lines) out.push(line);
  return out;
}

describe("inputLines", () => {
  it("numbers lines as the file does and skips blank ones (a CRLF line keeps its CR: JSON.parse takes it as white space)", async () => {
    const text = "a\r\n\n  \nb\nc";
    expect(await collect(inputLines(chunksOf(Buffer.from(text), [1, 2, 5]), 100))).toEqual([
      { index: 0, text: "a\r" },
      { index: 3, text: "b" },
      { index: 4, text: "c" },
    ]);
  });

  it("a line longer than the bound is yielded without its text, and the next line is whole", async () => {
    const text = `${"x".repeat(50)}\nshort\n${"y".repeat(11)}`;
    expect(await collect(inputLines(chunksOf(Buffer.from(text), [7, 20, 52]), 10))).toEqual([
      { index: 0, text: undefined },
      { index: 1, text: "short" },
      { index: 2, text: undefined },
    ]);
  });

  it("any cut of a file into chunks gives the lines of the whole (multi-byte characters too)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.string({ unit: "grapheme" }), fc.constantFrom("", " ", "\r", "{}")), {
          maxLength: 20,
        }),
        fc.array(fc.nat({ max: 400 }), { maxLength: 10 }),
        async (rows, cuts) => {
          const clean = rows.map((r) => r.replaceAll("\n", ""));
          const file = Buffer.from(clean.join("\n"));
          const expected = clean
            .map((text, index) => ({ index, text }))
            .filter((l) => l.text.trim().length > 0 && Buffer.byteLength(l.text) <= 1000);
          expect(await collect(inputLines(chunksOf(file, cuts), 1000))).toEqual(expected);
        },
      ),
    );
  });
});
