/** What a valid config exposes or refuses without meaning to: the warnings. */
import { describe, expect, it } from "vitest";
import { configWarnings, formatWarning, parseConfig } from "../../../src/config/index.js";

const POOLS = "pools: { p: { models: [m], backends: [{ url: http://127.0.0.1:9000 }] } }";
describe("configWarnings", () => {
  const warnings = (yaml: string) => configWarnings(parseConfig(yaml, "gateway.yaml", {})).map(formatWarning);

  it("an open gateway on a non-loopback address", () => {
    expect(warnings(`listen: { host: 0.0.0.0, port: 8080 }\n${POOLS}`)).toEqual([
      "auth: none, and listen.host 0.0.0.0 is not a loopback address: anyone who can reach port 8080 can use the GPUs (add auth.keys, or set listen.host: 127.0.0.1)",
    ]);
    // The schema's default address is every interface.
    expect(warnings(POOLS)).toHaveLength(1);
  });

  it("no warning on loopback, or with keys", () => {
    expect(warnings(`listen: { host: 127.0.0.1 }\n${POOLS}`)).toEqual([]);
    expect(warnings(`listen: { host: "::1" }\n${POOLS}`)).toEqual([]);
    expect(
      warnings(`listen: { host: 0.0.0.0 }
auth: { keys: [{ sha256: ${"a".repeat(64)}, tenant: t }] }
tenants: { t: {} }
${POOLS}`),
    ).toEqual([]);
  });

  it("a token budget no larger than tokens.defaultMaxTokens: every request without max_tokens is refused", () => {
    const out = warnings(`listen: { host: 127.0.0.1 }
tokens: { defaultMaxTokens: 1024 }
tenants:
  small: { limits: { tokens: { rate: 500, per: 1m } } }
  exact: { limits: { tokens: { rate: 100000, per: 1h, burst: 1024 } } }
  roomy: { limits: { tokens: { rate: 200000, per: 1m } } }
  burst: { limits: { tokens: { rate: 100, per: 1s, burst: 4096 } } }
${POOLS}`);
    expect(out).toEqual([
      "tenants.small.limits.tokens: a budget of 500 tokens is not above tokens.defaultMaxTokens (1024), which every request without max_tokens reserves: each such request is refused with a 429 (raise burst (or rate) above 1024, lower tokens.defaultMaxTokens, or have clients send max_tokens)",
      expect.stringContaining("tenants.exact.limits.tokens: a budget of 1024 tokens is not above"),
    ]);
  });

  it("a smaller tokens.defaultMaxTokens silences it", () => {
    expect(
      warnings(`listen: { host: 127.0.0.1 }
tokens: { defaultMaxTokens: 256 }
tenants: { small: { limits: { tokens: { rate: 500, per: 1m } } } }
${POOLS}`),
    ).toEqual([]);
  });
});
