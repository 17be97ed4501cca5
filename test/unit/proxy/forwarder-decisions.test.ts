/** The forwarder's pure decisions: when a backend said to come back, and when a pool cannot serve (so the next may). */
import { describe, expect, it } from "vitest";
import { newContext } from "../../../src/context.js";
import { errors } from "../../../src/errors.js";
import { Exchange } from "../../../src/proxy/exchange.js";
import { cannotServe } from "../../../src/proxy/fallback.js";
import { RETRY_STATUSES, retryAfterMs } from "../../../src/proxy/forwarder.js";

describe("retryAfterMs", () => {
  it.each([
    [{ "retry-after-ms": "250" }, 250],
    [{ "retry-after-ms": "250", "retry-after": "9" }, 250],
    [{ "retry-after": "2" }, 2000],
    [{ "retry-after": "1.5" }, 1500],
    [{ "retry-after-ms": "-5", "retry-after": "1" }, 1000],
    [{ "retry-after": "soon" }, undefined],
    [{}, undefined],
  ])("%j → %s", (headers, expected) => {
    expect(retryAfterMs(headers)).toBe(expected);
  });

  it("an HTTP date counts from now, never negative", () => {
    const inTwo = new Date(Date.now() + 2000).toUTCString();
    const ms = retryAfterMs({ "retry-after": inTwo }) ?? -1;
    expect(ms).toBeGreaterThan(0);
    expect(ms).toBeLessThanOrEqual(2000);
    expect(retryAfterMs({ "retry-after": new Date(0).toUTCString() })).toBe(0);
  });
});

describe("cannotServe (the fallback walk goes on)", () => {
  const state = (abort?: "client" | "total") => {
    const s = newContext();
    const ex = new Exchange(60_000, { band: 0, tenant: "", weight: 1, deadline: 0, patient: false });
    if (abort) ex.abort(abort);
    s.exchange = ex;
    return s;
  };

  it("busy or broken answers and no backend: the next pool may serve", () => {
    expect(cannotServe(errors.noBackendAvailable("p", 1000), state())).toBe(true);
    expect(cannotServe(errors.upstreamUnavailable(), state())).toBe(true);
    expect(cannotServe(errors.upstreamBadResponse(), state())).toBe(true);
    expect(cannotServe(errors.upstreamTimeout("first_byte"), state())).toBe(true);
  });

  it("not after the total timeout, not when the client left, not for the client's own errors or a bug", () => {
    expect(cannotServe(errors.upstreamTimeout("total"), state())).toBe(false);
    expect(cannotServe(errors.upstreamUnavailable(), state("client"))).toBe(false);
    expect(cannotServe(errors.invalidRequest("bad"), state())).toBe(false);
    expect(cannotServe(errors.bodyTooLarge(10), state())).toBe(false);
    expect(cannotServe(new Error("bug"), state())).toBe(false);
  });

  it("one set of retryable statuses: the overloaded and the broken", () => {
    expect([...RETRY_STATUSES].sort()).toEqual([429, 502, 503, 504]);
  });
});
