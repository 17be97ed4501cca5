/**
 * The admin listener's /status page over plain HTTP: served without a token because it holds no
 * data (no pool, backend or URL in it), with headers that let only its own inline script and
 * style run (their hashes match), and / sending a browser there. /admin/status, which the page
 * reads, reports the store.
 */
import { createHash } from "node:crypto";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSim } from "../../../src/sim/index.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";

const TOKEN = "test-admin-token-0123456789";
let sim: SimServer;
let gw: RunningGateway;

beforeAll(async () => {
  sim = await startSim({ models: ["m"], prefillMsPerToken: 0, decodeMsPerSeq: 0 });
  gw = await startGateway(`pools:
  secret-pool-name:
    models: [m]
    backends: [{ url: "${sim.url}", name: secret-backend-name }]
`);
});
afterAll(async () => {
  await gw?.close();
  await sim?.close();
});

const sha256 = (text: string) => `'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`;

describe("GET /status on the admin listener", () => {
  it("needs no token and holds no data", async () => {
    const res = await request(`${gw.adminUrl}/status`);
    expect(res.statusCode).toBe(200);
    const html = await res.body.text();
    expect(html).toMatch(/^<!doctype html>/);
    for (const secret of ["secret-pool-name", "secret-backend-name", sim.url, TOKEN]) {
      expect(html).not.toContain(secret);
    }
    // It fetches from this listener only, by path.
    expect(html).toContain('fetch("/admin/status"');
    expect(html).toContain('fetch("/metrics"');
    expect(html).not.toMatch(/https?:\/\//);
  });

  it("sends a strict CSP whose hashes are those of its one script and one style", async () => {
    const res = await request(`${gw.adminUrl}/status`);
    const html = await res.body.text();
    expect(res.headers["content-type"]).toBe("text/html; charset=utf-8");
    expect(res.headers["cache-control"]).toBe("no-store");
    expect(res.headers["x-content-type-options"]).toBe("nosniff");
    expect(res.headers["referrer-policy"]).toBe("no-referrer");
    const csp = String(res.headers["content-security-policy"]);
    const directives = new Map(
      csp.split(";").map((d) => {
        const [name = "", ...values] = d.trim().split(/\s+/);
        return [name, values.join(" ")] as const;
      }),
    );
    const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1] ?? "");
    const styles = [...html.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => m[1] ?? "");
    expect(scripts).toHaveLength(1);
    expect(styles).toHaveLength(1);
    expect(html).not.toMatch(/<script[^>]*\ssrc=|\sstyle="|\son[a-z]+="/i);
    expect(directives.get("default-src")).toBe("'none'");
    expect(directives.get("script-src")).toBe(sha256(scripts[0] ?? ""));
    expect(directives.get("style-src")).toBe(sha256(styles[0] ?? ""));
    expect(directives.get("connect-src")).toBe("'self'");
    expect(directives.get("img-src")).toBe("'self' data:");
    expect(directives.get("base-uri")).toBe("'none'");
    expect(directives.get("form-action")).toBe("'none'");
    expect(directives.get("frame-ancestors")).toBe("'none'");
  });

  it("/ redirects to /status", async () => {
    const res = await request(`${gw.adminUrl}/`);
    await res.body.text();
    expect(res.statusCode).toBe(302);
    expect(res.headers.location).toBe("/status");
  });

  it("/admin/status still wants the token, and reports the store", async () => {
    const refused = await request(`${gw.adminUrl}/admin/status`);
    await refused.body.text();
    expect(refused.statusCode).toBe(401);
    const res = await request(`${gw.adminUrl}/admin/status`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(res.statusCode).toBe(200);
    const status = (await res.body.json()) as { store: unknown; pools: { name: string }[] };
    expect(status.store).toEqual({ kind: "memory", degraded: false });
    expect(status.pools.map((p) => p.name)).toEqual(["secret-pool-name"]);
  });
});
