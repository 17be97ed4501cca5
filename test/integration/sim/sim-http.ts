/** Real-HTTP helpers for the simulator's integration tests (undici, no mocks). */
import { type Dispatcher, request } from "undici";

export interface JsonResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
  text: string;
}

export async function call(
  url: string,
  options: { method?: Dispatcher.HttpMethod; body?: unknown; raw?: string; signal?: AbortSignal } = {},
): Promise<JsonResponse> {
  const payload = options.raw ?? (options.body === undefined ? undefined : JSON.stringify(options.body));
  const res = await request(url, {
    method: options.method ?? (payload === undefined ? "GET" : "POST"),
    headers: payload === undefined ? {} : { "content-type": "application/json" },
    body: payload,
    signal: options.signal,
  });
  const text = await res.body.text();
  let body: unknown = null;
  try {
    body = text.length > 0 ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  return { status: res.statusCode, headers: res.headers, body, text };
}

export interface TimedEvent {
  /** performance.now() when the event was complete at the client. */
  at: number;
  data: string;
}

export interface StreamResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** performance.now() when the response headers arrived. */
  headersAt: number;
  events: TimedEvent[];
  /** The error that ended the body early, if any. */
  error: unknown;
}

/**
 * POSTs and reads the SSE body event by event. `onEvent` may abort through the signal; the
 * resulting error is captured in `error` rather than thrown.
 */
export async function stream(
  url: string,
  body: unknown,
  options: { signal?: AbortSignal; onEvent?: (e: TimedEvent, all: TimedEvent[]) => void } = {},
): Promise<StreamResult> {
  const res = await request(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    signal: options.signal,
  });
  const headersAt = performance.now();
  const events: TimedEvent[] = [];
  let buffer = "";
  let error: unknown = null;
  try {
    for await (const chunk of res.body) {
      buffer += (chunk as Buffer).toString("utf8");
      let end = buffer.indexOf("\n\n");
      while (end !== -1) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = { at: performance.now(), data: block.replace(/^data: /, "") };
        events.push(event);
        options.onEvent?.(event, events);
        end = buffer.indexOf("\n\n");
      }
    }
  } catch (err) {
    error = err;
  }
  return { status: res.statusCode, headers: res.headers, headersAt, events, error };
}

/** Parsed JSON events, without the [DONE] sentinel. */
export function chunks(result: StreamResult): Record<string, unknown>[] {
  return result.events
    .filter((e) => e.data !== "[DONE]")
    .map((e) => JSON.parse(e.data) as Record<string, unknown>);
}

/** Concatenated content deltas of a chat stream (or text of a completions stream). */
export function streamedText(result: StreamResult): string {
  let text = "";
  for (const c of chunks(result)) {
    const choices = c.choices as { delta?: { content?: string }; text?: string }[];
    for (const choice of choices) text += choice.delta?.content ?? choice.text ?? "";
  }
  return text;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Polls until check() is true or the time runs out; returns whether it became true. The 10 s
 * only turns a hang into a failure: a slow machine waits longer, it does not fail.
 */
export async function waitFor(check: () => boolean, timeoutMs = 10_000, everyMs = 2): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (check()) return true;
    await sleep(everyMs);
  }
  return check();
}

export const chatBody = (content: string, extra: Record<string, unknown> = {}) => ({
  model: "sim-model",
  messages: [{ role: "user", content }],
  ...extra,
});
