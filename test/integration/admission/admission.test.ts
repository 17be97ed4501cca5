/**
 * Admission control through a real gateway in front of `floodgate sim` backends: waiting for a
 * slot, leaving while queued, refusals that say when to come back, priority and fairness order,
 * vLLM's priority field, fallback, shutdown, and what metrics and /admin/status show.
 *
 * Order is observed, not timed: a request "holds" the only slot with a slow generation, others
 * queue behind it, and the order in which they finish is the order the queue handed out slots.
 */
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type SimOptions, type SimServer, startSim } from "../../../src/sim/index.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function sim(options: Partial<SimOptions> = {}): Promise<SimServer> {
  const s = await startSim({
    models: ["m"],
    decodeStepMs: 2,
    decodeMsPerSeq: 0,
    prefillMsPerToken: 0,
    ...options,
  });
  cleanups.push(() => s.close());
  return s;
}

async function gateway(yaml: string): Promise<RunningGateway> {
  const gw = await startGateway(yaml);
  cleanups.push(() => gw.close());
  return gw;
}

const KEYS = `auth:
  keys:
    - { key: key-interactive, tenant: chat }
    - { key: key-batch, tenant: jobs }
    - { key: key-other, tenant: other }
tenants:
  chat: { priority: interactive }
  jobs: { priority: batch }
  other: { priority: interactive }
`;

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json(): { error?: { code?: string } } & Record<string, unknown>;
}

async function chat(
  gw: RunningGateway,
  options: {
    key?: string;
    maxTokens?: number;
    headers?: Record<string, string>;
    signal?: AbortSignal;
    body?: Record<string, unknown>;
    model?: string;
  } = {},
): Promise<Answer> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(options.key ? { authorization: `Bearer ${options.key}` } : {}),
      ...options.headers,
    },
    body: JSON.stringify({
      model: options.model ?? "m",
      max_tokens: options.maxTokens ?? 2,
      messages: [{ role: "user", content: "hi" }],
      ...options.body,
    }),
    signal: options.signal,
  });
  const body = await res.body.text();
  return {
    status: res.statusCode,
    headers: res.headers,
    body,
    json: () => JSON.parse(body),
  };
}

async function waitFor(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting for: ${what}`);
}

function queued(gw: RunningGateway, pool = "p"): number {
  return gw.gateway.upstreams.pools.get(pool)?.admission.queue.total ?? -1;
}

/** A pool of one backend with one slot, and a long generation to hold it. */
async function oneSlot(extra = "", simOptions: Partial<SimOptions> = {}, top = "") {
  const s = await sim({ decodeStepMs: 20, ...simOptions });
  const gw = await gateway(`${top}pools:
  p:
    models: [m]
    backends: [{ url: "${s.url}", maxConcurrency: 1 }]
    admission: { bands: { interactive: { maxWait: 30s }, batch: { maxWait: 30s }, background: { maxWait: 30s } } }
${extra}`);
  const hold = (key?: string) => chat(gw, { key, maxTokens: 25 });
  return { sim: s, gw, hold };
}

describe("admission: waiting for a slot", () => {
  it("a request that finds the slot taken waits, and is served when the slot frees", async () => {
    const { sim: s, gw, hold } = await oneSlot();
    const order: string[] = [];
    const holder = hold().then((r) => {
      order.push("holder");
      return r;
    });
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const waiter = chat(gw).then((r) => {
      order.push("waiter");
      return r;
    });
    await waitFor(() => queued(gw) === 1, "the second request queued");
    expect(s.stats().received).toBe(1);
    const [h, w] = await Promise.all([holder, waiter]);
    expect(h.status).toBe(200);
    expect(w.status).toBe(200);
    expect(order).toEqual(["holder", "waiter"]);
    expect(Number(w.headers["x-floodgate-queue-ms"])).toBeGreaterThan(0);
    expect(h.headers["x-floodgate-queue-ms"]).toBeUndefined();

    const text = await gw.gateway.metrics.registry.metrics();
    expect(text).toMatch(
      /floodgate_admission_decisions_total\{pool="p",band="interactive",outcome="immediate"\} 1/,
    );
    expect(text).toMatch(
      /floodgate_admission_decisions_total\{pool="p",band="interactive",outcome="after_wait"\} 1/,
    );
    expect(text).toMatch(/floodgate_admission_wait_seconds_count\{pool="p",band="interactive"\} 1/);
    expect(text).toMatch(/floodgate_admission_queue_depth\{pool="p",band="interactive"\} 0/);
    expect(text).toMatch(/floodgate_backend_slots\{pool="p",backend="[^"]+"\} 1/);
  });

  it("a client that leaves while queued is removed at once and never reaches the backend", async () => {
    const { sim: s, gw, hold } = await oneSlot();
    const holder = hold();
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const leaving = new AbortController();
    const gone = chat(gw, { signal: leaving.signal }).catch((err: unknown) => err);
    await waitFor(() => queued(gw) === 1, "queued");
    leaving.abort();
    await gone;
    await waitFor(() => queued(gw) === 0, "out of the queue");
    expect((await holder).status).toBe(200);
    // Another request after it gets the slot; the one that left never reached the backend.
    expect((await chat(gw)).status).toBe(200);
    expect(s.stats().received).toBe(2);
    const text = await gw.gateway.metrics.registry.metrics();
    expect(text).toMatch(/outcome="cancelled"\} 1/);
  });

  it("/admin/status shows the pool's queue, slots and drain rate", async () => {
    const { sim: s, gw, hold } = await oneSlot();
    const holder = hold();
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const waiter = chat(gw);
    await waitFor(() => queued(gw) === 1, "queued");
    const res = await request(`${gw.adminUrl}/admin/status`, {
      headers: { authorization: "Bearer test-admin-token-0123456789" },
    });
    const status = (await res.body.json()) as { pools: { admission: Record<string, unknown> }[] };
    expect(status.pools[0]?.admission).toMatchObject({
      enabled: true,
      waiting: { interactive: 1, batch: 0, background: 0 },
      slotsInUse: 1,
      slotCapacity: 1,
      drainMeasured: false,
    });
    await Promise.all([holder, waiter]);
  });
});

describe("admission: refusals a client can act on", () => {
  it("a request that cannot make its deadline is refused at once, with retry-after-ms from the measured drain rate", async () => {
    const { sim: s, gw, hold } = await oneSlot();
    // Measure: a dozen requests through the one slot, back to back.
    for (let i = 0; i < 12; i++) expect((await chat(gw, { maxTokens: 3 })).status).toBe(200);
    expect(gw.gateway.upstreams.pools.get("p")?.admission.drain.measured).toBe(true);
    const holder = hold();
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const waiting = [chat(gw), chat(gw), chat(gw)];
    await waitFor(() => queued(gw) === 3, "three queued");
    const refused = await chat(gw, { headers: { "x-floodgate-max-wait": "100ms" } });
    // Answered while the holder still runs and the three still wait: it did not wait its turn.
    expect(queued(gw)).toBe(3);
    expect(refused.status).toBe(503);
    expect(refused.json().error?.code).toBe("queue_deadline_unmeetable");
    expect(refused.headers["x-should-retry"]).toBe("true");
    expect(Number(refused.headers["retry-after-ms"])).toBeGreaterThan(0);
    expect(Number(refused.headers["retry-after"])).toBeGreaterThanOrEqual(1);
    for (const r of await Promise.all([holder, ...waiting])) expect(r.status).toBe(200);
    expect(s.stats().received).toBe(12 + 4);
  });

  it("a full band refuses with queue_full; a request past its own max wait gets queue_timeout", async () => {
    const s = await sim({ decodeStepMs: 20 });
    const gw = await gateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${s.url}", maxConcurrency: 1 }]
    admission: { bands: { interactive: { maxWait: 30s, maxQueue: 1 } } }
`);
    const holder = chat(gw, { maxTokens: 25 });
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const waiter = chat(gw);
    await waitFor(() => queued(gw) === 1, "one queued: the band is full");
    const full = await chat(gw);
    expect(full.status).toBe(503);
    expect(full.json().error?.code).toBe("queue_full");
    expect(Number(full.headers["retry-after-ms"])).toBeGreaterThan(0);
    expect((await waiter).status).toBe(200);
    const holder2 = chat(gw, { maxTokens: 25 });
    await waitFor(() => s.stats().running === 1, "a new holder runs");
    const timedOut = await chat(gw, { headers: { "x-floodgate-max-wait": "50ms" } });
    expect(timedOut.status).toBe(503);
    expect(timedOut.json().error?.code).toBe("queue_timeout");
    expect(Number(timedOut.headers["x-floodgate-queue-ms"])).toBeGreaterThanOrEqual(40);
    expect(timedOut.headers["retry-after-ms"]).toBeDefined();
    await Promise.all([holder, holder2]);
  });

  it("priority header: a bad value is a 400 naming the header", async () => {
    const { gw } = await oneSlot();
    const res = await chat(gw, { headers: { "x-floodgate-priority": "urgent" } });
    expect(res.status).toBe(400);
    expect(res.json()).toMatchObject({ error: { code: "invalid_request", param: "x-floodgate-priority" } });
    const wait = await chat(gw, { headers: { "x-floodgate-max-wait": "soon" } });
    expect(wait.status).toBe(400);
    expect(wait.json()).toMatchObject({ error: { param: "x-floodgate-max-wait" } });
  });
});

describe("admission: order between tenants", () => {
  it("interactive before batch, whatever the arrival order; a tenant may lower itself, never raise itself", async () => {
    const { sim: s, gw, hold } = await oneSlot("", {}, KEYS);
    const order: string[] = [];
    const send = (label: string, key: string, headers: Record<string, string> = {}) => {
      const p = chat(gw, { key, headers }).then((r) => {
        order.push(label);
        return r;
      });
      return p;
    };
    const holder = hold("key-interactive");
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const sent = [
      send("batch", "key-batch"),
      send("batch-asks-interactive", "key-batch", { "x-floodgate-priority": "interactive" }),
    ];
    await waitFor(() => queued(gw) === 2, "two batch requests queued");
    sent.push(send("interactive-lowered", "key-interactive", { "x-floodgate-priority": "background" }));
    await waitFor(() => queued(gw) === 3, "three queued");
    sent.push(send("interactive", "key-interactive"));
    await waitFor(() => queued(gw) === 4, "four queued");
    for (const r of await Promise.all([holder, ...sent])) expect(r.status).toBe(200);
    expect(order).toEqual(["interactive", "batch", "batch-asks-interactive", "interactive-lowered"]);
  });

  it("within a band, a tenant that floods the queue does not starve one that sends little", async () => {
    const { sim: s, gw, hold } = await oneSlot("", {}, KEYS);
    const order: string[] = [];
    const holder = hold("key-interactive");
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const flood = Array.from({ length: 6 }, (_, i) =>
      chat(gw, { key: "key-interactive" }).then(() => order.push(`flood-${i}`)),
    );
    await waitFor(() => queued(gw) === 6, "the flood queued");
    const light = chat(gw, { key: "key-other" }).then(() => order.push("light"));
    await Promise.all([holder, ...flood, light]);
    // Fair queuing: the light tenant's one request is served within the first two, not seventh.
    expect(order.indexOf("light")).toBeLessThanOrEqual(1);
  });
});

describe("admission: vLLM's priority field", () => {
  const vllmPool = (url: string, optIn: boolean) => `pools:
  p:
    models: [m]
    loadSignals: { enabled: false }
    backends: [{ url: "${url}", engine: vllm${optIn ? ", enginePriority: true" : ""} }]
`;

  it("opt-in: the band goes to a vLLM started with priority scheduling, which serves it first", async () => {
    // The engine's own queue decides here: one engine slot, no gateway slot cap.
    const s = await sim({ schedulingPolicy: "priority", slots: 1, decodeStepMs: 20 });
    const gw = await gateway(`${KEYS}${vllmPool(s.url, true)}`);
    const order: string[] = [];
    const holder = chat(gw, { key: "key-interactive", maxTokens: 25 });
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const batch = chat(gw, { key: "key-batch" }).then((r) => {
      order.push("batch");
      return r;
    });
    await waitFor(() => s.stats().waiting === 1, "batch waits in the engine");
    const interactive = chat(gw, { key: "key-interactive" }).then((r) => {
      order.push("interactive");
      return r;
    });
    await waitFor(() => s.stats().waiting === 2, "both wait in the engine");
    for (const r of await Promise.all([holder, batch, interactive])) expect(r.status).toBe(200);
    expect(order).toEqual(["interactive", "batch"]);
  });

  it("opt-in in front of a vLLM without priority scheduling: its 400 for a lower band comes back (hence opt-in)", async () => {
    const fcfs = await sim();
    const gw = await gateway(vllmPool(fcfs.url, true));
    // Band 0 is vLLM's default priority, which any vLLM accepts.
    expect((await chat(gw)).status).toBe(200);
    const res = await chat(gw, { headers: { "x-floodgate-priority": "batch" } });
    expect(res.status).toBe(400);
    expect(res.body).toMatch(/Priority scheduling is not enabled/);
  });

  it("without the opt-in, a client's own priority field is dropped for vLLM backends", async () => {
    const s = await sim();
    const gw = await gateway(vllmPool(s.url, false));
    const res = await chat(gw, { body: { priority: -100 } });
    expect(res.status).toBe(200);
    // The simulator itself refuses the field, as vLLM does: straight to it, the same body fails.
    const direct = await request(`${s.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "m",
        max_tokens: 2,
        priority: -100,
        messages: [{ role: "user", content: "x" }],
      }),
    });
    expect(direct.statusCode).toBe(400);
    await direct.body.dump();
  });
});

describe("admission: fallback and shutdown", () => {
  it("a queued request whose pool can no longer serve falls back; one that is merely waiting does not", async () => {
    const primary = await sim({ decodeStepMs: 20 });
    const backup = await sim({ models: ["m2"] });
    const gw = await gateway(`pools:
  p:
    models: [m]
    backends: [{ url: "${primary.url}", name: primary, maxConcurrency: 1 }]
    fallback: [q]
    admission: { bands: { interactive: { maxWait: 30s } } }
  q:
    models: [m2]
    backends: [{ url: "${backup.url}" }]
`);
    const holder = chat(gw, { maxTokens: 25 });
    await waitFor(() => primary.stats().running === 1, "the holder runs");
    const waiter = chat(gw);
    await waitFor(() => queued(gw) === 1, "queued");
    expect(backup.stats().received).toBe(0); // waiting is not a reason to fall back
    gw.gateway.upstreams.pools.get("p")?.setDrained("primary", true);
    const res = await waiter;
    expect(res.status).toBe(200);
    expect(res.headers["x-floodgate-fallback"]).toBe("q");
    expect(backup.stats().received).toBe(1);
    expect((await holder).status).toBe(200);
  });

  it("overflow: fallback sends a request refused for load down the chain; the default refuses", async () => {
    const primary = await sim({ decodeStepMs: 20 });
    const backup = await sim({ models: ["m2"] });
    const yaml = (overflow: string) => `pools:
  p:
    models: [m]
    backends: [{ url: "${primary.url}", maxConcurrency: 1 }]
    fallback: [q]
    admission: { overflow: ${overflow}, bands: { interactive: { maxQueue: 0 } } }
  q:
    models: [m2]
    backends: [{ url: "${backup.url}" }]
`;
    const over = await gateway(yaml("fallback"));
    const refuse = await gateway(yaml("refuse"));
    const holder = chat(over, { maxTokens: 25 });
    await waitFor(() => primary.stats().running === 1, "the holder runs");
    const overflowed = await chat(over);
    expect(overflowed.status).toBe(200);
    expect(overflowed.headers["x-floodgate-fallback"]).toBe("q");
    // The second gateway's pool is full too (its own slot, on the same busy server).
    const holder2 = chat(refuse, { maxTokens: 25 });
    await waitFor(() => refuse.gateway.upstreams.pools.get("p")?.inUse() === 1, "the second holder runs");
    const refused = await chat(refuse);
    expect(refused.status).toBe(503);
    expect(refused.json().error?.code).toBe("queue_full");
    expect(backup.stats().received).toBe(1);
    await Promise.all([holder, holder2]);
  });

  it("shutdown: queued requests are served if a slot frees within the grace, else refused with shutting_down", async () => {
    const { sim: s, gw } = await oneSlot("", {}, "server: { shutdownGrace: 1s }\n");
    // The holder runs past the grace's refusal point (900 ms); the queued request is told to come back.
    const holder = chat(gw, { maxTokens: 60 });
    await waitFor(() => s.stats().running === 1, "the holder runs");
    const waiter = chat(gw);
    await waitFor(() => queued(gw) === 1, "queued");
    const closing = gw.gateway.close();
    const res = await waiter;
    expect(res.status).toBe(503);
    expect(res.json().error?.code).toBe("shutting_down");
    expect(res.headers["x-should-retry"]).toBe("true");
    expect(res.headers["retry-after-ms"]).toBeDefined();
    expect((await holder).status).toBe(200);
    await closing;
  });
});
