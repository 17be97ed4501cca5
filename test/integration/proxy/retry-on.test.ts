/**
 * retry.on through a real gateway and real backends: what a pool retries on another backend,
 * walks past to its fallback pool, and covers with a stale cache entry, and what reaches the
 * client as the backend said it.
 */
import type { ServerResponse } from "node:http";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { completion, jsonResponse, sleep, startUpstream, type TestUpstream } from "../../helpers/upstream.js";

let gw: RunningGateway | undefined;
let upstreams: TestUpstream[] = [];
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  await Promise.all(upstreams.map((u) => u.close()));
  upstreams = [];
});

async function backend(answer: (res: ServerResponse) => void): Promise<TestUpstream> {
  const u = await startUpstream((_req, res) => answer(res));
  upstreams.push(u);
  return u;
}
const healthy = () => backend((res) => jsonResponse(res, 200, completion));
const failing = (status: number) =>
  backend((res) =>
    jsonResponse(res, status, { error: { message: `backend says ${status}`, type: "server_error" } }),
  );

async function chat(url: string, model = "test-model", extra: Record<string, unknown> = {}) {
  const res = await request(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], ...extra }),
  });
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
}

async function retries(g: RunningGateway, pool: string, reason: string): Promise<number> {
  const metric = await g.gateway.metrics.registry.getSingleMetric("floodgate_upstream_retries_total")?.get();
  return metric?.values.find((v) => v.labels.pool === pool && v.labels.reason === reason)?.value ?? 0;
}

/** A pool `name` serving `model` in front of the given backends, round robin so that each is asked. */
function pool(name: string, model: string, urls: string[], extra = ""): string {
  return `  ${name}:
    models: [${model}]
    balancer: round_robin
    backends: [${urls.map((u) => `{ url: "${u}" }`).join(", ")}]
${extra ? `    ${extra}\n` : ""}`;
}

describe("retry.on: which answers are retried on another backend", () => {
  it("by default a 500 is retried: one healthy and one failing backend serve 200 requests without a client error", async () => {
    const good = await healthy();
    const bad = await failing(500);
    const g = await startGateway(`pools:\n${pool("main", "test-model", [bad.url, good.url])}`);
    gw = g;
    const statuses: number[] = [];
    // Two clients at a time: the retries in flight stay inside the budget's floor of 3.
    await Promise.all(
      [0, 1].map(async () => {
        for (let i = 0; i < 100; i++) statuses.push((await chat(g.url)).status);
      }),
    );
    expect(statuses).toHaveLength(200);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    // The failing backend was asked (until outlier detection ejected it), and each 500 was retried.
    expect(bad.received.length).toBeGreaterThan(0);
    expect(await retries(g, "main", "status_500")).toBe(bad.received.length);
    expect(good.received).toHaveLength(200);
  });

  it("with retry.on leaving out 5xx, the backend's 500 reaches the client, tried once", async () => {
    const good = await healthy();
    const bad = await failing(500);
    const g = await startGateway(
      `pools:\n${pool("main", "test-model", [bad.url, good.url], "retry: { on: [connect-failure, reset, gateway-error] }")}`,
    );
    gw = g;
    const answers = [];
    while (bad.received.length < 2 && answers.length < 20) answers.push(await chat(g.url));
    const failed = answers.filter((a) => a.status === 500);
    expect(failed.length).toBe(2);
    expect(bad.received).toHaveLength(2);
    expect(JSON.parse(failed[0]?.text ?? "{}")).toMatchObject({ error: { message: "backend says 500" } });
    // One try per request: nothing was retried.
    expect(bad.received.length + good.received.length).toBe(answers.length);
    expect(await retries(g, "main", "status_500")).toBe(0);
  });

  it("a 409 is retried only where retry.on has retriable-4xx", async () => {
    const good = await healthy();
    const conflict = await failing(409);
    const urls = [conflict.url, good.url];
    const g = await startGateway(`pools:
${pool("plain", "plain-model", urls)}${pool("conflicts", "conflict-model", urls, "retry: { on: [5xx, retriable-4xx] }")}`);
    gw = g;
    const plain: number[] = [];
    while (conflict.received.length < 2 && plain.length < 20)
      plain.push((await chat(g.url, "plain-model")).status);
    expect(plain.filter((s) => s === 409)).toEqual([409, 409]);
    expect(await retries(g, "plain", "status_409")).toBe(0);

    const retried: number[] = [];
    while (conflict.received.length < 4 && retried.length < 20)
      retried.push((await chat(g.url, "conflict-model")).status);
    expect(conflict.received).toHaveLength(4);
    expect(retried.every((s) => s === 200)).toBe(true);
    expect(await retries(g, "conflicts", "status_409")).toBe(2);
  });

  it("a refused connect is retried under connect-failure (and 5xx), not under retriable-status-codes alone", async () => {
    const good = await healthy();
    const gone = await startUpstream(() => undefined);
    await gone.close(); // its port now refuses connections
    const urls = [gone.url, good.url];
    const g = await startGateway(`pools:
${pool("main", "test-model", urls, "outlierDetection: { consecutiveGatewayFailure: 100 }")}${pool("codes", "codes-model", urls, "retry: { on: [retriable-status-codes] }\n    outlierDetection: { consecutiveGatewayFailure: 100 }")}`);
    gw = g;
    // A refused connect ejects the backend at once: one request each shows the rule.
    const byDefault: number[] = [];
    while ((await retries(g, "main", "connect_failure")) === 0 && byDefault.length < 20)
      byDefault.push((await chat(g.url)).status);
    expect(byDefault.every((s) => s === 200)).toBe(true);
    expect(await retries(g, "main", "connect_failure")).toBe(1);

    const codesOnly: number[] = [];
    while (!codesOnly.includes(502) && codesOnly.length < 20)
      codesOnly.push((await chat(g.url, "codes-model")).status);
    expect(codesOnly.at(-1)).toBe(502);
    expect(await retries(g, "codes", "connect_failure")).toBe(0);
  });
});

describe("retry.on in the config", () => {
  it("an unknown condition keeps the gateway from starting, naming the path and the accepted values", async () => {
    const good = await healthy();
    await expect(
      startGateway(`pools:\n${pool("main", "test-model", [good.url], "retry: { on: [5xx, timeout] }")}`),
    ).rejects.toThrow(
      'pools.main.retry.on[1]: must be one of: connect-failure, reset, 5xx, gateway-error, retriable-4xx, retriable-status-codes; got "timeout"',
    );
  });
});

describe("retry.on: the fallback walk and stale-if-error follow the same list", () => {
  it("a pool whose backend answers 500 falls back to the next pool; without 5xx in retry.on it does not", async () => {
    const bad = await failing(500);
    const spare = await healthy();
    const g = await startGateway(`pools:
${pool("main", "test-model", [bad.url], "fallback: [spare]")}${pool("strict", "strict-model", [bad.url], "fallback: [spare]\n    retry: { on: [connect-failure, reset, gateway-error] }")}${pool("spare", "spare-model", [spare.url])}`);
    gw = g;
    const walked = await chat(g.url);
    expect(walked.status).toBe(200);
    expect(walked.headers["x-floodgate-fallback"]).toBe("spare");
    expect(JSON.parse(spare.received[0]?.body ?? "{}")).toMatchObject({ model: "spare-model" });
    // The pool's one backend was tried 1 + attempts (2) times, then the walk went on.
    expect(bad.received).toHaveLength(3);
    expect(spare.received).toHaveLength(1);

    const kept = await chat(g.url, "strict-model");
    expect(kept.status).toBe(500);
    expect(kept.headers["x-floodgate-fallback"]).toBeUndefined();
    expect(bad.received).toHaveLength(4);
    expect(spare.received).toHaveLength(1);
  });

  it("stale-if-error covers a 500 by default, and not where retry.on leaves 5xx out", async () => {
    let status = 200;
    const flaky = await backend((res) =>
      status === 200
        ? jsonResponse(res, 200, completion)
        : jsonResponse(res, status, { error: { message: "boom" } }),
    );
    const cache = "cache: { ttl: 200ms, jitterPercent: 0, staleIfError: 1m }";
    const g = await startGateway(`pools:
${pool("main", "test-model", [flaky.url], cache)}${pool("strict", "strict-model", [flaky.url], `${cache}\n    retry: { on: [connect-failure, reset, gateway-error] }`)}`);
    gw = g;
    const ask = (model: string) => chat(g.url, model, { temperature: 0 });
    expect((await ask("test-model")).status).toBe(200);
    expect((await ask("strict-model")).status).toBe(200);
    await sleep(300); // both entries past their TTL
    status = 500;
    const stale = await ask("test-model");
    expect(stale.status).toBe(200);
    expect(stale.headers["x-floodgate-cache"]).toBe("STALE");
    const strict = await ask("strict-model");
    expect(strict.status).toBe(500);
  });
});
