/** retry.on: Envoy's retry conditions, parsed from YAML and compiled once into statuses and booleans. */
import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../../src/config/index.js";
import { compileRetryOn } from "../../../src/config/retry-on.js";

const pool = (retry: string) =>
  `pools:\n  p:\n    models: [m]\n    backends: [{ url: "http://127.0.0.1:9000" }]\n${retry ? `    retry: ${retry}\n` : ""}`;

function retryOf(retry: string) {
  const r = parseConfig(pool(retry), "gateway.yaml", {}).pools.p?.retry;
  if (!r) throw new Error("no pool p");
  return r;
}

function errorOf(retry: string): ConfigError {
  try {
    parseConfig(pool(retry), "gateway.yaml", {});
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error("config was accepted");
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe("retry.on", () => {
  it("defaults to connect-failure, reset, 5xx and retriable-status-codes with statusCodes [429]", () => {
    const r = retryOf("");
    expect(r.on).toEqual(["connect-failure", "reset", "5xx", "retriable-status-codes"]);
    expect(r.statusCodes).toEqual([429]);
    expect([...r.when.statuses].sort()).toEqual([429, ...range(500, 599)]);
    expect(r.when).toMatchObject({ connectFailure: true, reset: true, badResponse: true });
  });

  it("compiles each condition as Envoy defines it", () => {
    const sorted = (s: ReadonlySet<number>) => [...s].sort((a, b) => a - b);
    const connect = compileRetryOn(["connect-failure"], [429]);
    expect(sorted(connect.statuses)).toEqual([]);
    expect(connect).toMatchObject({ connectFailure: true, reset: false, badResponse: false });

    // A reset covers a connect that failed too: the backend did not answer either way.
    const reset = compileRetryOn(["reset"], []);
    expect(sorted(reset.statuses)).toEqual([]);
    expect(reset).toMatchObject({ connectFailure: true, reset: true, badResponse: false });

    const gateway = compileRetryOn(["gateway-error"], []);
    expect(sorted(gateway.statuses)).toEqual([502, 503, 504]);
    expect(gateway).toMatchObject({ connectFailure: true, reset: true, badResponse: true });

    const any5xx = compileRetryOn(["5xx"], []);
    expect(sorted(any5xx.statuses)).toEqual(range(500, 599));
    expect(any5xx).toMatchObject({ connectFailure: true, reset: true, badResponse: true });

    expect(sorted(compileRetryOn(["retriable-4xx"], [429]).statuses)).toEqual([409]);
    // statusCodes count only with retriable-status-codes, as in Envoy.
    expect(sorted(compileRetryOn(["retriable-status-codes"], [429, 425]).statuses)).toEqual([425, 429]);
    expect(sorted(compileRetryOn(["gateway-error"], [429]).statuses)).toEqual([502, 503, 504]);

    const none = compileRetryOn([], [429]);
    expect(sorted(none.statuses)).toEqual([]);
    expect(none).toMatchObject({ connectFailure: false, reset: false, badResponse: false });
  });

  it("reads the list and the status codes from YAML, compiled once into the decoded config", () => {
    const r = retryOf(
      "{ on: [gateway-error, retriable-4xx, retriable-status-codes], statusCodes: [429, 425] }",
    );
    expect(r.on).toEqual(["gateway-error", "retriable-4xx", "retriable-status-codes"]);
    expect([...r.when.statuses].sort()).toEqual([409, 425, 429, 502, 503, 504]);
    expect(r.when.statuses.has(500)).toBe(false);
    // The other retry settings keep their defaults and decoding.
    expect(r.attempts).toBe(2);
    expect(r.backoffBase).toBe(25);
  });

  it("an unknown condition is a config error naming its path and the accepted values", () => {
    const err = errorOf("{ on: [5xx, connect-timeout] }");
    expect(err.issues).toHaveLength(1);
    expect(err.message).toContain(
      'pools.p.retry.on[1]: must be one of: connect-failure, reset, 5xx, gateway-error, retriable-4xx, retriable-status-codes; got "connect-timeout"',
    );
  });

  it("a bare status code in on says where status codes go", () => {
    const err = errorOf("{ on: [5xx, 429] }");
    expect(err.issues).toHaveLength(1);
    expect(err.message).toContain("pools.p.retry.on[1]: must be one of:");
    expect(err.message).toContain(
      "status codes go in retry.statusCodes, with retriable-status-codes in retry.on",
    );
  });

  it("statusCodes take HTTP error statuses only", () => {
    const err = errorOf("{ statusCodes: [429, 200] }");
    expect(err.issues).toHaveLength(1);
    expect(err.message).toContain(
      "pools.p.retry.statusCodes[1]: must be >= 400, expected an HTTP error status, 400 to 599",
    );
  });
});
