/**
 * The admin listener's /status page in a real headless Chromium, in front of a real gateway and
 * two real simulators: a wrong token is refused and can be typed again, the right one shows the
 * pool and its backends, requests, shedding and cache hits show up in the counters and rates, a
 * drained backend shows as drained, and the page reaches no other origin, breaks no CSP rule and
 * logs no error. It leaves a screenshot in test/artifacts/ and docs/ (the README's).
 */
import { existsSync, mkdirSync } from "node:fs";
import { type Browser, chromium } from "playwright-core";
import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../src/sim/index.js";
import { eventually } from "../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../helpers/gateway.js";

const CHROMIUM = "/usr/bin/chromium";
const TOKEN = "test-admin-token-0123456789";
const client = new Agent({ connections: 32 });

/** A chat request through the gateway: `maxTokens` at 20 ms a token keeps a slot that long. */
async function chat(gw: RunningGateway, body: Record<string, unknown>): Promise<number> {
  const res = await request(`${gw.url}/v1/chat/completions`, {
    method: "POST",
    dispatcher: client,
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }], ...body }),
  });
  await res.body.text();
  return res.statusCode;
}

describe.skipIf(!existsSync(CHROMIUM))("the /status page in headless Chromium", () => {
  let sims: SimServer[] = [];
  let gw: RunningGateway;
  let browser: Browser;

  beforeAll(async () => {
    sims = await Promise.all(
      [0, 1].map(() =>
        startSim({
          models: ["m"],
          prefillMsPerToken: 0,
          decodeStepMs: 20,
          decodeMsPerSeq: 0,
          slots: 8,
          prefixCacheBlocks: 256,
        }),
      ),
    );
    // Two slots a backend and no admission queue: a fifth request at once is shed (queue_full).
    gw = await startGateway(`pools:
  chat:
    models: [m]
    backends:
      - { url: "${sims[0]?.url}", name: gpu-a, engine: vllm, maxConcurrency: 2 }
      - { url: "${sims[1]?.url}", name: gpu-b, engine: vllm, maxConcurrency: 2 }
    loadSignals: { interval: 500ms }
    admission: { maxQueue: 0 }
    cache: { enabled: true }
    affinity: { by: header }
`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  }, 30_000);

  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    await Promise.all(sims.map((s) => s.close()));
  });

  it("asks for the token, shows pools, rates and a drain, and reaches nothing but its own listener", async () => {
    const origin = new URL(gw.adminUrl).origin;
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const requested: string[] = [];
    const consoleErrors: { text: string; url: string }[] = [];
    const pageErrors: string[] = [];
    const violations: string[] = [];
    page.on("request", (r) => requested.push(r.url()));
    page.on("console", (m) => {
      if (m.type() === "error") consoleErrors.push({ text: m.text(), url: m.location().url });
    });
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.exposeFunction("reportViolation", (v: string) => violations.push(v));
    // Page-side code as text: this project compiles without the DOM library.
    await page.addInitScript({
      content: `document.addEventListener("securitypolicyviolation", (e) =>
        window.reportViolation(e.violatedDirective + " " + e.blockedURI + " " + e.sourceFile + ":" + e.lineNumber));`,
    });

    const response = await page.goto(`${gw.adminUrl}/status`);
    expect(response?.status()).toBe(200);
    const headers = response?.headers() ?? {};
    expect(headers["content-type"]).toBe("text/html; charset=utf-8");
    const csp = headers["content-security-policy"] ?? "";
    for (const directive of [
      "default-src 'none'",
      "connect-src 'self'",
      "img-src 'self' data:",
      "base-uri 'none'",
      "form-action 'none'",
      "frame-ancestors 'none'",
    ]) {
      expect(csp).toContain(directive);
    }
    expect(csp).toMatch(/script-src 'sha256-[A-Za-z0-9+/]+=*'/);
    expect(csp).toMatch(/style-src 'sha256-[A-Za-z0-9+/]+=*'/);
    expect(headers["cache-control"]).toBe("no-store");
    expect(headers["x-content-type-options"]).toBe("nosniff");
    expect(headers["referrer-policy"]).toBe("no-referrer");

    // A wrong token: refused, said so, and the field is there to type another.
    await page.getByLabel("Admin token", { exact: true }).fill("not-the-token");
    await page.getByRole("button", { name: "Show status" }).click();
    const error = page.locator("#login-error");
    await error.waitFor({ state: "visible", timeout: 15_000 });
    expect(await error.textContent()).toContain("admin token refused");
    expect(await page.locator("#overview").isVisible()).toBe(false);
    expect(await page.evaluate('sessionStorage.getItem("floodgate.adminToken")')).toBeNull();

    // The right one: the pool and both backends, healthy, closed, not drained.
    await page.getByLabel("Admin token", { exact: true }).fill(TOKEN);
    await page.getByRole("button", { name: "Show status" }).click();
    const row = (backend: string, field: string) =>
      page.locator(`[data-pool="chat"] tr[data-backend="${backend}"] [data-field="${field}"]`);
    await row("gpu-a", "health").waitFor({ timeout: 15_000 });
    for (const backend of ["gpu-a", "gpu-b"]) {
      expect(await row(backend, "name").textContent()).toBe(backend);
      expect(await row(backend, "health").textContent()).toBe("healthy");
      expect(await row(backend, "breaker").textContent()).toBe("closed");
      expect(await row(backend, "drained").textContent()).toBe("no");
    }
    expect(await page.locator('[data-pool="chat"] [data-field="pool-name"]').textContent()).toBe("chat");
    expect(await page.locator("#login").isVisible()).toBe(false);
    // Engine readings arrive from the simulators' /metrics.
    await eventually(async () => /waiting/.test((await row("gpu-a", "engine-queue").textContent()) ?? ""), {
      timeout: 15_000,
      interval: 100,
      what: "an engine reading for gpu-a",
    });

    // Traffic: a deterministic question asked three times (one miss, two hits), four long
    // requests filling the four slots, and three more shed while they run.
    const tile = (name: string, part: "big" | "small") => page.locator(`[data-tile="${name}"] .${part}`);
    const sawRate = (name: string) =>
      eventually(
        async () => {
          const text = (await tile(name, "big").textContent()) ?? "";
          return /^[\d.,]+\/s$/.test(text) && text !== "0.0/s";
        },
        { timeout: 20_000, interval: 50, what: `a ${name} rate above zero` },
      );
    const requestRateSeen = sawRate("requests");
    const shedRateSeen = sawRate("shed");
    const question = {
      temperature: 0,
      max_tokens: 4,
      messages: [{ role: "user", content: "What is a GPU?" }],
    };
    for (let i = 0; i < 3; i++) expect(await chat(gw, question)).toBe(200);
    const pool = gw.gateway.upstreams.pools.get("chat");
    const long = Array.from({ length: 4 }, () => chat(gw, { max_tokens: 120 }));
    await eventually(() => pool?.backends.reduce((n, b) => n + b.inFlight, 0) === 4, {
      what: "four requests in flight",
    });
    // The page sees the busy slots too.
    await eventually(async () => (await row("gpu-a", "in-flight").textContent())?.startsWith("2 / 2"), {
      timeout: 15_000,
      interval: 50,
      what: "gpu-a's slots full on the page",
    });
    const shed = await Promise.all(Array.from({ length: 3 }, () => chat(gw, { max_tokens: 2 })));
    expect(shed).toEqual([503, 503, 503]);
    expect(await Promise.all(long)).toEqual([200, 200, 200, 200]);
    await Promise.all([requestRateSeen, shedRateSeen]);
    await eventually(async () => (await tile("requests", "small").textContent()) === "10 total", {
      timeout: 15_000,
      interval: 100,
      what: "10 requests counted",
    });
    expect(await tile("shed", "small").textContent()).toMatch(/^3 total/);
    expect(await tile("cache", "small").textContent()).toBe("2 of 3 lookups");
    expect(await tile("cache", "big").textContent()).toBe("66.7%");
    expect(await tile("limited", "small").textContent()).toBe("0 total");
    expect(await tile("store", "big").textContent()).toBe("memory");
    expect(await tile("store", "small").textContent()).toBe("ok");
    expect(await tile("fleet", "big").textContent()).toBe("off");
    // The engines' prefix-cache hit ratio, from their counters between two readings.
    await eventually(
      async () =>
        (await Promise.all(["gpu-a", "gpu-b"].map((b) => row(b, "prefix-cache").textContent()))).some((t) =>
          /^\d+(\.\d)?%$/.test(t ?? ""),
        ),
      { timeout: 15_000, interval: 100, what: "a prefix-cache hit ratio" },
    );
    // Affinity by session: no request so far carried one; one that does goes to its home.
    const affinity = page.locator('[data-pool="chat"] [data-field="affinity"]');
    expect(await affinity.textContent()).toBe("by header \u00b7 no requests yet");
    expect(await chat(gw, { max_tokens: 2, user: "alice" })).toBe(200);
    await eventually(async () => (await affinity.textContent())?.includes("home 100%"), {
      timeout: 15_000,
      interval: 100,
      what: "a session's request shown as sent home",
    });
    expect(await affinity.textContent()).toBe("by header \u00b7 home 100%, spilled 0%, home unavailable 0%");

    // Drain gpu-b through the admin API: the page shows it within a few refreshes.
    const drained = await request(`${gw.adminUrl}/admin/pools/chat/backends/gpu-b/drain`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(drained.statusCode).toBe(200);
    await drained.body.text();
    await eventually(async () => (await row("gpu-b", "drained").textContent()) === "drained", {
      timeout: 15_000,
      interval: 100,
      what: "gpu-b shown drained",
    });
    expect(await row("gpu-a", "drained").textContent()).toBe("no");

    // The token lives in the tab's sessionStorage: a reload goes straight to the status.
    await page.reload();
    await row("gpu-b", "drained").waitFor({ timeout: 15_000 });
    expect(await page.locator("#login").isVisible()).toBe(false);

    // A screenshot under light load (as many workers as gpu-a has slots), for the eye and the
    // README, as tall as the page and no taller.
    let loading = true;
    const load = Array.from({ length: 2 }, async () => {
      while (loading) expect(await chat(gw, { max_tokens: 30 })).toBe(200);
    });
    await sawRate("requests");
    await page.setViewportSize({ width: 1280, height: 200 });
    mkdirSync("test/artifacts", { recursive: true });
    await page.screenshot({ path: "test/artifacts/status-page.png", fullPage: true });
    // The README's picture changes with every run (time, ports): rewritten only on request.
    if (process.env.UPDATE_DOCS_SCREENSHOT === "1") {
      mkdirSync("docs", { recursive: true });
      await page.screenshot({ path: "docs/status-page.png", fullPage: true });
    }
    loading = false;
    await Promise.all(load);

    // Nothing but the admin listener was asked for anything.
    expect(requested.length).toBeGreaterThan(4);
    for (const url of requested) {
      if (url.startsWith("data:")) continue;
      expect(new URL(url).origin, url).toBe(origin);
    }
    expect(violations).toEqual([]);
    expect(pageErrors).toEqual([]);
    // Chromium logs the refused token's 401 as a failed load; that one is expected, nothing else.
    const unexpected = consoleErrors.filter(
      (e) => !(e.url === `${origin}/admin/status` && e.text.includes("401")),
    );
    expect(unexpected).toEqual([]);
    expect(consoleErrors.length).toBe(1);
    await context.close();
  }, 55_000);
});
