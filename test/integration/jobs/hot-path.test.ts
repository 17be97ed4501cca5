/**
 * Async requests cost a synchronous request one header read at most: with jobs on, the
 * `prefer` header, read once; nothing else it did not read before. Counted by reading the
 * request's headers through a Proxy that records each name asked for.
 */
import { afterEach, expect, it } from "vitest";
import { buildGateway, type Gateway } from "../../../src/app.js";
import { parseConfig } from "../../../src/config/index.js";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { call, chatBody } from "./helpers.js";

const KEY = "sk-tenant-a-0123456789";
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function headerReads(sim: SimServer, jobs: boolean, stream: boolean): Promise<string[]> {
  const config = parseConfig(
    `listen: { host: 127.0.0.1, port: 0 }
admin: { enabled: false }
log: { level: silent }
auth: { keys: [{ key: "${KEY}", tenant: a }] }
tenants: { a: {} }
jobs: { enabled: ${jobs} }
pools: { sims: { models: [sim-model], healthCheck: { enabled: false }, loadSignals: { enabled: false }, backends: [{ url: "${sim.url}", engine: vllm }] } }`,
    "test",
    {},
  );
  const gateway: Gateway = buildGateway(config, { processMetrics: false });
  cleanups.push(() => gateway.close());
  const reads: string[] = [];
  // Root hooks run before those of the routes' scope (the API-key hook) and the handlers.
  gateway.app.addHook("onRequest", (request, _reply, done) => {
    const headers = request.raw.headers;
    request.raw.headers = new Proxy(headers, {
      get(target, name, receiver) {
        if (typeof name === "string") reads.push(name);
        return Reflect.get(target, name, receiver);
      },
    });
    done();
  });
  const { url } = await gateway.listen();
  const answer = await call(`${url}/v1/chat/completions`, { body: chatBody({ stream }), key: KEY });
  expect(answer.status).toBe(200);
  return reads.sort();
}

it("jobs on add one header read to a synchronous request (prefer), jobs off none", async () => {
  const sim = await startSim({
    models: ["sim-model"],
    prefillMsPerToken: 0,
    decodeMsPerSeq: 0,
    decodeStepMs: 1,
  });
  cleanups.push(() => sim.close());
  for (const stream of [false, true]) {
    const off = await headerReads(sim, false, stream);
    const on = await headerReads(sim, true, stream);
    const added = [...on];
    for (const name of off) {
      const i = added.indexOf(name);
      if (i !== -1) added.splice(i, 1);
    }
    expect(added).toEqual(["prefer"]);
    expect(off).not.toContain("prefer");
    // The job credential is read only on a request made in process.
    expect(on).not.toContain("x-floodgate-job");
    expect(on.length).toBe(off.length + 1);
  }
});
