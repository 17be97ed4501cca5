/**
 * One way back: for every way a request can end, each stage it entered gives back what it took
 * exactly once (its leave runs once; stages it did not enter never leave), and afterwards
 * nothing is held: no backend slot, no cache flight, no concurrency lease, no token reservation
 * left unsettled.
 */
import { request } from "undici";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { RequestContext } from "../../../src/context.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { postStream } from "../../helpers/sse.js";
import {
  chunkEvent,
  completion,
  jsonResponse,
  sleep,
  startUpstream,
  type TestUpstream,
} from "../../helpers/upstream.js";

const KEY = "sk-team-a-0123456789";
const CONCURRENCY = 3;

let main: TestUpstream;
let spare: TestUpstream;
let gw: RunningGateway;
/** Per request: how often each stage's leave ran. */
const leaves = new Map<RequestContext, Map<string, number>>();
const seen: RequestContext[] = [];

/** The backend's behaviour, from the request's first user message. */
async function behave(content: string, res: import("node:http").ServerResponse): Promise<void> {
  const usage = { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 };
  switch (content) {
    case "stream":
    case "slow-stream": {
      res.writeHead(200, { "content-type": "text/event-stream" });
      const n = content === "stream" ? 3 : 200;
      for (let i = 0; i < n && !res.destroyed; i++) {
        res.write(chunkEvent(i, `t${i}`));
        if (content === "slow-stream") await sleep(20);
      }
      if (!res.destroyed) {
        res.write(
          `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", choices: [], usage })}\n\n`,
        );
        res.end("data: [DONE]\n\n");
      }
      return;
    }
    case "fail":
      res.socket?.destroy();
      return;
    case "busy":
      jsonResponse(res, 503, { error: { message: "busy" } });
      return;
    case "slow":
      await sleep(300);
      jsonResponse(res, 200, { ...completion, usage });
      return;
    default:
      jsonResponse(res, 200, { ...completion, usage });
  }
}

function messageOf(body: string): string {
  const json = JSON.parse(body) as { messages?: { content?: string }[] };
  return json.messages?.[0]?.content ?? "";
}

beforeAll(async () => {
  main = await startUpstream((_req, res, record) => behave(messageOf(record.body), res));
  spare = await startUpstream((_req, res) => jsonResponse(res, 200, completion));
  gw = await startGateway(`auth: { keys: [{ key: "${KEY}", tenant: team-a }] }
tenants:
  team-a:
    limits:
      tokens: { rate: 100000, per: 1m, burst: 100000 }
      concurrency: ${CONCURRENCY}
pools:
  main:
    models: [test-model]
    backends: [{ url: "${main.url}" }]
    retry: { attempts: 0 }
    cache: { enabled: true }
    fallback: [spare]
  spare:
    models: [spare-model]
    backends: [{ url: "${spare.url}" }]
  solo:
    models: [solo-model]
    backends: [{ url: "${main.url}" }]
    retry: { attempts: 0 }
`);
  const path = gw.gateway.paths?.openai;
  if (!path) throw new Error("no request path");
  expect(path.names).toEqual(["route", "cache", "token-budget", "concurrency", "forward"]);
  for (const stage of path.stages) {
    const enter = stage.enter.bind(stage);
    if (stage.name === "route") {
      Object.assign(stage, {
        enter: (state: RequestContext) => {
          seen.push(state);
          leaves.set(state, new Map());
          return enter(state);
        },
      });
    }
    const leave = stage.leave?.bind(stage);
    if (!leave) continue;
    Object.assign(stage, {
      leave: (state: RequestContext) => {
        const counts = leaves.get(state);
        counts?.set(stage.name, (counts.get(stage.name) ?? 0) + 1);
        leave(state);
      },
    });
  }
});
afterAll(async () => {
  await gw?.close();
  await main?.close();
  await spare?.close();
});
beforeEach(() => {
  seen.length = 0;
  leaves.clear();
});

const chat = (content: string, extra: Record<string, unknown> = {}) => ({
  model: "test-model",
  messages: [{ role: "user", content }],
  ...extra,
});

function post(body: unknown, headers: Record<string, string> = {}) {
  return request(`${gw.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${KEY}`, ...headers },
    body: JSON.stringify(body),
  }).then(async (res) => ({ status: res.statusCode, headers: res.headers, text: await res.body.text() }));
}

/** Every request seen left each entered stage exactly once, and none it did not enter. */
async function expectGivenBack(requests: number): Promise<void> {
  await expect.poll(() => seen.length).toBe(requests);
  await expect.poll(() => seen.every((s) => s.unwound)).toBe(true);
  const names = gw.gateway.paths?.openai.names ?? [];
  for (const state of seen) {
    const counts = leaves.get(state) ?? new Map<string, number>();
    // The route stage takes nothing and has no leave.
    const expected = new Map(names.slice(1, state.entered).map((n) => [n, 1]));
    expect(Object.fromEntries(counts)).toEqual(Object.fromEntries(expected));
  }
  // Nothing is held.
  for (const pool of gw.gateway.upstreams.pools.values())
    for (const b of pool.backends) expect(b.inFlight).toBe(0);
  expect(gw.gateway.cache.flightCount).toBe(0);
  for (const state of seen) expect(state.exchange?.settled ?? true).toBe(true);
  await expectLeasesFree();
}

/** All of the tenant's concurrency slots can be taken at once again. */
async function expectLeasesFree(): Promise<void> {
  const before = seen.length;
  const results = await Promise.all(
    Array.from({ length: CONCURRENCY }, () => post(chat("slow", { temperature: 0.7 }))),
  );
  expect(results.map((r) => r.status)).toEqual(Array(CONCURRENCY).fill(200));
  seen.length = before;
}

describe("every way a request ends gives back what it took, once", () => {
  it("a buffered answer", async () => {
    expect((await post(chat("plain", { temperature: 0.7 }))).status).toBe(200);
    await expectGivenBack(1);
    expect(seen[0]?.reservation).toBeDefined();
  });

  it("a stream to its end", async () => {
    const { status, events } = await postStream(
      `${gw.url}/v1/chat/completions`,
      chat("stream", { stream: true }),
      {
        headers: { authorization: `Bearer ${KEY}` },
      },
    );
    expect(status).toBe(200);
    expect(events.at(-1)?.data).toBe("[DONE]");
    await expectGivenBack(1);
  });

  it("a stream whose client leaves mid-way", async () => {
    const controller = new AbortController();
    await postStream(`${gw.url}/v1/chat/completions`, chat("slow-stream", { stream: true }), {
      headers: { authorization: `Bearer ${KEY}` },
      signal: controller.signal,
      onEvent: (e) => {
        if (e.data.includes("t3")) controller.abort();
      },
    }).catch(() => undefined);
    await expectGivenBack(1);
    expect(seen[0]?.delivered).toBe(false);
  });

  it("a cache miss, then a hit", async () => {
    const q = chat("cacheable", { temperature: 0 });
    expect((await post(q)).headers["x-floodgate-cache"]).toBe("MISS");
    expect((await post(q)).headers["x-floodgate-cache"]).toBe("HIT");
    await expectGivenBack(2);
    // The hit answered at the cache: no budget, lease or slot was taken for it.
    expect(seen[1]?.entered).toBe(2);
  });

  it("a cache leader and its followers", async () => {
    const q = chat("slow", { temperature: 0 });
    const results = await Promise.all([post(q), post(q), post(q)]);
    expect(results.map((r) => r.headers["x-floodgate-cache"]).sort()).toEqual(["HIT", "HIT", "MISS"]);
    await expectGivenBack(3);
  });

  it("refused by a limit (the token budget)", async () => {
    const res = await post(chat("plain", { temperature: 0.7, max_tokens: 1_000_000 }));
    expect(res.status).toBe(429);
    await expectGivenBack(1);
    // Refused at the token budget: it entered route and cache only.
    expect(seen[0]?.entered).toBe(2);
  });

  it("a failed upstream", async () => {
    const res = await post({ ...chat("fail", { temperature: 0.7 }), model: "solo-model" });
    expect(res.status).toBe(502);
    await expectGivenBack(1);
  });

  it("served by a fallback pool", async () => {
    const res = await post(chat("busy", { temperature: 0.7 }));
    expect(res.status).toBe(200);
    expect(res.headers["x-floodgate-fallback"]).toBe("spare");
    await expectGivenBack(1);
  });
});
