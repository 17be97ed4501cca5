/**
 * Validation of OpenAI request bodies into what the simulator needs. Errors use OpenAI's
 * wording and codes where OpenAI has them, and vLLM's context-length message where it does.
 */

import { countInputTokens, countPromptTokens } from "../tokens/tokenizer.js";
import type { OpenAIErrorSpec } from "./http-io.js";
import type { GenerationKind } from "./openai-format.js";

export interface GenerationRequest {
  kind: GenerationKind;
  model: string;
  promptTokens: number;
  /** Canonical prompt text, input to the deterministic text generator. */
  promptKey: string;
  maxTokens: number | undefined;
  stream: boolean;
  includeUsage: boolean;
  deterministic: boolean;
  requestSeed: number | undefined;
  /** vLLM's priority field (lower is served first); 0 when absent. */
  priority: number;
}

export type EmbeddingEncoding = "float" | "base64";

export interface EmbeddingsRequest {
  model: string;
  inputs: string[];
  promptTokens: number;
  dimensions: number;
  encoding: EmbeddingEncoding;
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: OpenAIErrorSpec };

export const DEFAULT_EMBEDDING_DIMENSIONS = 256;
const MAX_EMBEDDING_DIMENSIONS = 8192;

type Body = Record<string, unknown>;

function invalid(message: string, param: string | null = null): { ok: false; error: OpenAIErrorSpec } {
  return { ok: false, error: { status: 400, message, type: "invalid_request_error", param, code: null } };
}

function isRecord(value: unknown): value is Body {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isPositiveInt(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 1;
}

function resolveModel(body: Body, models: readonly string[]): Parsed<string> {
  const model = body.model ?? models[0];
  if (typeof model !== "string") return invalid("model must be a string", "model");
  if (!models.includes(model)) {
    return {
      ok: false,
      error: {
        status: 404,
        message: `The model \`${model}\` does not exist or you do not have access to it.`,
        type: "invalid_request_error",
        param: null,
        code: "model_not_found",
      },
    };
  }
  return { ok: true, value: model };
}

function validMessages(messages: unknown): boolean {
  return (
    Array.isArray(messages) &&
    messages.length > 0 &&
    messages.every((m) => isRecord(m) && typeof m.role === "string")
  );
}

function validPrompt(prompt: unknown): boolean {
  if (typeof prompt === "string") return true;
  if (!Array.isArray(prompt) || prompt.length === 0) return false;
  if (prompt.every((p) => typeof p === "number")) return true;
  // One prompt per request: batched prompts would need one choice each.
  return prompt.length === 1 && (typeof prompt[0] === "string" || Array.isArray(prompt[0]));
}

export function parseGenerationRequest(
  kind: GenerationKind,
  body: unknown,
  models: readonly string[],
  maxModelLen: number,
  priorityScheduling = false,
): Parsed<GenerationRequest> {
  if (!isRecord(body)) return invalid("request body must be a JSON object");
  const model = resolveModel(body, models);
  if (!model.ok) return model;

  let promptKey: string;
  if (kind === "chat") {
    if (!validMessages(body.messages)) {
      return invalid("messages must be a non-empty array of objects with a role", "messages");
    }
    promptKey = JSON.stringify(body.messages);
  } else {
    if (!validPrompt(body.prompt)) {
      return invalid("prompt must be a string, a token array, or a one-element array of either", "prompt");
    }
    promptKey = typeof body.prompt === "string" ? body.prompt : JSON.stringify(body.prompt);
  }

  const rawMax = body.max_completion_tokens ?? body.max_tokens;
  if (rawMax !== undefined && rawMax !== null && !isPositiveInt(rawMax)) {
    return invalid("max_tokens must be a positive integer", "max_tokens");
  }
  const maxTokens = isPositiveInt(rawMax) ? rawMax : undefined;

  if (body.n !== undefined && body.n !== null && body.n !== 1) {
    return invalid("the simulator serves n = 1 only", "n");
  }
  const temperature = body.temperature;
  if (temperature !== undefined && temperature !== null && typeof temperature !== "number") {
    return invalid("temperature must be a number", "temperature");
  }
  const seed = body.seed;
  if (seed !== undefined && seed !== null && !(typeof seed === "number" && Number.isInteger(seed))) {
    return invalid("seed must be an integer", "seed");
  }
  const requestSeed = typeof seed === "number" ? seed : undefined;
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== "boolean") {
    return invalid("stream must be a boolean", "stream");
  }
  const stream = body.stream === true;
  const includeUsage = stream && isRecord(body.stream_options) && body.stream_options.include_usage === true;

  const priority = body.priority ?? 0;
  if (priority !== 0 && !priorityScheduling) {
    return invalid(
      `Got priority ${JSON.stringify(priority)} but Priority scheduling is not enabled.`,
      "priority",
    );
  }
  if (typeof priority !== "number" || !Number.isInteger(priority)) {
    return invalid("priority must be an integer", "priority");
  }

  const promptTokens = countPromptTokens(body);
  const requested = promptTokens + (maxTokens ?? 0);
  if (requested > maxModelLen) {
    return invalid(
      `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${requested} tokens ` +
        `(${promptTokens} in the messages, ${maxTokens ?? 0} in the completion). ` +
        "Please reduce the length of the messages or completion.",
      "messages",
    );
  }

  return {
    ok: true,
    value: {
      kind,
      model: model.value,
      promptTokens,
      promptKey,
      maxTokens,
      stream,
      includeUsage,
      deterministic: temperature === 0 || requestSeed !== undefined,
      requestSeed,
      priority,
    },
  };
}

function embeddingInputs(input: unknown): string[] | null {
  if (typeof input === "string") return [input];
  if (!Array.isArray(input) || input.length === 0) return null;
  if (input.every((i) => typeof i === "number")) return [input.join(" ")];
  const out: string[] = [];
  for (const item of input) {
    if (typeof item === "string") out.push(item);
    else if (Array.isArray(item) && item.every((i) => typeof i === "number")) out.push(item.join(" "));
    else return null;
  }
  return out;
}

export function parseEmbeddingsRequest(body: unknown, models: readonly string[]): Parsed<EmbeddingsRequest> {
  if (!isRecord(body)) return invalid("request body must be a JSON object");
  const model = resolveModel(body, models);
  if (!model.ok) return model;
  const inputs = embeddingInputs(body.input);
  if (inputs === null) {
    return invalid("input must be a string, an array of strings, or token arrays", "input");
  }
  const dimensions = body.dimensions ?? DEFAULT_EMBEDDING_DIMENSIONS;
  if (!isPositiveInt(dimensions) || dimensions > MAX_EMBEDDING_DIMENSIONS) {
    return invalid(`dimensions must be an integer between 1 and ${MAX_EMBEDDING_DIMENSIONS}`, "dimensions");
  }
  const encoding = body.encoding_format ?? "float";
  if (encoding !== "float" && encoding !== "base64") {
    return invalid("encoding_format must be float or base64", "encoding_format");
  }
  return {
    ok: true,
    value: {
      model: model.value,
      inputs,
      promptTokens: countInputTokens(body.input),
      dimensions,
      encoding,
    },
  };
}
