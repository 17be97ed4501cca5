/** Helpers of the async-request tests: submit, poll, read a metric, against real gateways. */
import { request } from "undici";
import { eventually } from "../../helpers/eventually.js";
import type { RunningGateway } from "../../helpers/gateway.js";

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: Record<string, unknown>;
}

export async function call(
  url: string,
  options: {
    method?: "GET" | "POST" | "DELETE";
    body?: unknown;
    key?: string;
    headers?: Record<string, string>;
    signal?: AbortSignal;
  } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.body !== undefined) headers["content-type"] = "application/json";
  if (options.key) headers.authorization = `Bearer ${options.key}`;
  const res = await request(url, {
    method: options.method ?? (options.body === undefined ? "GET" : "POST"),
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    signal: options.signal,
  });
  const text = await res.body.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {}
  return { status: res.statusCode, headers: res.headers, text, json };
}

export const chatBody = (extra: Record<string, unknown> = {}) => ({
  model: "sim-model",
  messages: [{ role: "user", content: "hi" }],
  max_tokens: 5,
  ...extra,
});

/** POSTs with Prefer: respond-async. */
export function submit(
  base: string,
  body: unknown,
  options: { key?: string; route?: string; prefer?: string } = {},
): Promise<Answer> {
  return call(`${base}${options.route ?? "/v1/chat/completions"}`, {
    body,
    key: options.key,
    headers: { prefer: options.prefer ?? "respond-async" },
  });
}

/** GETs the job until it is no longer pending (202), and returns that answer. */
export async function poll(base: string, location: string, key?: string, timeout = 30_000): Promise<Answer> {
  const answer = await eventually(
    async () => {
      const answer = await call(`${base}${location}`, { key });
      return answer.status === 202 ? undefined : answer;
    },
    { timeout, interval: 25, what: `the job at ${location} to end` },
  );
  if (!answer) throw new Error("unreachable: eventually returns a truthy value");
  return answer;
}

/** A metric's value for the labels given (0 when the series does not exist). */
export async function metric(
  gw: RunningGateway,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const found = gw.gateway.metrics.registry.getSingleMetric(name);
  if (!found) throw new Error(`no metric ${name}`);
  const { values } = await found.get();
  const match = values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l));
  return match?.value ?? 0;
}

/** The headers a replayed answer must keep, without the ones each response has of its own. */
export function stableHeaders(headers: Answer["headers"]): Record<string, unknown> {
  const { date: _date, connection: _connection, "keep-alive": _keepAlive, ...rest } = headers;
  return rest;
}
