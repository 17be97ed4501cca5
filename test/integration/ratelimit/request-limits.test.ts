/** A request limit's refusal, as a client reads it: the limit described as configured, and its headers. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { formatRate } from "../../../src/config/units.js";
import { formatReset } from "../../../src/ratelimit/headers.js";
import { type RunningGateway, startGateway } from "../../helpers/gateway.js";
import type { TestUpstream } from "../../helpers/upstream.js";
import { chat, startLlmUpstream } from "./fixtures.js";

let upstream: TestUpstream;
let gw: RunningGateway;

beforeAll(async () => {
  upstream = await startLlmUpstream();
  // One a minute after a burst of three: nothing refills while the test runs.
  gw = await startGateway(`rateLimits: [{ name: per-ip, by: ip, rate: 1, per: 1m, burst: 3 }]
pools: { p: { models: [m], backends: [{ url: "${upstream.url}" }], loadSignals: { enabled: false } } }
`);
});
afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe("a request limit", () => {
  it("reads as rate/period with its burst, not as burst per refill time", () => {
    expect(formatRate(5, 1000, 10)).toBe("5/s (burst 10)");
    expect(formatRate(100, 60_000, 100)).toBe("100/m");
    expect(formatRate(3, 10_000)).toBe("3/10s");
    expect(formatRate(0.5, 3_600_000, 2)).toBe("0.5/h (burst 2)");
  });

  it("its reset reads as minutes and seconds, the seconds rounded before the split", () => {
    expect(formatReset(179_600)).toBe("3m0s");
    expect(formatReset(150_400)).toBe("2m30s");
    expect(formatReset(1500)).toBe("1.5s");
  });

  it("its 429 says the limit as configured and carries the x-ratelimit-*-requests family", async () => {
    const remaining: string[] = [];
    for (let i = 0; i < 3; i++) {
      const ok = await chat(gw.url, undefined);
      expect(ok.status).toBe(200);
      remaining.push(String(ok.headers["x-ratelimit-remaining-requests"]));
    }
    expect(remaining).toEqual(["2", "1", "0"]);

    const refused = await chat(gw.url, undefined);
    expect(refused.status).toBe(429);
    const { error } = JSON.parse(refused.body) as { error: { code: string; message: string } };
    expect(error.code).toBe("requests_limit_exceeded");
    expect(error.message).toContain("Rate limit reached for requests: 1/m (burst 3); limit per-ip, by ip.");
    expect(refused.headers["x-ratelimit-limit-requests"]).toBe("3");
    expect(refused.headers["x-ratelimit-remaining-requests"]).toBe("0");
    // Three tokens at one a minute: the bucket is full again in about three minutes.
    expect(refused.headers["x-ratelimit-reset-requests"]).toMatch(/^(2m5\d|3m0)s$/);
    expect(refused.headers["ratelimit-limit"]).toBe("3");
    expect(refused.headers["ratelimit-remaining"]).toBe("0");
    // The next request is let through when one token is back: within the minute.
    const retryMs = Number(refused.headers["retry-after-ms"]);
    expect(retryMs).toBeGreaterThan(0);
    expect(retryMs).toBeLessThanOrEqual(60_000);
    expect(refused.headers["x-should-retry"]).toBe("true");
  });
});
