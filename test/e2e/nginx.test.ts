/**
 * nginx.conf.example with a real nginx in front of floodgate and the simulator: the config is
 * valid, SSE tokens are not buffered by nginx, and floodgate's error headers pass through.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../src/sim/index.js";
import { type RunningGateway, startGateway } from "../helpers/gateway.js";
import { freePort } from "../helpers/ports.js";
import { postStream, spreadOf } from "../helpers/sse.js";

const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find((p) => existsSync(p));

describe.skipIf(!NGINX)("nginx.conf.example in front of floodgate", () => {
  let sim: SimServer;
  let gw: RunningGateway;
  let nginx: ChildProcess;
  let url: string;

  beforeAll(async () => {
    sim = await startSim({
      models: ["sim-model"],
      decodeStepMs: 40,
      decodeMsPerSeq: 0,
      prefillMsPerToken: 0,
    });
    gw = await startGateway(
      `server: { trustProxy: [127.0.0.1] }\npools: { s: { models: [sim-model], backends: [{ url: "${sim.url}", maxConcurrency: 1 }], admission: { bands: { interactive: { maxQueue: 0 } } } } }`,
    );
    const dir = mkdtempSync(join(tmpdir(), "floodgate-nginx-"));
    const port = await freePort();
    const conf = readFileSync("nginx.conf.example", "utf8")
      .replace("pid /run/nginx-floodgate.pid;", `pid ${dir}/nginx.pid;`)
      .replaceAll("/var/log/nginx/", `${dir}/`)
      .replace("server 127.0.0.1:8080", `server ${new URL(gw.url).host}`)
      .replace("listen 80;", `listen 127.0.0.1:${port};`)
      .replace("http {", `http {\n  client_body_temp_path ${dir}/body;\n  proxy_temp_path ${dir}/proxy;`);
    const file = join(dir, "nginx.conf");
    writeFileSync(file, conf);
    execFileSync(NGINX as string, ["-t", "-q", "-c", file, "-p", dir]);
    nginx = spawn(NGINX as string, ["-c", file, "-p", dir, "-g", "daemon off; master_process off;"], {
      stdio: "ignore",
    });
    url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        await (await request(`${url}/healthz`)).body.dump();
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  });

  afterAll(async () => {
    nginx?.kill("SIGTERM");
    await gw?.close();
    await sim?.close();
  });

  it("relays SSE tokens one by one (no buffering in nginx)", async () => {
    const { status, events } = await postStream(`${url}/v1/chat/completions`, {
      model: "sim-model",
      stream: true,
      max_tokens: 5,
      messages: [{ role: "user", content: "hi" }],
    });
    expect(status).toBe(200);
    expect(events.at(-1)?.data).toBe("[DONE]");
    const tokens = events.filter((e) => /"content":"[^"]/.test(e.data));
    expect(tokens).toHaveLength(5);
    const { medianGap, spread } = spreadOf(tokens);
    expect(medianGap).toBeGreaterThan(20);
    expect(spread).toBeGreaterThan(80);
  });

  it("passes floodgate's 503 and its retry headers through unchanged", async () => {
    const body = JSON.stringify({
      model: "sim-model",
      max_tokens: 20,
      messages: [{ role: "user", content: "x" }],
    });
    const headers = { "content-type": "application/json" };
    const holder = request(`${url}/v1/chat/completions`, { method: "POST", headers, body });
    await new Promise((r) => setTimeout(r, 100));
    const res = await request(`${url}/v1/chat/completions`, { method: "POST", headers, body });
    expect(res.statusCode).toBe(503);
    // When the slot in use is expected to free, with up to 20% jitter, as floodgate sent it.
    expect(Number(res.headers["retry-after-ms"])).toBeGreaterThan(0);
    expect(Number(res.headers["retry-after-ms"])).toBeLessThanOrEqual(1200);
    expect(res.headers["x-should-retry"]).toBe("true");
    expect(await res.body.json()).toMatchObject({ error: { code: "queue_full" } });
    await (await holder).body.dump();
  });
});
