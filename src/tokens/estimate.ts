/**
 * What a request may cost in LLM tokens before it runs: its prompt (counted with the shared
 * tokenizer) plus the most it may generate, max_completion_tokens or max_tokens (times `n`
 * choices), or `defaultMaxTokens` when it sets neither. Embeddings generate nothing.
 */
import { countPromptTokens } from "./tokenizer.js";

export interface TokenEstimate {
  prompt: number;
  completion: number;
  total: number;
  /** The request set no max_tokens: `completion` is the gateway's default, not the client's number. */
  defaulted: boolean;
}

export function estimateTokens(
  route: string,
  body: Record<string, unknown>,
  defaultMaxTokens: number,
): TokenEstimate {
  const prompt = countPromptTokens(body);
  if (route.endsWith("/embeddings")) return { prompt, completion: 0, total: prompt, defaulted: false };
  const asked = positive(body.max_completion_tokens) ?? positive(body.max_tokens);
  const choices = positive(body.n) ?? 1;
  const completion = (asked ?? defaultMaxTokens) * choices;
  return { prompt, completion, total: prompt + completion, defaulted: asked === undefined };
}

function positive(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) && value > 0 ? Math.floor(value) : undefined;
}

/** `usage.total_tokens` (or prompt + completion) of an OpenAI answer, if it has one. */
export function usageTotal(usage: unknown): number | undefined {
  if (usage === null || typeof usage !== "object") return undefined;
  const u = usage as { total_tokens?: unknown; prompt_tokens?: unknown; completion_tokens?: unknown };
  if (typeof u.total_tokens === "number") return u.total_tokens;
  if (typeof u.prompt_tokens === "number") {
    return u.prompt_tokens + (typeof u.completion_tokens === "number" ? u.completion_tokens : 0);
  }
  return undefined;
}
