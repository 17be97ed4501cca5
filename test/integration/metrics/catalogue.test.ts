/**
 * The metric catalogue on a busy gateway: every kind of answer is its own series (served,
 * limited, shed, refused, a client gone), LLM latencies and tokens are counted from what the
 * clients received, breaker state is a series per state, and Debian's `promtool check metrics`
 * accepts the whole scrape (process metrics included).
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { postStream } from "../../helpers/sse.js";

const PROMTOOL = ["/usr/bin/promtool", "/usr/local/bin/promtool"].find((p) => existsSync(p));
const KEY_A = "sk-team-a-0123456789";
const KEY_B = "sk-team-b-0123456789";
const ROUTE = "/v1/chat/completions";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a Prometheus text scrape. */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1] as string] = l[2] as string;
    out.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return out;
}

/** The sum of the samples named `name` whose labels include `match`. */
function total(samples: Sample[], name: string, match: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

describe("the metric catalogue", () => {
  let sim: SimServer;
  let gw: RunningGateway;
  let samples: Sample[];
  let scrape: string;
  /** What the clients were told, to compare with what the metrics count. */
  const told = { prompt: 0, completion: 0, streams: 0, buffered: 0 };

  beforeAll(async () => {
    sim = await startSim({ models: ["sim-model"], decodeStepMs: 5, decodeMsPerSeq: 0, prefillMsPerToken: 0 });
    gw = await startGateway(
      `auth: { keys: [{ key: "${KEY_A}", tenant: team-a }, { key: "${KEY_B}", tenant: team-b }] }
tenants:
  team-a: {}
  team-b: { limits: { requests: { rate: 1, per: 1h, burst: 1 } } }
pools:
  sims:
    models: [sim-model]
    backends: [{ url: "${sim.url}", maxConcurrency: 1 }]
    admission: { bands: { interactive: { maxQueue: 0 } } }
    cache: { enabled: true }
    loadSignals: { enabled: false }`,
      {},
      { processMetrics: true },
    );
    const auth = (key: string) => ({ authorization: `Bearer ${key}` });
    const chat = (extra: Record<string, unknown> = {}) => ({
      model: "sim-model",
      messages: [{ role: "user", content: "Tell me something." }],
      max_tokens: 8,
      ...extra,
    });
    const post = async (key: string | undefined, body: unknown) => {
      const res = await request(`${gw.url}${ROUTE}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...(key ? auth(key) : {}) },
        body: JSON.stringify(body),
      });
      return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
    };
    const usageOf = (json: Record<string, unknown>) =>
      json.usage as { prompt_tokens: number; completion_tokens: number };

    // Served: buffered answers (one of them twice, the second from the cache) and streams.
    for (let i = 0; i < 3; i++) {
      const res = await post(KEY_A, chat({ temperature: 0.7 }));
      expect(res.status).toBe(200);
      told.prompt += usageOf(res.json).prompt_tokens;
      told.completion += usageOf(res.json).completion_tokens;
      told.buffered++;
    }
    const first = await post(KEY_A, chat({ temperature: 0 }));
    told.prompt += usageOf(first.json).prompt_tokens;
    told.completion += usageOf(first.json).completion_tokens;
    expect((await post(KEY_A, chat({ temperature: 0 }))).status).toBe(200);
    for (let i = 0; i < 2; i++) {
      // The client did not ask for usage: the gateway asks on its behalf and hides the chunk.
      const res = await postStream(`${gw.url}${ROUTE}`, chat({ stream: true, temperature: 0.7 }), {
        headers: auth(KEY_A),
      });
      expect(res.status).toBe(200);
      expect(res.events.some((e) => e.data.includes('"usage":{'))).toBe(false);
      told.streams++;
    }
    const withUsage = await postStream(
      `${gw.url}${ROUTE}`,
      chat({ stream: true, temperature: 0.7, stream_options: { include_usage: true } }),
      { headers: auth(KEY_A) },
    );
    const usageEvent = withUsage.events.find((e) => e.data.includes('"usage":{'));
    const streamUsage = JSON.parse(usageEvent?.data ?? "{}").usage;
    told.streams++;

    // Refused: no key, a bad key, a limit, and a full fleet (the one slot held by a stream).
    expect((await post(undefined, chat())).status).toBe(401);
    expect((await post("sk-nobody-0123456789", chat())).status).toBe(401);
    expect((await post(KEY_B, chat({ temperature: 0.7 }))).status).toBe(200);
    expect((await post(KEY_B, chat())).status).toBe(429);
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const holder = postStream(`${gw.url}${ROUTE}`, chat({ stream: true, max_tokens: 400 }), {
      headers: auth(KEY_A),
      onEvent: () => release(),
    });
    await held;
    expect((await post(KEY_A, chat({ temperature: 0.7 }))).status).toBe(503);
    // A client that leaves mid-stream.
    const controller = new AbortController();
    await holder;
    await postStream(`${gw.url}${ROUTE}`, chat({ stream: true, max_tokens: 400 }), {
      headers: auth(KEY_A),
      signal: controller.signal,
      onEvent: () => controller.abort(),
    }).catch(() => undefined);

    await eventually(
      async () => {
        scrape = await (await request(`${gw.adminUrl}/metrics`)).body.text();
        samples = parse(scrape);
        return total(samples, "floodgate_requests_total", { code: "499" }) === 1;
      },
      { what: "the client that left to be counted" },
    );
    // The two long streams' tokens: known only from the metrics' side; the rest was told.
    told.prompt += streamUsage.prompt_tokens;
    told.completion += streamUsage.completion_tokens;
  }, 60_000);

  afterAll(async () => {
    await gw?.close();
    await sim?.close();
  });

  it("counts answers by status code and the gateway's error code", () => {
    const by = (code: string, error: string) =>
      total(samples, "floodgate_requests_total", { route: ROUTE, code, error });
    expect(by("200", "")).toBe(3 + 2 + 3 + 1 + 1); // buffered, cache miss + hit, streams, team-b, holder
    expect(by("401", "missing_api_key")).toBe(1);
    expect(by("401", "invalid_api_key")).toBe(1);
    expect(by("429", "requests_limit_exceeded")).toBe(1);
    expect(by("503", "queue_full")).toBe(1);
    expect(by("499", "client_closed")).toBe(1);
    // The tenant label: the limited one is team-b's; refusals before auth have none.
    expect(total(samples, "floodgate_requests_total", { code: "429", tenant: "team-b" })).toBe(1);
    expect(total(samples, "floodgate_requests_total", { code: "401", tenant: "" })).toBe(2);
  });

  it("observes time to first token for every successful LLM answer, streams apart", () => {
    const count = (stream: string) =>
      total(samples, "floodgate_time_to_first_token_seconds_count", {
        pool: "sims",
        stream,
        tenant: "team-a",
      });
    expect(count("true")).toBe(told.streams + 1); // and the stream that held the slot
    expect(count("false")).toBe(told.buffered + 2); // and the cache miss and hit
    // Time per output token: streams that finished with more than one token.
    expect(total(samples, "floodgate_time_per_output_token_seconds_count", { pool: "sims" })).toBe(
      told.streams + 1,
    );
    // A stream's first token comes before its end.
    const ttft = total(samples, "floodgate_time_to_first_token_seconds_sum", { stream: "true" });
    const whole = total(samples, "floodgate_request_duration_seconds_sum", {
      stream: "true",
      status_class: "2xx",
    });
    expect(ttft).toBeGreaterThan(0);
    expect(ttft).toBeLessThan(whole);
  });

  it("counts the tokens the backend reported, not the cache's", async () => {
    const prompt = total(samples, "floodgate_tokens_total", { pool: "sims", type: "prompt" });
    const completion = total(samples, "floodgate_tokens_total", { pool: "sims", type: "completion" });
    // Every answer asked 8 tokens but the two long streams (400; the left one is cut short).
    expect(completion).toBeGreaterThanOrEqual(told.completion + 7 * 2 + 400);
    expect(prompt).toBeGreaterThanOrEqual(told.prompt);
    // The simulator counts what it generated: floodgate's counter matches its own.
    const simText = await (await request(`${sim.url}/metrics`)).body.text();
    const simPrompt = total(parse(simText), "vllm:prompt_tokens_total");
    expect(prompt).toBeLessThanOrEqual(simPrompt);
  });

  it("measures floodgate's own part of every request", () => {
    const answered = total(samples, "floodgate_requests_total");
    expect(total(samples, "floodgate_overhead_seconds_count")).toBe(answered);
    const overhead = total(samples, "floodgate_overhead_seconds_sum");
    const duration = total(samples, "floodgate_request_duration_seconds_sum");
    expect(overhead).toBeGreaterThan(0);
    expect(overhead).toBeLessThan(duration);
  });

  it("shows breaker state as one 0/1 series per state", () => {
    const states = samples.filter((s) => s.name === "floodgate_breaker_state");
    expect(states.map((s) => s.labels.state).sort()).toEqual(["closed", "half_open", "open"]);
    expect(states.find((s) => s.labels.state === "closed")?.value).toBe(1);
    expect(states.reduce((sum, s) => sum + s.value, 0)).toBe(1);
    expect(total(samples, "floodgate_store_degraded")).toBe(0);
  });

  it.skipIf(!PROMTOOL)("passes promtool check metrics", async () => {
    const { code, output } = await new Promise<{ code: number; output: string }>((resolve) => {
      const child = execFile(PROMTOOL as string, ["check", "metrics"], (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, output: stdout + stderr }),
      );
      child.stdin?.end(scrape);
    });
    expect(output).toBe("");
    expect(code).toBe(0);
  });
});
