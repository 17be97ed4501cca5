/** The forwarder's pure decisions: when a backend said to come back, and when a pool cannot serve (so the next may). */
import { describe, expect, it } from "vitest";
import { compileRetryOn, type RetryCondition } from "../../../src/config/retry-on.js";
import { newContext } from "../../../src/context.js";
import { errors } from "../../../src/errors.js";
import { Exchange } from "../../../src/proxy/exchange.js";
import { cannotServe } from "../../../src/proxy/fallback.js";
import { retryAfterMs } from "../../../src/proxy/forwarder.js";

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
  const defaults = compileRetryOn(["connect-failure", "reset", "5xx", "retriable-status-codes"], [429]);
  const only = (...on: RetryCondition[]) => compileRetryOn(on, [429]);
  const refused = () =>
    errors.upstreamUnavailable().causedBy(Object.assign(new Error("refused"), { code: "ECONNREFUSED" }));
  const reset = () =>
    errors.upstreamUnavailable().causedBy(Object.assign(new Error("reset"), { code: "ECONNRESET" }));
  const state = (abort?: "client" | "total") => {
    const s = newContext();
    const ex = new Exchange(60_000, { band: 0, tenant: "", weight: 1, deadline: 0, patient: false });
    if (abort) ex.abort(abort);
    s.exchange = ex;
    return s;
  };

  it("busy or broken answers and no backend: the next pool may serve", () => {
    expect(cannotServe(errors.noBackendAvailable("p", 1000), state(), defaults)).toBe(true);
    expect(cannotServe(refused(), state(), defaults)).toBe(true);
    expect(cannotServe(reset(), state(), defaults)).toBe(true);
    expect(cannotServe(errors.upstreamBadResponse(), state(), defaults)).toBe(true);
    expect(cannotServe(errors.upstreamTimeout("first_byte"), state(), defaults)).toBe(true);
  });

  it("not after the total timeout, not when the client left, not for the client's own errors or a bug", () => {
    expect(cannotServe(errors.upstreamTimeout("total"), state(), defaults)).toBe(false);
    expect(cannotServe(errors.upstreamUnavailable(), state("client"), defaults)).toBe(false);
    expect(cannotServe(errors.invalidRequest("bad"), state(), defaults)).toBe(false);
    expect(cannotServe(errors.bodyTooLarge(10), state(), defaults)).toBe(false);
    expect(cannotServe(errors.rateLimited("concurrency", "2 at once", 100), state(), defaults)).toBe(false);
    expect(cannotServe(new Error("bug"), state(), defaults)).toBe(false);
  });

  it("a failed attempt walks on only where the pool's retry.on names it; the pool's own refusal always", () => {
    const connectOnly = only("connect-failure");
    expect(cannotServe(refused(), state(), connectOnly)).toBe(true);
    expect(cannotServe(errors.upstreamTimeout("connect"), state(), connectOnly)).toBe(true);
    expect(cannotServe(reset(), state(), connectOnly)).toBe(false);
    expect(cannotServe(errors.upstreamTimeout("first_byte"), state(), connectOnly)).toBe(false);
    expect(cannotServe(errors.upstreamBadResponse(), state(), connectOnly)).toBe(false);
    expect(cannotServe(errors.upstreamTimeout("idle"), state(), only("reset"))).toBe(true);
    expect(cannotServe(errors.upstreamBadResponse(), state(), only("reset"))).toBe(false);
    expect(cannotServe(errors.upstreamBadResponse(), state(), only("gateway-error"))).toBe(true);
    const none = only();
    expect(cannotServe(refused(), state(), none)).toBe(false);
    expect(cannotServe(errors.noBackendAvailable("p", 1000), state(), none)).toBe(true);
    expect(cannotServe(errors.queueRefused("queue_full", "p", "interactive", 100), state(), none)).toBe(true);
  });
});
