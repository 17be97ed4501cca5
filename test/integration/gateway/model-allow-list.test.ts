/**
 * A tenant's model list (`tenants.X.models`) through a gateway with two tenants, in front of
 * real backends that count what they receive: a refused model reaches no backend and spends no
 * limit, a fallback pool serving a model off the list is skipped, /v1/models shows the list.
 */
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import { completion, jsonResponse, startUpstream, type TestUpstream } from "../../helpers/upstream.js";

const KEY_A = "sk-team-a-0123456789";
const KEY_B = "sk-team-b-0123456789";

let upstreams: TestUpstream[] = [];
let gw: RunningGateway | undefined;
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  await Promise.all(upstreams.map((u) => u.close()));
  upstreams = [];
});

/** A backend answering `status`: a completion naming the model it was asked for, or a 503. */
async function backend(status: 200 | 503): Promise<TestUpstream> {
  const u = await startUpstream((_req, res, record) => {
    if (status === 503) return jsonResponse(res, 503, { error: { message: "busy" } });
    const model = (JSON.parse(record.body) as { model: string }).model;
    jsonResponse(res, 200, { ...completion, model });
  });
  upstreams.push(u);
  return u;
}

/**
 * Pools small (llama-8b), big (llama-70b, the expensive one) and mid (mid-model, falling back to
 * big, then small). team-a may use mid-model and llama-8*; team-b any model.
 */
async function setup(auth = true) {
  const [small, big, mid] = [await backend(200), await backend(200), await backend(503)];
  const keys = auth
    ? `auth: { keys: [{ key: "${KEY_A}", tenant: team-a }, { key: "${KEY_B}", tenant: team-b }] }\n`
    : "";
  gw = await startGateway(`${keys}tenants:
  team-a: { models: [mid-model, "llama-8*"], limits: { requests: { rate: 2, per: 1m } } }
  team-b: {}
pools:
  small: { models: [llama-8b], backends: [{ url: "${small.url}" }] }
  big: { models: [llama-70b], backends: [{ url: "${big.url}" }] }
  mid:
    models: [mid-model]
    backends: [{ url: "${mid.url}" }]
    retry: { attempts: 0 }
    outlierDetection: { enabled: false }
    fallback: [big, small]
`);
  return { small, big, mid, g: gw };
}

async function chat(g: RunningGateway, model: string, key?: string) {
  const res = await request(`${g.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ model, max_tokens: 2, messages: [{ role: "user", content: "hi" }] }),
  });
  return {
    status: res.statusCode,
    headers: res.headers,
    body: (await res.body.json()) as Record<string, unknown>,
  };
}

async function listModels(g: RunningGateway, key?: string): Promise<string[]> {
  const res = await request(`${g.url}/v1/models`, {
    headers: key ? { authorization: `Bearer ${key}` } : {},
  });
  expect(res.statusCode).toBe(200);
  const body = (await res.body.json()) as { object: string; data: { id: string }[] };
  expect(body.object).toBe("list");
  return body.data.map((m) => m.id).sort();
}

describe("a tenant's model list", () => {
  it("a model off the list: 404 model_not_found, no backend called, no limit spent", async () => {
    const { small, big, mid, g } = await setup();
    for (let i = 0; i < 3; i++) {
      const r = await chat(g, "llama-70b", KEY_A);
      expect(r.status).toBe(404);
      expect(r.body).toEqual({
        error: {
          message: "The model 'llama-70b' does not exist or you do not have access to it.",
          type: "invalid_request_error",
          code: "model_not_found",
          param: "model",
        },
      });
      expect(r.headers["x-should-retry"]).toBe("false");
    }
    // Indistinguishable from a model nobody serves.
    expect((await chat(g, "no-such-model", KEY_A)).body).toMatchObject({
      error: { code: "model_not_found" },
    });
    expect(big.received).toHaveLength(0);
    expect(mid.received).toHaveLength(0);
    // Its limit of 2 requests a minute is whole: the refusals took nothing from it.
    expect((await chat(g, "llama-8b", KEY_A)).status).toBe(200);
    expect((await chat(g, "llama-8b", KEY_A)).status).toBe(200);
    expect((await chat(g, "llama-8b", KEY_A)).status).toBe(429);
    expect(small.received).toHaveLength(2);
  });

  it("a model on the list, by name or pattern, is served; the other tenant may use any model", async () => {
    const { small, big, g } = await setup();
    const a = await chat(g, "llama-8b", KEY_A);
    expect(a.status).toBe(200);
    expect(a.body.model).toBe("llama-8b");
    expect(small.received).toHaveLength(1);
    const b = await chat(g, "llama-70b", KEY_B);
    expect(b.status).toBe(200);
    expect(big.received).toHaveLength(1);
  });

  it("fallback: a target serving a model off the list is skipped for the next one", async () => {
    const { small, big, mid, g } = await setup();
    const a = await chat(g, "mid-model", KEY_A);
    expect(a.status).toBe(200);
    expect(a.headers["x-floodgate-fallback"]).toBe("small");
    expect(a.body.model).toBe("llama-8b");
    expect(mid.received).toHaveLength(1);
    expect(big.received).toHaveLength(0);
    expect(small.received).toHaveLength(1);
    // team-b's chain is whole: big comes first.
    const b = await chat(g, "mid-model", KEY_B);
    expect(b.status).toBe(200);
    expect(b.headers["x-floodgate-fallback"]).toBe("big");
    expect(b.body.model).toBe("llama-70b");
    expect(big.received).toHaveLength(1);
    expect(small.received).toHaveLength(1);
    expect(mid.received).toHaveLength(2);
  });

  it("GET /v1/models lists only the tenant's models", async () => {
    const { g } = await setup();
    expect(await listModels(g, KEY_A)).toEqual(["llama-8b", "mid-model"]);
    expect(await listModels(g, KEY_B)).toEqual(["llama-70b", "llama-8b", "mid-model"]);
  });

  it("an open gateway (no auth) is unaffected: every model listed and served", async () => {
    const { big, g } = await setup(false);
    expect(await listModels(g)).toEqual(["llama-70b", "llama-8b", "mid-model"]);
    const r = await chat(g, "llama-70b");
    expect(r.status).toBe(200);
    expect(big.received).toHaveLength(1);
    const fell = await chat(g, "mid-model");
    expect(fell.headers["x-floodgate-fallback"]).toBe("big");
  });
});
