/**
 * A deterministic stand-in tokenizer, shared by the simulator (usage numbers) and the gateway
 * (token estimates for budgets and admission), so both sides agree on what a request costs.
 *
 * A token is one of:
 *   - one Han, Hiragana or Katakana character (real BPE vocabularies spend roughly one token per
 *     CJK character, so counting a whole run as one word would undercount by an order of magnitude);
 *   - a run of other letters, combining marks, digits and underscores ("word");
 *   - any other single non-space character (punctuation, symbols, emoji).
 * Whitespace is never a token. English text comes out at about 0.75-0.8 of what a real BPE tokenizer
 * counts; callers that need a safety margin should apply it themselves.
 *
 * Chat prompts follow the accounting in OpenAI's cookbook ("How to count tokens with tiktoken"):
 * every message costs MESSAGE_OVERHEAD_TOKENS for its role and delimiters, +NAME_OVERHEAD_TOKENS when
 * it carries a `name`, and the reply is primed with REPLY_PRIMING_TOKENS. An image part costs
 * IMAGE_PART_TOKENS, OpenAI's price of a low-detail image.
 */

const CJK = "\\p{Script=Han}\\p{Script=Hiragana}\\p{Script=Katakana}";
const WORD_CHAR = "[\\p{L}\\p{M}\\p{N}_]";
const TOKEN_SOURCE = `[${CJK}]|(?:(?![${CJK}])${WORD_CHAR})+|[^\\s\\p{L}\\p{M}\\p{N}_]`;

export const MESSAGE_OVERHEAD_TOKENS = 3;
export const NAME_OVERHEAD_TOKENS = 1;
export const REPLY_PRIMING_TOKENS = 3;
export const IMAGE_PART_TOKENS = 85;

/** A fresh RegExp per call keeps the functions re-entrant: a shared /g regex carries lastIndex. */
function tokenRegExp(): RegExp {
  return new RegExp(TOKEN_SOURCE, "gu");
}

export function tokenize(text: string): string[] {
  return text.match(tokenRegExp()) ?? [];
}

export function countTokens(text: string): number {
  if (text.length === 0) return 0;
  const re = tokenRegExp();
  let count = 0;
  while (re.exec(text) !== null) count++;
  return count;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Message `content`: a string, null (assistant turns with tool calls), or an array of parts. */
function countContentTokens(content: unknown): number {
  if (typeof content === "string") return countTokens(content);
  if (!Array.isArray(content)) return 0;
  let total = 0;
  for (const part of content) {
    if (typeof part === "string") total += countTokens(part);
    else if (isRecord(part)) {
      if (typeof part.text === "string") total += countTokens(part.text);
      else if (part.type === "image_url" || part.type === "image") total += IMAGE_PART_TOKENS;
    }
  }
  return total;
}

function countMessageTokens(message: unknown): number {
  if (!isRecord(message)) return MESSAGE_OVERHEAD_TOKENS;
  let total = MESSAGE_OVERHEAD_TOKENS + countContentTokens(message.content);
  if (typeof message.name === "string") total += NAME_OVERHEAD_TOKENS + countTokens(message.name);
  if (Array.isArray(message.tool_calls)) {
    for (const call of message.tool_calls) {
      if (!isRecord(call) || !isRecord(call.function)) continue;
      const fn = call.function;
      if (typeof fn.name === "string") total += countTokens(fn.name);
      if (typeof fn.arguments === "string") total += countTokens(fn.arguments);
    }
  }
  return total;
}

/**
 * Tokens of a completions `prompt` or embeddings `input`: a string, an array of strings, an array
 * of token ids, or an array of arrays of token ids (the four shapes OpenAI accepts).
 */
export function countInputTokens(input: unknown): number {
  if (typeof input === "string") return countTokens(input);
  if (!Array.isArray(input)) return 0;
  let total = 0;
  for (const item of input) {
    if (typeof item === "string") total += countTokens(item);
    else if (typeof item === "number") total += 1;
    else if (Array.isArray(item)) total += item.length;
  }
  return total;
}

/**
 * Prompt tokens of a parsed OpenAI request body: chat `messages` (plus `tools` definitions, which
 * the model also reads), else completions `prompt`, else embeddings `input`. Never throws.
 */
export function countPromptTokens(body: unknown): number {
  if (!isRecord(body)) return 0;
  if (Array.isArray(body.messages)) {
    let total = REPLY_PRIMING_TOKENS;
    for (const message of body.messages) total += countMessageTokens(message);
    if (Array.isArray(body.tools) && body.tools.length > 0) total += countTokens(JSON.stringify(body.tools));
    return total;
  }
  if (body.prompt !== undefined) return countInputTokens(body.prompt);
  return countInputTokens(body.input);
}
