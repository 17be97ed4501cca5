/**
 * What the simulated model "says": a deterministic stream of words and punctuation.
 *
 * A request's text is a pure function of (server seed, model, prompt, max tokens, request seed)
 * when the request asks for determinism (temperature 0 or an explicit seed), as a real server is
 * close to deterministic there and a gateway's response cache relies on it. Otherwise the
 * server's request counter is mixed in so repeated sampling requests differ.
 */

import { createRng, hashString, mixSeeds, type Rng } from "./rng.js";
import { WORDS } from "./words.js";

export type FinishReason = "stop" | "length";

export interface GenerationInput {
  serverSeed: number;
  model: string;
  /** Canonical text of the prompt (e.g. JSON of the messages). */
  promptKey: string;
  /** max_tokens / max_completion_tokens when the request set it. */
  maxTokens: number | undefined;
  /** The request's own `seed` field. */
  requestSeed: number | undefined;
  /** temperature 0 or a request seed. */
  deterministic: boolean;
  /** Per-server request number, used only when not deterministic. */
  requestCounter: number;
  outputTokensMin: number;
  outputTokensMax: number;
}

export interface Generation {
  /** How many tokens the sequence will produce. */
  readonly outputTokens: number;
  /** "length" when max_tokens cut the answer, "stop" when the model "chose" to end. */
  readonly finishReason: FinishReason;
  /** Text delta of the next token (leading space included where one belongs). */
  nextToken(): string;
}

const COMMA_PROBABILITY = 0.06;
const PERIOD_PROBABILITY = 0.07;
const NO_MAX_TOKENS = 0xffffffff;

export function generationSeed(input: GenerationInput): number {
  return mixSeeds(
    input.serverSeed,
    hashString(input.model),
    hashString(input.promptKey),
    input.maxTokens ?? NO_MAX_TOKENS,
    input.requestSeed ?? 0,
    input.deterministic ? 0 : input.requestCounter + 1,
  );
}

function capitalize(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

function pickWord(rng: Rng): string {
  return WORDS[rng.int(0, WORDS.length - 1)] ?? "the";
}

export function startGeneration(input: GenerationInput): Generation {
  const rng = createRng(generationSeed(input));
  // The length is drawn even when max_tokens decides it, so the word stream does not depend on
  // whether the caller set max_tokens to the value the distribution would have picked anyway.
  const drawn = rng.int(input.outputTokensMin, input.outputTokensMax);
  const outputTokens = input.maxTokens ?? drawn;
  const finishReason: FinishReason = input.maxTokens === undefined ? "stop" : "length";
  let index = 0;
  let sentenceStart = true;
  let afterPunctuation = true;
  return {
    outputTokens,
    finishReason,
    nextToken() {
      const i = index++;
      // A natural stop ends its sentence, as models do.
      if (finishReason === "stop" && i === outputTokens - 1 && i > 0 && !afterPunctuation) return ".";
      if (!afterPunctuation) {
        const roll = rng.next();
        if (roll < PERIOD_PROBABILITY) {
          afterPunctuation = true;
          sentenceStart = true;
          return ".";
        }
        if (roll < PERIOD_PROBABILITY + COMMA_PROBABILITY) {
          afterPunctuation = true;
          return ",";
        }
      }
      const word = sentenceStart ? capitalize(pickWord(rng)) : pickWord(rng);
      sentenceStart = false;
      afterPunctuation = false;
      return i === 0 ? word : ` ${word}`;
    },
  };
}

/** The whole answer at once, for the zero-latency path. */
export function generateAll(generation: Generation): string {
  let text = "";
  for (let i = 0; i < generation.outputTokens; i++) text += generation.nextToken();
  return text;
}
