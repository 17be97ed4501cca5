import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FinalAnswerBuilder } from "../../../src/jobs/final-answer.js";

const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    id: "chatcmpl-9",
    object: "chat.completion.chunk",
    created: 1700000000,
    model: "m",
    choices,
    ...extra,
  });

const CHAT = [
  `data: ${chunk([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }])}\n\n`,
  `data: ${chunk([{ index: 0, delta: { content: "Hello" }, finish_reason: null }])}\n\n`,
  `: a comment\n\n`,
  `data: ${chunk([{ index: 0, delta: { content: " wörld" }, finish_reason: null }])}\n\n`,
  `data: ${chunk([{ index: 0, delta: {}, finish_reason: "length" }])}\n\n`,
  `data: ${chunk([], { usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } })}\n\n`,
  "data: [DONE]\n\n",
].join("");

const EXPECTED_CHAT = {
  id: "chatcmpl-9",
  object: "chat.completion",
  created: 1700000000,
  model: "m",
  choices: [
    {
      index: 0,
      message: { role: "assistant", content: "Hello wörld" },
      logprobs: null,
      finish_reason: "length",
    },
  ],
  usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
};

function assemble(
  pieces: (string | Buffer)[],
  route: "/v1/chat/completions" | "/v1/completions" = "/v1/chat/completions",
) {
  const builder = new FinalAnswerBuilder(route, "m");
  for (const p of pieces) builder.push(Buffer.isBuffer(p) ? p : Buffer.from(p));
  return { answer: builder.end(), done: builder.done };
}

describe("a stream's final answer", () => {
  it("is the chat.completion the same request answers without stream, usage and finish_reason included", () => {
    const { answer, done } = assemble([CHAT]);
    expect(done).toBe(true);
    expect(answer).toEqual({ kind: "complete", json: EXPECTED_CHAT });
  });

  it("is the same however the bytes are cut (inside a line, a CRLF or a UTF-8 character)", () => {
    const bytes = Buffer.from(CHAT.replaceAll("\n", "\r\n"));
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 }), { maxLength: 20 }),
        (cuts) => {
          const at = [0, ...cuts.sort((a, b) => a - b), bytes.length];
          const pieces = at.slice(1).map((end, i) => bytes.subarray(at[i], end));
          expect(assemble(pieces).answer).toEqual({ kind: "complete", json: EXPECTED_CHAT });
        },
      ),
    );
  });

  it("reads CR line ends and joined data lines", () => {
    const text = `data: ${chunk([{ index: 0, delta: { content: "a" }, finish_reason: "stop" }])}\r\rdata: [DONE]\r\r`;
    const { answer, done } = assemble([text]);
    expect(done).toBe(true);
    expect(answer.kind === "complete" && answer.json.choices).toEqual([
      { index: 0, message: { role: "assistant", content: "a" }, logprobs: null, finish_reason: "stop" },
    ]);
  });

  it("is a text_completion for /v1/completions, choices in index order", () => {
    const c = (choices: unknown[]) =>
      `data: ${JSON.stringify({ id: "cmpl-1", object: "text_completion", created: 3, model: "m", choices })}\n\n`;
    const { answer } = assemble(
      [
        c([{ index: 1, text: "B", finish_reason: null }]),
        c([{ index: 0, text: "A", finish_reason: null }]),
        c([
          { index: 0, text: "a", finish_reason: "stop" },
          { index: 1, text: "b", finish_reason: "length" },
        ]),
        `data: ${JSON.stringify({ id: "cmpl-1", object: "text_completion", created: 3, model: "m", choices: [], usage: { prompt_tokens: 1, completion_tokens: 4, total_tokens: 5 } })}\n\n`,
        "data: [DONE]\n\n",
      ],
      "/v1/completions",
    );
    expect(answer).toEqual({
      kind: "complete",
      json: {
        id: "cmpl-1",
        object: "text_completion",
        created: 3,
        model: "m",
        choices: [
          { index: 0, text: "Aa", logprobs: null, finish_reason: "stop" },
          { index: 1, text: "Bb", logprobs: null, finish_reason: "length" },
        ],
        usage: { prompt_tokens: 1, completion_tokens: 4, total_tokens: 5 },
      },
    });
  });

  it("joins tool-call arguments", () => {
    const { answer } = assemble([
      `data: ${chunk([{ index: 0, delta: { role: "assistant", tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "f", arguments: '{"a":' } }] }, finish_reason: null }])}\n\n`,
      `data: ${chunk([{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: "1}" } }] }, finish_reason: "tool_calls" }])}\n\n`,
      "data: [DONE]\n\n",
    ]);
    expect(answer.kind === "complete" && answer.json.choices).toEqual([
      {
        index: 0,
        message: {
          role: "assistant",
          content: null,
          tool_calls: [{ id: "call_1", type: "function", function: { name: "f", arguments: '{"a":1}' } }],
        },
        logprobs: null,
        finish_reason: "tool_calls",
      },
    ]);
  });

  it("is the gateway's error when the stream broke with its error event", () => {
    const error = {
      message: "The backend did not answer in time (idle timeout).",
      type: "server_error",
      code: "upstream_idle_timeout",
      param: null,
    };
    const { answer, done } = assemble([
      `data: ${chunk([{ index: 0, delta: { content: "Hel" }, finish_reason: null }])}\n\n`,
      `event: error\ndata: ${JSON.stringify({ error })}\n\n`,
    ]);
    expect(done).toBe(false);
    expect(answer).toEqual({ kind: "error", status: 504, body: { error } });
  });

  it("is a backend's error sent as data, with its numeric code as the status", () => {
    const { answer } = assemble([
      `data: {"error":{"object":"error","message":"bad","type":"BadRequestError","code":400}}\n\n`,
    ]);
    expect(answer).toEqual({
      kind: "error",
      status: 400,
      body: { error: { object: "error", message: "bad", type: "BadRequestError", code: 400 } },
    });
  });

  it("keeps an unterminated last event", () => {
    const { answer } = assemble([
      `data: ${chunk([{ index: 0, delta: { content: "x" }, finish_reason: "stop" }])}`,
    ]);
    expect(answer.kind === "complete" && answer.json.choices).toHaveLength(1);
  });
});
