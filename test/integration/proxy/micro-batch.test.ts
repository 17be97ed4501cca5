/**
 * Embeddings micro-batching through a real gateway in front of the simulator: concurrent
 * requests become fewer upstream calls (the simulator's counters say how many, and with how many
 * inputs), every answer is the one the request gets alone (the simulator's embeddings are
 * deterministic: a second simulator with no costs answers each request alone for comparison),
 * and clients that leave, failing calls and the stages before forward behave as without batching.
 *
 * Batches here are sent when full (maxBatchInputs), with windows far longer than any test, so
 * what goes together does not depend on how fast the machine is.
 */
import { Agent, request } from "undici";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { gate, startUpstream, type TestUpstream } from "../../helpers/upstream.js";

const agent = new Agent({ connections: 256 });
const MODEL = "emb";
const ADMIN = { authorization: "Bearer test-admin-token-0123456789" };

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  json: Record<string, unknown>;
}

async function post(
  url: string,
  body: Record<string, unknown>,
  options: { headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<Answer> {
  const res = await request(`${url}/v1/embeddings`, {
    dispatcher: agent,
    method: "POST",
    headers: { "content-type": "application/json", ...options.headers },
    body: JSON.stringify(body),
    signal: options.signal,
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, json: JSON.parse(text) as Record<string, unknown> };
}

/** The sum of a metric's samples whose labels include every `label="value"` given. */
async function metric(gw: RunningGateway, name: string, ...labels: string[]): Promise<number> {
  const res = await request(`${gw.adminUrl}/metrics`, { dispatcher: agent, headers: ADMIN });
  const text = await res.body.text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (labels.every((l) => line.includes(l))) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

let reference: SimServer;
let sims: SimServer[] = [];
let gateways: RunningGateway[] = [];
let upstreams: TestUpstream[] = [];

beforeAll(async () => {
  // Answers each request alone, at once: what an unbatched call returns.
  reference = await startSim({ models: [MODEL], timeScale: 0 });
});
afterAll(async () => {
  await reference.close();
  await agent.close();
});
afterEach(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await Promise.all(upstreams.map((u) => u.close()));
  await Promise.all(sims.map((s) => s.close()));
  gateways = [];
  upstreams = [];
  sims = [];
});

async function simulator(options: Parameters<typeof startSim>[0] = {}): Promise<SimServer> {
  const sim = await startSim({ models: [MODEL], ...options });
  sims.push(sim);
  return sim;
}

/** A gateway whose pool batches, in front of `url`; `microBatch` and `extra` go into the pool. */
async function gateway(url: string, microBatch: string, extra = "", top = ""): Promise<RunningGateway> {
  const gw = await startGateway(`${top}
pools:
  e:
    models: [${MODEL}]
    backends: [{ url: "${url}", maxConcurrency: 1 }]
    loadSignals: { enabled: false }
    retry: { attempts: 0 }
    admission: { bands: { interactive: { maxWait: 2m } } }
    microBatch: { enabled: true, batchWindow: 1m, ${microBatch} }
${extra}`);
  gateways.push(gw);
  return gw;
}

const alone = (body: Record<string, unknown>) => post(reference.url, { model: MODEL, ...body });

describe("embeddings micro-batching", () => {
  it("merges concurrent requests into one call each for texts and token arrays, each answer its own", async () => {
    const sim = await simulator();
    const gw = await gateway(sim.url, "maxBatchInputs: 8");
    // Eight text inputs in five requests, eight token inputs in five: exactly two full batches.
    const inputs: unknown[] = [
      "alpha beta",
      ["gamma", "delta epsilon"],
      "zeta",
      ["eta", "theta", "iota"],
      "kappa lambda mu",
      [1, 2, 3],
      [[4, 5], [6]],
      [7],
      [[8, 9, 10], [11], [12, 13]],
      [14],
    ];
    const answers = await Promise.all(inputs.map((input) => post(gw.url, { model: MODEL, input })));
    expect(sim.stats()).toMatchObject({ received: 2, embeddingCalls: 2, embeddingInputs: 16 });
    for (const [i, input] of inputs.entries()) {
      const got = answers[i] as Answer;
      expect(got.status).toBe(200);
      expect(got.headers["x-floodgate-microbatch"]).toBe("5");
      expect(got.headers["x-request-id"]).not.toBe(answers[i === 0 ? 1 : 0]?.headers["x-request-id"]);
      expect(got.json).toEqual((await alone({ input })).json);
    }
    // The shares of usage add up to what the simulator counted for the two calls.
    const prompt = answers.reduce((a, r) => a + (r.json.usage as { prompt_tokens: number }).prompt_tokens, 0);
    expect(prompt).toBe(sim.stats().promptTokens);
    expect(await metric(gw, "floodgate_microbatch_flushes_total", 'reason="max_inputs"')).toBe(2);
    expect(await metric(gw, "floodgate_microbatch_requests_total", 'outcome="merged"')).toBe(10);
    expect(await metric(gw, "floodgate_microbatch_batch_requests_sum")).toBe(10);
    expect(await metric(gw, "floodgate_microbatch_batch_inputs_sum")).toBe(16);
  });

  it("merges only requests with the same options: encoding, dimensions, user", async () => {
    const sim = await simulator();
    const gw = await gateway(sim.url, "maxBatchInputs: 2");
    const bodies = [
      { input: "one", encoding_format: "base64" },
      { input: "two", dimensions: 64 },
      { input: "three", user: "u-1" },
      { input: "four", encoding_format: "base64" },
      { input: "five", dimensions: 64 },
      { input: "six", user: "u-1" },
    ];
    const answers = await Promise.all(bodies.map((b) => post(gw.url, { model: MODEL, ...b })));
    expect(sim.stats()).toMatchObject({ embeddingCalls: 3, embeddingInputs: 6 });
    for (const [i, b] of bodies.entries()) {
      expect(answers[i]?.headers["x-floodgate-microbatch"]).toBe("2");
      expect(answers[i]?.json).toEqual((await alone(b)).json);
    }
  });

  it("splits at maxBatchInputs and at maxBatchTokens", async () => {
    const sim = await simulator();
    const byInputs = await gateway(sim.url, "maxBatchInputs: 4");
    const twelve = await Promise.all(
      Array.from({ length: 12 }, (_, i) => post(byInputs.url, { model: MODEL, input: `text ${i}` })),
    );
    expect(twelve.every((a) => a.status === 200 && a.headers["x-floodgate-microbatch"] === "4")).toBe(true);
    expect(sim.stats()).toMatchObject({ embeddingCalls: 3, embeddingInputs: 12 });
    expect(await metric(byInputs, "floodgate_microbatch_flushes_total", 'reason="max_inputs"')).toBe(3);

    // Five tokens each, ten a batch: two requests a call.
    const byTokens = await gateway(sim.url, "maxBatchTokens: 10");
    const six = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        post(byTokens.url, { model: MODEL, input: `one two three four n${i}` }),
      ),
    );
    expect(six.every((a) => a.status === 200 && a.headers["x-floodgate-microbatch"] === "2")).toBe(true);
    expect(sim.stats()).toMatchObject({ embeddingCalls: 6, embeddingInputs: 18 });
    expect(await metric(byTokens, "floodgate_microbatch_flushes_total", 'reason="max_tokens"')).toBe(3);
    for (const [i, a] of six.entries()) {
      expect(a.json).toEqual((await alone({ input: `one two three four n${i}` })).json);
    }
  });

  it("sends a request that cannot be merged alone, at once", async () => {
    const sim = await simulator();
    const gw = await gateway(sim.url, "maxBatchInputs: 2");
    // More inputs than a batch holds, and a mixed array: neither waits for the window.
    const big = await post(gw.url, { model: MODEL, input: ["a", "b", "c"] });
    expect(big.status).toBe(200);
    expect(big.headers["x-floodgate-microbatch"]).toBeUndefined();
    expect(big.json).toEqual((await alone({ input: ["a", "b", "c"] })).json);
    const mixed = await post(gw.url, { model: MODEL, input: ["a", [1, 2]] });
    expect(mixed.json).toEqual((await alone({ input: ["a", [1, 2]] })).json);
    expect(sim.stats().received).toBe(2);
    expect(await metric(gw, "floodgate_microbatch_requests_total", 'outcome="unmergeable"')).toBe(2);
  });

  it("drops a client that leaves before its batch goes; a batch left empty makes no call", async () => {
    const sim = await simulator();
    const gw = await gateway(sim.url, "maxBatchInputs: 3");
    const waiting = () => metric(gw, "floodgate_microbatch_waiting");

    const gone = new AbortController();
    const first = post(gw.url, { model: MODEL, input: "leaves" }, { signal: gone.signal }).catch(
      () => "aborted",
    );
    await eventually(async () => (await waiting()) === 1, { what: "one request waiting" });
    gone.abort();
    expect(await first).toBe("aborted");
    await eventually(async () => (await waiting()) === 0, { what: "the batch dropped" });
    expect(sim.stats().received).toBe(0);

    const alsoGone = new AbortController();
    const left = post(gw.url, { model: MODEL, input: "leaves too" }, { signal: alsoGone.signal }).catch(
      () => "aborted",
    );
    const stays = post(gw.url, { model: MODEL, input: "stays" });
    await eventually(async () => (await waiting()) === 2);
    alsoGone.abort();
    await left;
    await eventually(async () => (await waiting()) === 1);
    const others = await Promise.all([
      stays,
      ...["x y", "z"].map((input) => post(gw.url, { model: MODEL, input })),
    ]);
    // The three that stayed went in one call, without the one that left.
    expect(sim.stats()).toMatchObject({ received: 1, embeddingInputs: 3 });
    expect(others.map((a) => a.headers["x-floodgate-microbatch"])).toEqual(["3", "3", "3"]);
    expect(others[0]?.json).toEqual((await alone({ input: "stays" })).json);
    expect(await metric(gw, "floodgate_microbatch_requests_total", 'outcome="left"')).toBe(2);
  });

  it("a client leaving a call under way loses only its part; when all leave, the call is aborted", async () => {
    const sim = await simulator();
    // Holds every call until the test opens its gate, then relays it to the simulator.
    const held = gate();
    const relay = await startUpstream(async (req, res, record) => {
      await held.opened;
      const answer = await request(`${sim.url}${req.url}`, {
        dispatcher: agent,
        method: "POST",
        headers: { "content-type": "application/json" },
        body: record.body,
      });
      const text = await answer.body.text();
      res.writeHead(answer.statusCode, { "content-type": "application/json" });
      res.end(text);
    });
    upstreams.push(relay);
    const gw = await gateway(relay.url, "maxBatchInputs: 2");

    const gone = new AbortController();
    const leaving = post(gw.url, { model: MODEL, input: "leaves" }, { signal: gone.signal }).catch(
      () => "aborted",
    );
    const staying = post(gw.url, { model: MODEL, input: "stays" });
    await eventually(() => relay.received.length === 1, { what: "the merged call upstream" });
    // One call, one slot: the pool has one in flight, and nobody queues.
    expect(await metric(gw, "floodgate_backend_in_flight")).toBe(1);
    expect(JSON.parse(relay.received[0]?.body ?? "{}")).toMatchObject({ input: ["leaves", "stays"] });
    gone.abort();
    expect(await leaving).toBe("aborted");
    await eventually(
      async () => (await metric(gw, "floodgate_microbatch_requests_total", 'outcome="left"')) === 1,
    );
    held.open();
    const kept = await staying;
    expect(kept.status).toBe(200);
    expect(kept.json).toEqual((await alone({ input: "stays" })).json);
    expect(relay.received[0]?.abortedAt).toBeUndefined();

    // Both leave while the next call is held: the gateway stops it.
    const second = gate();
    relay.server.removeAllListeners("request");
    relay.server.on("request", (_req, res) => {
      void second.opened.then(() => res.end());
    });
    const all = new AbortController();
    const both = ["a", "b"].map((input) =>
      post(gw.url, { model: MODEL, input }, { signal: all.signal }).catch(() => "aborted"),
    );
    await eventually(async () => (await metric(gw, "floodgate_backend_in_flight")) === 1);
    all.abort();
    expect(await Promise.all(both)).toEqual(["aborted", "aborted"]);
    await eventually(async () => (await metric(gw, "floodgate_backend_in_flight")) === 0, {
      what: "the merged call aborted",
    });
    second.open();
  });

  it("a batch waiting for a busy backend keeps taking requests, so calls grow with the load", async () => {
    const sim = await simulator();
    const held = gate();
    const relay = await startUpstream(async (req, res, record) => {
      await held.opened;
      const answer = await request(`${sim.url}${req.url}`, {
        dispatcher: agent,
        method: "POST",
        headers: { "content-type": "application/json" },
        body: record.body,
      });
      res.writeHead(answer.statusCode, { "content-type": "application/json" });
      res.end(await answer.body.text());
    });
    upstreams.push(relay);
    const gw = await startGateway(`
pools:
  e:
    models: [${MODEL}]
    backends: [{ url: "${relay.url}", maxConcurrency: 1 }]
    loadSignals: { enabled: false }
    microBatch: { enabled: true, batchWindow: 0ms }`);
    gateways.push(gw);
    // The first request's call holds the only slot at the gate.
    const first = post(gw.url, { model: MODEL, input: "first" });
    await eventually(() => relay.received.length === 1);
    const later = ["b", "c d", "e", "f g h", "i"].map((input) => post(gw.url, { model: MODEL, input }));
    await eventually(async () => (await metric(gw, "floodgate_microbatch_waiting")) === 5, {
      what: "five requests in the batch waiting for the slot",
    });
    held.open();
    const answers = await Promise.all([first, ...later]);
    expect(relay.received).toHaveLength(2);
    expect((JSON.parse(relay.received[1]?.body ?? "{}") as { input: string[] }).input).toHaveLength(5);
    expect(answers[0]?.headers["x-floodgate-microbatch"]).toBeUndefined();
    for (const [i, input] of ["first", "b", "c d", "e", "f g h", "i"].entries()) {
      expect(answers[i]?.json).toEqual((await alone({ input })).json);
      if (i > 0) expect(answers[i]?.headers["x-floodgate-microbatch"]).toBe("5");
    }
    expect(await metric(gw, "floodgate_microbatch_requests_total", 'outcome="single"')).toBe(1);
    expect(await metric(gw, "floodgate_microbatch_requests_total", 'outcome="merged"')).toBe(5);
  });

  it("a failing merged call fails every member with the same status and body", async () => {
    const sim = await simulator({ faults: { errorRate: 1, errorStatus: 500 } });
    const gw = await gateway(sim.url, "maxBatchInputs: 3");
    const answers = await Promise.all(["a", "b", "c"].map((input) => post(gw.url, { model: MODEL, input })));
    expect(sim.stats()).toMatchObject({ received: 1, errorsInjected: 1 });
    expect(answers.map((a) => a.status)).toEqual([500, 500, 500]);
    const direct = await post(sim.url, { model: MODEL, input: "a" });
    for (const a of answers) expect(a.json).toEqual(direct.json);
  });

  it("a call the backend refuses as a bad request is asked again apart, so each gets its own answer", async () => {
    const sim = await simulator();
    const gw = await gateway(sim.url, "maxBatchInputs: 3");
    // The simulator refuses these dimensions: each request alone gets that 400, as without batching.
    const bodies = ["a", "b", "c"].map((input) => ({ model: MODEL, input, dimensions: 100_000 }));
    const answers = await Promise.all(bodies.map((b) => post(gw.url, b)));
    expect(sim.stats().received).toBe(4);
    for (const [i, a] of answers.entries()) {
      expect(a.status).toBe(400);
      expect(a.json).toEqual((await post(reference.url, bodies[i] as Record<string, unknown>)).json);
      expect(a.headers["x-floodgate-microbatch"]).toBeUndefined();
    }
    expect(await metric(gw, "floodgate_microbatch_requests_total", 'outcome="apart"')).toBe(3);
  });

  it("a merged call failing where the fallback chain takes over sends each member down its own chain", async () => {
    const broken = await simulator({ faults: { errorRate: 1, errorStatus: 503 } });
    const spare = await simulator({ models: ["spare-model"] });
    const gw = await gateway(
      broken.url,
      "maxBatchInputs: 2",
      `    fallback: [spare]
  spare:
    models: [spare-model]
    backends: [{ url: "${spare.url}" }]
    loadSignals: { enabled: false }`,
    );
    const answers = await Promise.all(["a", "b"].map((input) => post(gw.url, { model: MODEL, input })));
    for (const a of answers) {
      expect(a.status).toBe(200);
      expect(a.headers["x-floodgate-fallback"]).toBe("spare");
      expect(a.json).toMatchObject({ model: "spare-model", data: [{ index: 0 }] });
    }
    // One merged call, then each member alone: on the broken pool first, then on to the spare.
    expect(broken.stats().received).toBe(3);
    expect(spare.stats()).toMatchObject({ received: 2, embeddingInputs: 2 });
    expect(await metric(gw, "floodgate_microbatch_requests_total", 'outcome="apart"')).toBe(2);
  });

  it("runs the stages for each member: its cache entry, its token reservation settled to its share", async () => {
    const sim = await simulator();
    const key = "sk-team-a-0123456789";
    const gw = await gateway(
      sim.url,
      "maxBatchInputs: 5",
      "    cache: { enabled: true }",
      `auth: { keys: [{ key: "${key}", tenant: team-a }] }
tenants: { team-a: { limits: { tokens: { rate: 100000, per: 1h } } } }`,
    );
    const auth = { headers: { authorization: `Bearer ${key}` } };
    const inputs = ["one", "two words", "three more words", ["four", "and five"]];
    const answers = await Promise.all(inputs.map((input) => post(gw.url, { model: MODEL, input }, auth)));
    expect(sim.stats().embeddingCalls).toBe(1);
    for (const [i, a] of answers.entries()) {
      expect(a.headers["x-floodgate-cache"]).toBe("MISS");
      expect(a.headers["x-ratelimit-limit-tokens"]).toBe("100000");
      expect(a.json).toEqual((await alone({ input: inputs[i] })).json);
    }
    // Each member settled its own share; the shares are the call's usage.
    await eventually(
      async () =>
        (await metric(gw, "floodgate_ratelimit_tokens_total", 'kind="settled"')) === sim.stats().promptTokens,
    );
    // Each member's answer was stored as its own: asked again, it is a hit, with no call.
    const again = await post(gw.url, { model: MODEL, input: "two words" }, auth);
    expect(again.headers["x-floodgate-cache"]).toBe("HIT");
    expect(again.json).toEqual(answers[1]?.json);
    expect(sim.stats().embeddingCalls).toBe(1);
  });

  it("takes each member's tenant concurrency lease once the call holds its slot", async () => {
    const sim = await simulator();
    const key = "sk-team-a-0123456789";
    const gw = await gateway(
      sim.url,
      "maxBatchInputs: 2",
      "",
      `auth: { keys: [{ key: "${key}", tenant: team-a }] }
tenants: { team-a: { limits: { concurrency: 1 } } }`,
    );
    const auth = { headers: { authorization: `Bearer ${key}` } };
    const answers = await Promise.all(["a", "b"].map((input) => post(gw.url, { model: MODEL, input }, auth)));
    // One request of the tenant in flight at most: one member answered, the other refused as
    // it would be alone, and one call upstream.
    const statuses = answers.map((a) => a.status).sort();
    expect(statuses).toEqual([200, 429]);
    const refused = answers.find((a) => a.status === 429);
    expect(refused?.json).toMatchObject({ error: { code: "concurrency_limit_exceeded" } });
    expect(refused?.headers["retry-after-ms"]).toBeDefined();
    const served = answers.find((a) => a.status === 200);
    const input = served === answers[0] ? "a" : "b";
    expect(served?.json).toEqual((await alone({ input })).json);
    // The refused member's input was left out of the call.
    expect(sim.stats()).toMatchObject({ embeddingCalls: 1, embeddingInputs: 1 });
  });
});
