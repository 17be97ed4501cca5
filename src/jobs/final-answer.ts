/**
 * A stream request's answer as a job stores it: the final JSON the same request would have got
 * without `stream: true` (chat.completion or text_completion, with its usage and finish_reason),
 * assembled from the event stream the gateway answered with.
 *
 * The bytes are read as Server-Sent Events (the WHATWG rules: lines end in LF, CRLF or CR; a
 * blank line ends an event; `data:` lines join with LF, one leading space dropped; `:` lines are
 * comments), fed in whatever pieces the stream arrives in (a UTF-8 character or a line may span
 * two). The chunks are merged by the response cache's streamToJson (src/cache/render.ts), which
 * already turns a recorded stream into the non-streamed body for a cache hit: deltas, tool calls,
 * logprobs, finish_reason and usage, the same way for a job as for the cache.
 *
 * A stream that broke after it started ends with an error event (`event: error`, the gateway's
 * own, src/errors.ts sseErrorEvent, or a backend's `data: {"error": ...}`): the job then failed
 * with that error, as an error answer (its status from the error's code).
 */
import { StringDecoder } from "node:string_decoder";
import type { CachedEvent } from "../cache/entry.js";
import { streamToJson } from "../cache/render.js";
import type { OpenAIRoute } from "../proxy/routes.js";

export type FinalAnswer =
  | { kind: "complete"; json: Record<string, unknown> }
  | { kind: "error"; status: number; body: Record<string, unknown> };

export class FinalAnswerBuilder {
  private readonly decoder = new StringDecoder("utf8");
  /** The unfinished line carried over from the last piece. */
  private partial = "";
  /** The last piece ended in CR: an LF starting the next one belongs to that line end. */
  private afterCR = false;
  private data: string[] = [];
  private event = "";
  private readonly events: CachedEvent[] = [];
  private error: Record<string, unknown> | undefined;
  /** `data: [DONE]` was seen. */
  done = false;

  constructor(
    private readonly route: OpenAIRoute,
    private readonly model: string,
  ) {}

  push(chunk: Buffer): void {
    this.lines(this.decoder.write(chunk));
  }

  /** The answer, once the stream ended (an unterminated last event counts, as EventSource's does not). */
  end(): FinalAnswer {
    this.lines(this.decoder.end());
    if (this.partial !== "") this.line(this.partial);
    this.partial = "";
    this.dispatch();
    if (this.error) return { kind: "error", status: statusOf(this.error), body: this.error };
    const json = streamToJson({
      v: 1,
      route: this.route,
      model: this.model,
      events: this.events,
      createdAt: Date.now(),
      freshUntil: 0,
      staleUntil: 0,
    });
    return { kind: "complete", json };
  }

  private lines(text: string): void {
    let start = 0;
    if (this.afterCR && text.startsWith("\n")) start = 1;
    this.afterCR = false;
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(this.partial + text.slice(start, i));
      this.partial = "";
      if (c === 13) {
        if (i + 1 === text.length) this.afterCR = true;
        else if (text.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.partial += text.slice(start);
  }

  private line(line: string): void {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
  }

  private dispatch(): void {
    const event = this.event;
    this.event = "";
    if (this.data.length === 0) return;
    const data = this.data.join("\n");
    this.data = [];
    if (data === "[DONE]") {
      this.done = true;
      return;
    }
    const parsed = parseObject(data);
    if (event === "error" || (parsed !== undefined && parsed.error !== undefined && !("choices" in parsed))) {
      // The first error ends the answer: what follows it cannot make it whole.
      this.error ??= errorBody(parsed);
      return;
    }
    this.events.push({ data, at: 0 });
  }
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return value !== null && typeof value === "object" && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** An OpenAI-shaped error body from an error event, whatever it held. */
function errorBody(parsed: Record<string, unknown> | undefined): Record<string, unknown> {
  const error = parsed?.error;
  if (error !== null && typeof error === "object") return { error };
  return {
    error: {
      message: typeof error === "string" ? error : "The stream ended with an error.",
      type: "server_error",
      code: "upstream_bad_response",
      param: null,
    },
  };
}

/**
 * The status the error stands for: a numeric code is one (vLLM sends `"code": 400`); the
 * gateway's upstream timeouts are 504; any other failure after the stream started is a 502.
 */
function statusOf(body: Record<string, unknown>): number {
  const error = body.error as Record<string, unknown>;
  const code = error.code;
  if (typeof code === "number" && Number.isInteger(code) && code >= 400 && code <= 599) return code;
  if (typeof code === "string" && /^upstream_.*_timeout$/.test(code)) return 504;
  return 502;
}
