import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { CachedAnswer } from "../../../src/cache/entry.js";
import { jsonToStream, replayEvents, splitWords, streamToJson } from "../../../src/cache/render.js";

type Json = Record<string, unknown>;

const MODEL = "meta-llama/Llama-3.1-8B-Instruct";

function answer(fields: Partial<CachedAnswer>): CachedAnswer {
  return {
    v: 1,
    route: "/v1/chat/completions",
    model: MODEL,
    createdAt: 1_718_000_000_000,
    freshUntil: 1_718_000_060_000,
    staleUntil: 1_718_000_060_000,
    ...fields,
  };
}

function recorded(payloads: unknown[], fields: Partial<CachedAnswer> = {}): CachedAnswer {
  return answer({ events: payloads.map((p, i) => ({ data: JSON.stringify(p), at: i * 20 })), ...fields });
}

function parsed(payloads: string[]): Json[] {
  return payloads.map((p) => JSON.parse(p) as Json);
}

/** What a client gets by concatenating a chat stream's content deltas. */
function streamedContent(payloads: string[]): string {
  let s = "";
  for (const chunk of parsed(payloads)) {
    for (const c of chunk.choices as { delta?: { content?: unknown } }[]) {
      if (typeof c.delta?.content === "string") s += c.delta.content;
    }
  }
  return s;
}

/** A vLLM (0.6+) chat stream with stream_options.include_usage, as recorded from the wire. */
const vllmHead = {
  id: "chatcmpl-8f2c",
  object: "chat.completion.chunk",
  created: 1_718_000_000,
  model: MODEL,
};
const vllmStream = [
  {
    ...vllmHead,
    choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }],
    usage: null,
  },
  ...["Hello", "!", " How", " can", " I", " help", "?"].map((content) => ({
    ...vllmHead,
    choices: [{ index: 0, delta: { content }, logprobs: null, finish_reason: null }],
    usage: null,
  })),
  {
    ...vllmHead,
    choices: [{ index: 0, delta: { content: "" }, logprobs: null, finish_reason: "stop", stop_reason: null }],
    usage: null,
  },
  { ...vllmHead, choices: [], usage: { prompt_tokens: 12, total_tokens: 19, completion_tokens: 7 } },
];

/** A vLLM tool-call stream (hermes parser): name first, then the arguments in pieces. */
const vllmToolStream = [
  { ...vllmHead, choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }] },
  {
    ...vllmHead,
    choices: [
      {
        index: 0,
        delta: {
          tool_calls: [
            {
              index: 0,
              id: "chatcmpl-tool-1",
              type: "function",
              function: { name: "get_weather", arguments: "" },
            },
          ],
        },
        finish_reason: null,
      },
    ],
  },
  ...['{"city": ', '"Paris"', "}"].map((args) => ({
    ...vllmHead,
    choices: [
      { index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: args } }] }, finish_reason: null },
    ],
  })),
  {
    ...vllmHead,
    choices: [
      {
        index: 0,
        delta: {
          tool_calls: [{ index: 1, id: "t2", type: "function", function: { name: "noop", arguments: "{}" } }],
        },
        finish_reason: null,
      },
    ],
  },
  { ...vllmHead, choices: [{ index: 0, delta: {}, finish_reason: "tool_calls" }] },
];

describe("streamToJson", () => {
  it("builds the non-streamed body of a vLLM chat stream", () => {
    expect(streamToJson(recorded(vllmStream))).toEqual({
      id: "chatcmpl-8f2c",
      object: "chat.completion",
      created: 1_718_000_000,
      model: MODEL,
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: "Hello! How can I help?" },
          logprobs: null,
          finish_reason: "stop",
          stop_reason: null,
        },
      ],
      usage: { prompt_tokens: 12, total_tokens: 19, completion_tokens: 7 },
    });
  });

  it("joins tool-call arguments per tool call index", () => {
    const body = streamToJson(recorded(vllmToolStream));
    expect(body.choices).toEqual([
      {
        index: 0,
        message: {
          role: "assistant",
          content: "",
          tool_calls: [
            {
              id: "chatcmpl-tool-1",
              type: "function",
              function: { name: "get_weather", arguments: '{"city": "Paris"}' },
            },
            { id: "t2", type: "function", function: { name: "noop", arguments: "{}" } },
          ],
        },
        logprobs: null,
        finish_reason: "tool_calls",
      },
    ]);
  });

  it("takes usage from answer.usage when the stream has none, and omits it when nobody knows", () => {
    const noUsage = vllmStream.slice(0, -1);
    const usage = { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 };
    expect(streamToJson(recorded(noUsage, { usage })).usage).toEqual(usage);
    expect(streamToJson(recorded(noUsage))).not.toHaveProperty("usage");
  });

  it("builds a text_completion from a completions stream, logprobs joined", () => {
    const head = { id: "cmpl-1", object: "text_completion", created: 5, model: "m" };
    const lp = (t: string) => ({ tokens: [t], token_logprobs: [-0.1], top_logprobs: null, text_offset: [0] });
    const events = [
      { ...head, choices: [{ index: 0, text: "Once", logprobs: lp("Once"), finish_reason: null }] },
      { ...head, choices: [{ index: 0, text: " upon", logprobs: lp(" upon"), finish_reason: null }] },
      { ...head, choices: [{ index: 0, text: "", logprobs: null, finish_reason: "length" }] },
    ];
    expect(streamToJson(recorded(events, { route: "/v1/completions", model: "m" }))).toEqual({
      id: "cmpl-1",
      object: "text_completion",
      created: 5,
      model: "m",
      choices: [
        {
          index: 0,
          text: "Once upon",
          logprobs: {
            tokens: ["Once", " upon"],
            token_logprobs: [-0.1, -0.1],
            top_logprobs: null,
            text_offset: [0, 0],
          },
          finish_reason: "length",
        },
      ],
    });
  });

  it("skips garbage payloads and a stray [DONE]", () => {
    const a = recorded(vllmStream);
    const events = [
      { data: "not json", at: 0 },
      { data: "[1,2]", at: 0 },
      ...(a.events ?? []),
      { data: "[DONE]", at: 0 },
    ];
    expect(streamToJson({ ...a, events })).toEqual(streamToJson(a));
  });

  it("keeps a __proto__ delta field as data", () => {
    const events = [{ data: '{"choices":[{"index":0,"delta":{"__proto__":"x","content":"a"}}]}', at: 0 }];
    const body = streamToJson(answer({ events }));
    const message = (body.choices as { message: Json }[])[0]?.message;
    expect(message !== undefined && Object.hasOwn(message, "__proto__")).toBe(true);
    expect(Object.getPrototypeOf(message)).toBe(Object.prototype);
  });
});

describe("jsonToStream", () => {
  const body = {
    id: "chatcmpl-9",
    object: "chat.completion",
    created: 1_718_000_001,
    model: MODEL,
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: "Hi there, friend." },
        logprobs: null,
        finish_reason: "stop",
      },
    ],
    usage: { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 },
  };

  it("streams a chat body: role chunk, word pieces, finish chunk, usage chunk when asked", () => {
    const chunks = parsed(jsonToStream(answer({ json: body }), true));
    const envelope = {
      id: "chatcmpl-9",
      object: "chat.completion.chunk",
      created: 1_718_000_001,
      model: MODEL,
    };
    expect(chunks[0]).toEqual({
      ...envelope,
      choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }],
      usage: null,
    });
    expect(chunks.slice(1, 4).map((c) => (c.choices as { delta: Json }[])[0]?.delta)).toEqual([
      { content: "Hi " },
      { content: "there, " },
      { content: "friend." },
    ]);
    expect(chunks[4]).toEqual({
      ...envelope,
      choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: "stop" }],
      usage: null,
    });
    expect(chunks[5]).toEqual({ ...envelope, choices: [], usage: body.usage });
    expect(chunks).toHaveLength(6);
  });

  it("has no usage anywhere when not asked", () => {
    const chunks = parsed(jsonToStream(answer({ json: body }), false));
    expect(chunks).toHaveLength(5);
    for (const c of chunks) expect(c).not.toHaveProperty("usage");
  });

  it("takes usage from answer.usage when the body has none", () => {
    const usage = { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 };
    const chunks = parsed(jsonToStream(answer({ json: { ...body, usage: undefined }, usage }), true));
    expect(chunks.at(-1)).toMatchObject({ choices: [], usage });
  });

  it("streams a completions body as text_completion chunks", () => {
    const text = {
      id: "cmpl-2",
      object: "text_completion",
      created: 7,
      model: "m",
      choices: [{ index: 0, text: "a b", logprobs: null, finish_reason: "length" }],
    };
    const chunks = parsed(jsonToStream(answer({ route: "/v1/completions", json: text }), false));
    expect(chunks).toEqual([
      {
        id: "cmpl-2",
        object: "text_completion",
        created: 7,
        model: "m",
        choices: [{ index: 0, text: "a ", logprobs: null, finish_reason: null }],
      },
      {
        id: "cmpl-2",
        object: "text_completion",
        created: 7,
        model: "m",
        choices: [{ index: 0, text: "b", logprobs: null, finish_reason: null }],
      },
      {
        id: "cmpl-2",
        object: "text_completion",
        created: 7,
        model: "m",
        choices: [{ index: 0, text: "", logprobs: null, finish_reason: "length" }],
      },
    ]);
  });

  it("streams other message fields too (reasoning_content, refusal: null) and gets them back", () => {
    const message = { role: "assistant", reasoning_content: "think  hard", content: "ok", refusal: null };
    const x = answer({
      json: { ...body, choices: [{ index: 0, message, logprobs: null, finish_reason: "stop" }] },
    });
    const payloads = jsonToStream(x, false);
    expect(parsed(payloads)[0]).toMatchObject({
      choices: [{ delta: { role: "assistant", content: "", refusal: null } }],
    });
    const back = streamToJson({ ...x, json: undefined, events: payloads.map((data) => ({ data, at: 0 })) });
    expect((back.choices as { message: Json }[])[0]?.message).toEqual(message);
  });

  it("refuses embeddings, which have no stream form", () => {
    expect(() => jsonToStream(answer({ route: "/v1/embeddings", json: {} }), false)).toThrow(RangeError);
  });
});

describe("replayEvents", () => {
  const payloads = vllmStream.map((p) => JSON.stringify(p));

  it("replays the recording as it was when the client asked for usage", () => {
    expect(replayEvents(recorded(vllmStream), true)).toEqual(payloads);
  });

  it("drops the usage-only chunk when the client did not ask", () => {
    expect(replayEvents(recorded(vllmStream), false)).toEqual(payloads.slice(0, -1));
  });

  it("adds a usage chunk from answer.usage when asked and the recording had none", () => {
    const usage = { prompt_tokens: 12, completion_tokens: 7, total_tokens: 19 };
    const out = replayEvents(recorded(vllmStream.slice(0, -1), { usage }), true);
    expect(out.slice(0, -1)).toEqual(payloads.slice(0, -1));
    expect(JSON.parse(out.at(-1) ?? "")).toEqual({ ...vllmHead, choices: [], usage });
  });

  it("adds nothing when usage is unknown, and drops a recorded [DONE]", () => {
    const a = recorded(vllmStream.slice(0, -1));
    const events = [...(a.events ?? []), { data: "[DONE]", at: 99 }];
    expect(replayEvents({ ...a, events }, true)).toEqual(payloads.slice(0, -1));
  });
});

describe("splitWords", () => {
  it.each([
    ["", []],
    ["one", ["one"]],
    ["a b", ["a ", "b"]],
    ["  lead and trail  ", ["  ", "lead ", "and ", "trail  "]],
    ["x\n\ny\tz", ["x\n\n", "y\t", "z"]],
    ["😀 é", ["😀 ", "é"]],
  ])("%j", (s, pieces) => {
    expect(splitWords(s)).toEqual(pieces);
  });
});

// ---- round-trip properties ----

const space = fc.constantFrom(" ", "  ", "\n", "\t", "\u00a0", "\u3000");
const word = fc.oneof(
  fc.string({ unit: "grapheme", minLength: 1, maxLength: 6 }),
  fc.string({ unit: "binary", maxLength: 4 }),
);
const text = fc.array(fc.oneof(word, space), { maxLength: 20 }).map((parts) => parts.join(""));
const finishReason = fc.constantFrom("stop", "length", "tool_calls", "content_filter");
const usage = fc
  .record({ prompt_tokens: fc.nat(100_000), completion_tokens: fc.nat(100_000) })
  .map((u) => ({ ...u, total_tokens: u.prompt_tokens + u.completion_tokens }));
const toolCall = fc.record({
  id: fc.string({ minLength: 1, maxLength: 12 }),
  type: fc.constant("function"),
  function: fc.record({ name: fc.string({ minLength: 1, maxLength: 12 }), arguments: fc.json() }),
});
const chatChoice = fc
  .record({
    content: fc.option(text, { nil: null }),
    toolCalls: fc.option(fc.array(toolCall, { minLength: 1, maxLength: 3 }), { nil: undefined }),
    finish: finishReason,
  })
  .map(({ content, toolCalls, finish }) => ({
    message: { role: "assistant", content, ...(toolCalls ? { tool_calls: toolCalls } : {}) },
    logprobs: null,
    finish_reason: finish,
  }));

const chatAnswer = fc
  .record({
    choices: fc.array(chatChoice, { minLength: 1, maxLength: 3 }),
    usage,
    includeUsage: fc.boolean(),
  })
  .map(({ choices, usage, includeUsage }) => ({
    includeUsage,
    answer: answer({
      usage,
      json: {
        id: "chatcmpl-x",
        object: "chat.completion",
        created: 1,
        model: MODEL,
        choices: choices.map((c, index) => ({ index, ...c })),
        usage,
      },
    }),
  }));

const textAnswer = fc
  .record({
    texts: fc.array(fc.tuple(text, finishReason), { minLength: 1, maxLength: 3 }),
    usage,
    includeUsage: fc.boolean(),
  })
  .map(({ texts, usage, includeUsage }) => ({
    includeUsage,
    answer: answer({
      route: "/v1/completions",
      usage,
      json: {
        id: "cmpl-x",
        object: "text_completion",
        created: 1,
        model: MODEL,
        choices: texts.map(([t, finish], index) => ({
          index,
          text: t,
          logprobs: null,
          finish_reason: finish,
        })),
        usage,
      },
    }),
  }));

function asRecording(a: CachedAnswer, payloads: string[]): CachedAnswer {
  return { ...a, json: undefined, events: payloads.map((data, i) => ({ data, at: i })) };
}

describe("round trips (properties)", () => {
  it.each([
    ["chat", chatAnswer],
    ["completions", textAnswer],
  ])("%s: streamToJson(jsonToStream(x)) gives back x's choices and usage", (_name, arb) => {
    fc.assert(
      fc.property(arb, ({ answer: x, includeUsage }) => {
        const back = streamToJson(asRecording(x, jsonToStream(x, includeUsage)));
        expect(back.choices).toEqual(x.json?.choices);
        expect(back.usage).toEqual(x.json?.usage);
        expect(back.object).toBe(x.json?.object);
        expect(back.id).toBe(x.json?.id);
      }),
    );
  });

  it("chat: jsonToStream(streamToJson(s)) streams the same content as a recorded stream s", () => {
    // A recorded stream cut at arbitrary places (not word boundaries), with empty pieces.
    const pieces = fc.array(fc.oneof(text, fc.constant("")), { maxLength: 12 });
    fc.assert(
      fc.property(
        pieces,
        finishReason,
        fc.option(usage, { nil: undefined }),
        fc.boolean(),
        (parts, finish, u, inc) => {
          const s = recorded([
            {
              ...vllmHead,
              choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }],
            },
            ...parts.map((content) => ({
              ...vllmHead,
              choices: [{ index: 0, delta: { content }, finish_reason: null }],
            })),
            { ...vllmHead, choices: [{ index: 0, delta: {}, finish_reason: finish }] },
            ...(u ? [{ ...vllmHead, choices: [], usage: u }] : []),
          ]);
          const body = streamToJson(s);
          const again = jsonToStream(answer({ json: body }), inc);
          expect(streamedContent(again)).toBe(parts.join(""));
          expect(streamedContent(replayEvents(s, inc))).toBe(parts.join(""));
          // Converting back is stable: the re-rendered stream gives the same body.
          expect(streamToJson(asRecording(s, again))).toEqual({
            ...body,
            ...(inc || !u ? {} : { usage: undefined }),
          });
        },
      ),
    );
  });
});
