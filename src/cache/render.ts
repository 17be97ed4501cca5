/**
 * Renders a cached answer in the form the client asked for, whichever form it was stored in:
 * a recorded stream as one JSON body (streamToJson), a JSON body as a stream (jsonToStream),
 * and a recorded stream replayed with or without its usage chunk (replayEvents).
 *
 * Rules, so that a client cannot tell a cache hit from the backend:
 * - Chunk and body shapes are OpenAI's: `chat.completion` / `chat.completion.chunk` for chat,
 *   `text_completion` for both forms of completions; `logprobs: null` where there are none.
 * - Joining the stream's pieces gives back exactly the stored strings (content, refusal,
 *   reasoning_content, text, tool-call arguments): pieces are cut only where whitespace meets
 *   a non-space, and each piece keeps its trailing whitespace, so nothing is added or lost and
 *   no piece splits a surrogate pair.
 * - Usage: a stream carries it (as OpenAI does: `"usage": null` on each chunk, then a last
 *   chunk with `choices: []` and the totals) only when the client asked
 *   (stream_options.include_usage); a JSON body always carries it when it is known. The recorded
 *   usage wins; `answer.usage` fills in when the recording has none.
 * - Garbage in a recording (a payload that is not a JSON object, a stray "[DONE]") is skipped,
 *   not fatal: the rest of the answer is still good.
 * - Keys read from recorded JSON go into Maps or Object.fromEntries, never `obj[key] = …`, so a
 *   "__proto__" key is data and cannot reach a prototype.
 * - A JSON body's empty `tool_calls: []` (vLLM sends one) has no stream form; a stream without
 *   tool-call deltas gives a message without `tool_calls`, as OpenAI's non-streamed answers do.
 */
import { type CachedAnswer, type CachedUsage, isRecord } from "./entry.js";

type Json = Record<string, unknown>;

function isCompletions(answer: CachedAnswer): boolean {
  return answer.route === "/v1/completions";
}

function parseObject(payload: string): Json | undefined {
  try {
    const v: unknown = JSON.parse(payload);
    return isRecord(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

function isUsageOnly(chunk: Json): boolean {
  return Array.isArray(chunk.choices) && chunk.choices.length === 0 && isRecord(chunk.usage);
}

/** Splits where whitespace is followed by a non-space; the pieces join back to `s` exactly. */
export function splitWords(s: string): string[] {
  if (s === "") return [];
  return s.split(/(?<=\s)(?=\S)/u);
}

interface ToolCallAcc {
  id?: string;
  type?: string;
  name?: string;
  args: string;
}

interface ChoiceAcc {
  index: number;
  /** Chat: message fields other than tool_calls, in the order first seen. */
  fields: Map<string, unknown>;
  toolCalls: Map<number, ToolCallAcc>;
  /** Completions: the concatenated text. */
  text: string;
  logprobs: Map<string, unknown> | undefined;
  finishReason: unknown;
  /** vLLM's stop_reason (the stop string or token id that ended the answer), when sent. */
  stopReason: unknown;
  sawStopReason: boolean;
}

/**
 * The non-streamed body equivalent to a recorded stream. Without events, the stored JSON body
 * is returned as it is.
 */
export function streamToJson(answer: CachedAnswer): Record<string, unknown> {
  if (answer.events === undefined) return answer.json ?? {};
  const text = isCompletions(answer);
  let head: Json | undefined;
  let usage: Json | undefined;
  let fingerprint: unknown;
  let sawFingerprint = false;
  const choices = new Map<number, ChoiceAcc>();

  for (const event of answer.events) {
    const chunk = parseObject(event.data);
    if (chunk === undefined) continue;
    head ??= chunk;
    if (isRecord(chunk.usage)) usage = chunk.usage;
    if (Object.hasOwn(chunk, "system_fingerprint")) {
      // The first non-null one; null only when no chunk had a value.
      if (!sawFingerprint || fingerprint === null) fingerprint = chunk.system_fingerprint;
      sawFingerprint = true;
    }
    if (!Array.isArray(chunk.choices)) continue;
    for (const [position, choice] of chunk.choices.entries()) {
      if (!isRecord(choice)) continue;
      const index = typeof choice.index === "number" ? choice.index : position;
      let acc = choices.get(index);
      if (acc === undefined) {
        acc = {
          index,
          fields: new Map(),
          toolCalls: new Map(),
          text: "",
          logprobs: undefined,
          finishReason: null,
          stopReason: null,
          sawStopReason: false,
        };
        choices.set(index, acc);
      }
      if (text) {
        if (typeof choice.text === "string") acc.text += choice.text;
      } else if (isRecord(choice.delta)) {
        mergeDelta(acc, choice.delta);
      }
      if (isRecord(choice.logprobs)) acc.logprobs = mergeLogprobs(acc.logprobs, choice.logprobs);
      if (choice.finish_reason !== undefined && choice.finish_reason !== null) {
        acc.finishReason = choice.finish_reason;
      }
      if (Object.hasOwn(choice, "stop_reason")) {
        if (choice.stop_reason !== null || !acc.sawStopReason) acc.stopReason = choice.stop_reason;
        acc.sawStopReason = true;
      }
    }
  }

  const out: [string, unknown][] = [
    ["id", typeof head?.id === "string" ? head.id : ""],
    ["object", text ? "text_completion" : "chat.completion"],
    ["created", typeof head?.created === "number" ? head.created : Math.floor(answer.createdAt / 1000)],
    ["model", typeof head?.model === "string" ? head.model : answer.model],
    [
      "choices",
      [...choices.values()].sort((a, b) => a.index - b.index).map((acc) => renderChoice(acc, text)),
    ],
  ];
  const finalUsage = usage ?? answer.usage;
  if (finalUsage !== undefined) out.push(["usage", finalUsage]);
  if (sawFingerprint) out.push(["system_fingerprint", fingerprint]);
  return Object.fromEntries(out);
}

function mergeDelta(acc: ChoiceAcc, delta: Json): void {
  for (const [key, value] of Object.entries(delta)) {
    if (key === "tool_calls") {
      if (Array.isArray(value)) mergeToolCalls(acc, value);
      continue;
    }
    if (key === "role") {
      // Sent once, on the first chunk; a repeat must not change it.
      if (typeof value === "string" && !acc.fields.has("role")) acc.fields.set("role", value);
      continue;
    }
    const prev = acc.fields.get(key);
    if (typeof value === "string") acc.fields.set(key, typeof prev === "string" ? prev + value : value);
    else if (value === null) {
      // `"content": null` beside a tool call must not erase text already received.
      if (!acc.fields.has(key)) acc.fields.set(key, null);
    } else if (value !== undefined) acc.fields.set(key, value);
  }
}

function mergeToolCalls(acc: ChoiceAcc, calls: readonly unknown[]): void {
  for (const [position, call] of calls.entries()) {
    if (!isRecord(call)) continue;
    const index = typeof call.index === "number" ? call.index : position;
    let t = acc.toolCalls.get(index);
    if (t === undefined) {
      t = { args: "" };
      acc.toolCalls.set(index, t);
    }
    // id, type and name come once, on a call's first delta; only the arguments are streamed.
    if (typeof call.id === "string" && call.id !== "") t.id ??= call.id;
    if (typeof call.type === "string" && call.type !== "") t.type ??= call.type;
    if (isRecord(call.function)) {
      const { name, arguments: args } = call.function;
      if (typeof name === "string" && name !== "") t.name ??= name;
      if (typeof args === "string") t.args += args;
    }
  }
}

/** Token lists (content, tokens, token_logprobs, top_logprobs, text_offset…) are concatenated. */
function mergeLogprobs(prev: Map<string, unknown> | undefined, next: Json): Map<string, unknown> {
  const acc = prev ?? new Map<string, unknown>();
  for (const [key, value] of Object.entries(next)) {
    const old = acc.get(key);
    if (Array.isArray(value) && Array.isArray(old)) acc.set(key, [...old, ...value]);
    else if (value !== null || !acc.has(key)) acc.set(key, value);
  }
  return acc;
}

function renderChoice(acc: ChoiceAcc, text: boolean): Json {
  const out: [string, unknown][] = [["index", acc.index]];
  if (text) {
    out.push(["text", acc.text]);
  } else {
    const role = acc.fields.get("role");
    const content = acc.fields.get("content");
    const message: [string, unknown][] = [
      ["role", typeof role === "string" ? role : "assistant"],
      ["content", content === undefined ? null : content],
    ];
    for (const [key, value] of acc.fields) {
      if (key !== "role" && key !== "content") message.push([key, value]);
    }
    if (acc.toolCalls.size > 0) {
      const calls = [...acc.toolCalls.entries()]
        .sort(([a], [b]) => a - b)
        .map(([, t]) => {
          const call: [string, unknown][] = [];
          if (t.id !== undefined) call.push(["id", t.id]);
          call.push(["type", t.type ?? "function"]);
          call.push(["function", { name: t.name ?? "", arguments: t.args }]);
          return Object.fromEntries(call);
        });
      message.push(["tool_calls", calls]);
    }
    out.push(["message", Object.fromEntries(message)]);
  }
  out.push(["logprobs", acc.logprobs === undefined ? null : Object.fromEntries(acc.logprobs)]);
  out.push(["finish_reason", acc.finishReason]);
  if (acc.sawStopReason) out.push(["stop_reason", acc.stopReason]);
  return Object.fromEntries(out);
}

/** What every chunk of one rendered stream shares. */
interface Envelope {
  id: string;
  object: string;
  created: number;
  model: string;
  fingerprint: { value: unknown } | undefined;
}

function chunkOf(env: Envelope, choices: unknown[], usage: unknown): string {
  const out: [string, unknown][] = [
    ["id", env.id],
    ["object", env.object],
    ["created", env.created],
    ["model", env.model],
  ];
  if (env.fingerprint !== undefined) out.push(["system_fingerprint", env.fingerprint.value]);
  out.push(["choices", choices]);
  if (usage !== undefined) out.push(["usage", usage]);
  return JSON.stringify(Object.fromEntries(out));
}

/**
 * The SSE payloads (each written as `data: ${payload}\n\n`, then `data: [DONE]\n\n` by the
 * caller) of a stream equivalent to the stored JSON body. Without a JSON body, the recorded
 * events are replayed instead. Embeddings have no stream form (a RangeError: a caller bug).
 */
export function jsonToStream(answer: CachedAnswer, includeUsage: boolean): string[] {
  if (answer.route === "/v1/embeddings") throw new RangeError("embeddings have no stream form");
  const body = answer.json;
  if (body === undefined) return replayEvents(answer, includeUsage);
  const text = isCompletions(answer);
  const env: Envelope = {
    id: typeof body.id === "string" ? body.id : "",
    object: text ? "text_completion" : "chat.completion.chunk",
    created: typeof body.created === "number" ? body.created : Math.floor(answer.createdAt / 1000),
    model: typeof body.model === "string" ? body.model : answer.model,
    fingerprint: Object.hasOwn(body, "system_fingerprint") ? { value: body.system_fingerprint } : undefined,
  };
  // OpenAI marks every chunk with "usage": null when usage was asked for.
  const perChunkUsage = includeUsage ? null : undefined;
  const out: string[] = [];
  const choices = (Array.isArray(body.choices) ? body.choices : []).filter(isRecord);
  for (const [position, choice] of choices.entries()) {
    const index = typeof choice.index === "number" ? choice.index : position;
    const step = (fields: [string, unknown][]) => {
      const c = Object.fromEntries([["index", index], ...fields]);
      out.push(chunkOf(env, [c], perChunkUsage));
    };
    const final: [string, unknown][] = [];
    if (text) {
      for (const piece of splitWords(typeof choice.text === "string" ? choice.text : "")) {
        step([
          ["text", piece],
          ["logprobs", null],
          ["finish_reason", null],
        ]);
      }
      final.push(["text", ""]);
    } else {
      for (const delta of chatDeltas(isRecord(choice.message) ? choice.message : {})) {
        step([
          ["delta", delta],
          ["logprobs", null],
          ["finish_reason", null],
        ]);
      }
      final.push(["delta", {}]);
    }
    final.push(["logprobs", choice.logprobs ?? null], ["finish_reason", choice.finish_reason ?? null]);
    if (Object.hasOwn(choice, "stop_reason")) final.push(["stop_reason", choice.stop_reason]);
    step(final);
  }
  if (includeUsage) {
    const usage = isRecord(body.usage) ? body.usage : answer.usage;
    if (usage !== undefined) out.push(chunkOf(env, [], usage));
  }
  return out;
}

/**
 * The deltas of one chat message: first the role, with `content: ""` (null when the message has
 * no text, e.g. only tool calls) and every field that is not streamable text (null, "", objects,
 * arrays); then each text field in pieces, in the message's field order; then one delta per
 * tool call with its whole arguments string (clients concatenate, one piece is a valid stream).
 */
function chatDeltas(message: Json): Json[] {
  const first: [string, unknown][] = [
    ["role", typeof message.role === "string" ? message.role : "assistant"],
    ["content", typeof message.content === "string" ? "" : null],
  ];
  const pieces: Json[] = [];
  for (const [key, value] of Object.entries(message)) {
    if (key === "role" || key === "tool_calls") continue;
    if (typeof value === "string") {
      for (const piece of splitWords(value)) pieces.push(Object.fromEntries([[key, piece]]));
      if (value === "" && key !== "content") first.push([key, ""]);
    } else if (key !== "content" && value !== undefined) {
      first.push([key, value]);
    }
  }
  const deltas: Json[] = [Object.fromEntries(first), ...pieces];
  const calls = Array.isArray(message.tool_calls) ? message.tool_calls : [];
  for (const [index, call] of calls.entries()) {
    if (!isRecord(call)) continue;
    const fn = isRecord(call.function) ? call.function : {};
    const delta: [string, unknown][] = [["index", index]];
    if (typeof call.id === "string") delta.push(["id", call.id]);
    delta.push(["type", typeof call.type === "string" ? call.type : "function"]);
    delta.push([
      "function",
      {
        name: typeof fn.name === "string" ? fn.name : "",
        arguments: typeof fn.arguments === "string" ? fn.arguments : "",
      },
    ]);
    deltas.push({ tool_calls: [Object.fromEntries(delta)] });
  }
  return deltas;
}

/**
 * The recorded payloads for a streaming client: the usage-only chunk is dropped when the client
 * did not ask for usage (the gateway asks the backend for it on every stream), and one is added
 * from `answer.usage` when the client asked and the recording has none. Without events, the
 * stored JSON body is rendered as a stream instead.
 */
export function replayEvents(answer: CachedAnswer, includeUsage: boolean): string[] {
  if (answer.events === undefined) return jsonToStream(answer, includeUsage);
  const out: string[] = [];
  let head: Json | undefined;
  let sawUsageChunk = false;
  for (const { data } of answer.events) {
    // The caller writes the one [DONE]; a recorded one would end the stream twice.
    if (data.trim() === "[DONE]") continue;
    // Parse only what can be the usage chunk (and the first chunk, for the envelope).
    if (head === undefined || data.includes('"usage"')) {
      const chunk = parseObject(data);
      if (chunk !== undefined) {
        head ??= chunk;
        if (isUsageOnly(chunk)) {
          sawUsageChunk = true;
          if (!includeUsage) continue;
        }
      }
    }
    out.push(data);
  }
  if (includeUsage && !sawUsageChunk && answer.usage !== undefined) {
    out.push(usageChunk(answer, head, answer.usage));
  }
  return out;
}

function usageChunk(answer: CachedAnswer, head: Json | undefined, usage: CachedUsage): string {
  const env: Envelope = {
    id: typeof head?.id === "string" ? head.id : "",
    object:
      typeof head?.object === "string"
        ? head.object
        : isCompletions(answer)
          ? "text_completion"
          : "chat.completion.chunk",
    created: typeof head?.created === "number" ? head.created : Math.floor(answer.createdAt / 1000),
    model: typeof head?.model === "string" ? head.model : answer.model,
    fingerprint:
      head !== undefined && Object.hasOwn(head, "system_fingerprint")
        ? { value: head.system_fingerprint }
        : undefined,
  };
  return chunkOf(env, [], usage);
}
