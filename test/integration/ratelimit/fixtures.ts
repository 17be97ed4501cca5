/** A fast OpenAI-shaped backend with fixed usage, and helpers to drive gateways at it. */
import type { ServerResponse } from "node:http";
import { Agent, request } from "undici";
import { startUpstream, type TestUpstream } from "../../helpers/upstream.js";

/** Every answer reports 10 prompt + 40 completion tokens, whatever max_tokens said. */
export const USAGE = { prompt_tokens: 10, completion_tokens: 40, total_tokens: 50 };

/** `hold`: answers wait for it too (a test that must decide every request before any settles). */
export function startLlmUpstream(delayMs = 0, hold?: Promise<void>): Promise<TestUpstream> {
  return startUpstream(async (req, res, record) => {
    if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
    if (hold) await hold;
    const body = JSON.parse(record.body || "{}") as {
      stream?: boolean;
      stream_options?: { include_usage?: boolean };
    };
    if (body.stream) return stream(res, body.stream_options?.include_usage === true);
    const text = JSON.stringify({
      id: "c1",
      object: "chat.completion",
      model: "m",
      choices: [{ index: 0, message: { role: "assistant", content: "ok" }, finish_reason: "stop" }],
      usage: USAGE,
    });
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
    void req;
  });
}

function stream(res: ServerResponse, includeUsage: boolean): void {
  res.writeHead(200, { "content-type": "text/event-stream" });
  const chunk = (delta: object, finish: string | null) =>
    `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
  res.write(chunk({ role: "assistant", content: "" }, null));
  res.write(chunk({ content: "ok" }, null));
  res.write(chunk({}, "stop"));
  if (includeUsage) {
    res.write(
      `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", choices: [], usage: USAGE })}\n\n`,
    );
  }
  res.end("data: [DONE]\n\n");
}

export const agent = new Agent({ connections: 128 });

export interface Outcome {
  status: number;
  ms: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export async function chat(
  url: string,
  key: string | undefined,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Promise<Outcome> {
  const started = performance.now();
  const res = await request(`${url}/v1/chat/completions`, {
    method: "POST",
    dispatcher: agent,
    headers: {
      "content-type": "application/json",
      ...(key ? { authorization: `Bearer ${key}` } : {}),
      ...headers,
    },
    body: JSON.stringify({
      model: "m",
      max_tokens: 5,
      messages: [{ role: "user", content: "hi" }],
      ...extra,
    }),
  });
  const body = await res.body.text();
  return { status: res.statusCode, ms: performance.now() - started, headers: res.headers, body };
}

/** `workers` loops, each sending to the next URL in turn, until `durationMs` has passed. */
export async function hammer(
  urls: string[],
  key: string | undefined,
  workers: number,
  durationMs: number,
  onResult: (o: Outcome, sentAt: number) => void = () => {},
  /** Keep going past durationMs while this says so (answers so far, ms elapsed), up to 20 s. */
  more: (answers: number, elapsedMs: number) => boolean = () => false,
): Promise<{
  outcomes: Outcome[];
  firstSent: number;
  lastSent: number;
  firstDone: number;
  lastDone: number;
}> {
  const outcomes: Outcome[] = [];
  const start = performance.now();
  let i = 0;
  let firstDone = Number.POSITIVE_INFINITY;
  let lastDone = 0;
  let lastSent = 0;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      for (;;) {
        const elapsed = performance.now() - start;
        if (elapsed >= durationMs && (elapsed >= 20_000 || !more(outcomes.length, elapsed))) break;
        const url = urls[i++ % urls.length] as string;
        const sentAt = performance.now();
        lastSent = Math.max(lastSent, sentAt);
        const o = await chat(url, key);
        const doneAt = performance.now();
        firstDone = Math.min(firstDone, doneAt);
        lastDone = Math.max(lastDone, doneAt);
        outcomes.push(o);
        onResult(o, sentAt);
      }
    }),
  );
  return { outcomes, firstSent: start, lastSent, firstDone, lastDone };
}

export function count(outcomes: Outcome[], status: number): number {
  return outcomes.filter((o) => o.status === status).length;
}
