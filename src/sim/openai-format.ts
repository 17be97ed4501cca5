/**
 * OpenAI response bodies and stream chunks, field for field as api.openai.com sends them, so
 * clients (and the gateway's usage extraction and stream replay) see the real shapes.
 */

import type { FinishReason } from "./text-generator.js";

export type GenerationKind = "chat" | "completion";

export interface ResponseMeta {
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export const SSE_DONE = "data: [DONE]\n\n";

export function sseEvent(payload: unknown): string {
  return `data: ${JSON.stringify(payload)}\n\n`;
}

export function usageOf(promptTokens: number, completionTokens: number): Usage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  };
}

export function completionBody(
  kind: GenerationKind,
  meta: ResponseMeta,
  text: string,
  finishReason: FinishReason,
  usage: Usage,
): unknown {
  if (kind === "chat") {
    return {
      id: meta.id,
      object: "chat.completion",
      created: meta.created,
      model: meta.model,
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: text, refusal: null },
          logprobs: null,
          finish_reason: finishReason,
        },
      ],
      usage,
      system_fingerprint: null,
    };
  }
  return {
    id: meta.id,
    object: "text_completion",
    created: meta.created,
    model: meta.model,
    choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason }],
    usage,
    system_fingerprint: null,
  };
}

interface ChatDelta {
  role?: "assistant";
  content?: string;
  refusal?: null;
}

/**
 * One stream chunk. With include_usage OpenAI puts `"usage": null` on every chunk but the last,
 * which carries the totals and no choices.
 */
function chunk(kind: GenerationKind, meta: ResponseMeta, choice: unknown, withUsage: boolean): unknown {
  const base = {
    id: meta.id,
    object: kind === "chat" ? "chat.completion.chunk" : "text_completion",
    created: meta.created,
    model: meta.model,
    system_fingerprint: null,
    choices: [choice],
  };
  return withUsage ? { ...base, usage: null } : base;
}

function chatChoice(delta: ChatDelta, finishReason: FinishReason | null): unknown {
  return { index: 0, delta, logprobs: null, finish_reason: finishReason };
}

function textChoice(text: string, finishReason: FinishReason | null): unknown {
  return { index: 0, text, logprobs: null, finish_reason: finishReason };
}

/**
 * Turns the token events of one generation into SSE events, handed to `write` one at a time so
 * the caller can put each on the wire the moment it exists.
 */
export class StreamEncoder {
  constructor(
    private readonly kind: GenerationKind,
    private readonly meta: ResponseMeta,
    private readonly includeUsage: boolean,
    private readonly write: (event: string) => void,
  ) {}

  token(index: number, delta: string): void {
    if (this.kind === "chat") {
      // OpenAI opens every chat stream with the role, on its own chunk.
      if (index === 0) {
        this.write(
          sseEvent(
            chunk(
              "chat",
              this.meta,
              chatChoice({ role: "assistant", content: "", refusal: null }, null),
              this.includeUsage,
            ),
          ),
        );
      }
      this.write(sseEvent(chunk("chat", this.meta, chatChoice({ content: delta }, null), this.includeUsage)));
      return;
    }
    this.write(sseEvent(chunk("completion", this.meta, textChoice(delta, null), this.includeUsage)));
  }

  finish(finishReason: FinishReason, usage: Usage): void {
    const last = this.kind === "chat" ? chatChoice({}, finishReason) : textChoice("", finishReason);
    this.write(sseEvent(chunk(this.kind, this.meta, last, this.includeUsage)));
    if (this.includeUsage) {
      this.write(
        sseEvent({
          id: this.meta.id,
          object: this.kind === "chat" ? "chat.completion.chunk" : "text_completion",
          created: this.meta.created,
          model: this.meta.model,
          system_fingerprint: null,
          choices: [],
          usage,
        }),
      );
    }
    this.write(SSE_DONE);
  }
}

export function embeddingsBody(
  model: string,
  vectors: readonly (number[] | string)[],
  promptTokens: number,
): unknown {
  return {
    object: "list",
    data: vectors.map((embedding, index) => ({ object: "embedding", index, embedding })),
    model,
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  };
}

export function modelCard(id: string, created: number, maxModelLen: number): unknown {
  return {
    id,
    object: "model",
    created,
    owned_by: "floodgate-sim",
    root: id,
    parent: null,
    max_model_len: maxModelLen,
  };
}

export function modelsBody(models: readonly string[], created: number, maxModelLen: number): unknown {
  return { object: "list", data: models.map((id) => modelCard(id, created, maxModelLen)) };
}
