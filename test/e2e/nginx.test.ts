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
import { eventually } from "../helpers/eventually.js";
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
    // nginx cannot report a port it chose: a probed free port may be taken before nginx binds
    // it, and then nginx exits. Start again on another.
    for (let attempt = 1; ; attempt++) {
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
      const child = spawn(NGINX as string, ["-c", file, "-p", dir, "-g", "daemon off; master_process off;"], {
        stdio: "ignore",
      });
      nginx = child;
      url = `http://127.0.0.1:${port}`;
      const up = await eventually(
        async () => {
          if (child.exitCode !== null || child.signalCode !== null) return "exited";
          try {
            const res = await request(`${url}/healthz`);
            await res.body.dump();
            // Ours, not a stranger that took the port: nginx names itself.
            return String(res.headers.server ?? "").startsWith("nginx") ? "up" : "stranger";
          } catch {
            return undefined;
          }
        },
        { what: `nginx on ${port}` },
      );
      if (up === "up") break;
      child.kill("SIGKILL");
      if (attempt === 5) throw new Error(`nginx did not start on a free port: ${up}`);
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

  it("passes a client's X-Request-Id through; without one, floodgate gets nginx's $request_id", async () => {
    const own = await request(`${url}/v1/models`, { headers: { "x-request-id": "client-trace-42" } });
    await own.body.dump();
    expect(own.statusCode).toBe(200);
    expect(own.headers["x-request-id"]).toBe("client-trace-42");
    const ids = new Set<string>();
    for (let i = 0; i < 2; i++) {
      const res = await request(`${url}/v1/models`);
      await res.body.dump();
      ids.add(String(res.headers["x-request-id"]));
    }
    // nginx's $request_id: 32 hex digits, new for each request (floodgate's own would be a UUID).
    expect([...ids]).toEqual([
      expect.stringMatching(/^[0-9a-f]{32}$/),
      expect.stringMatching(/^[0-9a-f]{32}$/),
    ]);
  });

  it("passes floodgate's 503 and its retry headers through unchanged", async () => {
    const headers = { "content-type": "application/json" };
    const chat = (maxTokens: number) =>
      JSON.stringify({
        model: "sim-model",
        max_tokens: maxTokens,
        messages: [{ role: "user", content: "x" }],
      });
    // The holder takes the one slot for 200 tokens of 40 ms, longer than any stall; it is
    // cut off once the test has its answer.
    const before = sim.stats().received;
    const controller = new AbortController();
    const holder = request(`${url}/v1/chat/completions`, {
      method: "POST",
      headers,
      body: chat(200),
      signal: controller.signal,
    }).catch(() => undefined);
    try {
      await eventually(() => sim.stats().received === before + 1, { what: "the holder at the backend" });
      const res = await request(`${url}/v1/chat/completions`, { method: "POST", headers, body: chat(20) });
      expect(res.statusCode).toBe(503);
      // When the slot in use is expected to free, with up to 20% jitter, as floodgate sent it.
      expect(Number(res.headers["retry-after-ms"])).toBeGreaterThan(0);
      expect(Number(res.headers["retry-after-ms"])).toBeLessThanOrEqual(1200);
      expect(res.headers["x-should-retry"]).toBe("true");
      expect(await res.body.json()).toMatchObject({ error: { code: "queue_full" } });
    } finally {
      controller.abort();
      await holder;
    }
  });
});
