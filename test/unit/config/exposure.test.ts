/** What a config exposes to the network: the admin token's strength off loopback, and the warnings. */
import { describe, expect, it } from "vitest";
import { ConfigError, configWarnings, formatWarning, parseConfig } from "../../../src/config/index.js";
import { isLoopback, isPlaceholderToken } from "../../../src/config/semantics.js";

const POOLS = "pools: { p: { models: [m], backends: [{ url: http://127.0.0.1:9000 }] } }";
const STRONG = "3f1c9a7be05d4e2a8c6b0f9e1d7a5c3b";

function issuesOf(yaml: string): string[] {
  try {
    parseConfig(yaml, "gateway.yaml", {});
  } catch (err) {
    if (err instanceof ConfigError) return err.message.split("\n").slice(1);
    throw err;
  }
  return [];
}

const admin = (host: string, token: string) =>
  `listen: { host: 127.0.0.1 }\nadmin: { host: "${host}", token: "${token}" }\n${POOLS}`;

describe("admin.token off loopback", () => {
  it.each([
    "change-me-to-a-long-secret",
    "change-me-change-me-change-me-change-me",
    "your-token-here-your-token-here-1234",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "PASSWORD-PASSWORD-1234567890",
    "changeme12345678",
    "secret0000000000",
  ])("a placeholder is refused: %s", (token) => {
    const lines = issuesOf(admin("0.0.0.0", token));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(
      "admin.token: is a well-known placeholder, and the admin listener binds 0.0.0.0",
    );
    expect(lines[0]).toContain("openssl rand -hex 32");
  });

  it("a token shorter than 32 characters is refused on any non-loopback address", () => {
    for (const host of ["0.0.0.0", "::", "10.0.0.5", "gateway.internal"]) {
      const lines = issuesOf(admin(host, "k3Jq9vX2mP7wL4tR8z")); // 18 characters
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(
        `admin.token: is 18 characters, fewer than 32, and the admin listener binds ${host}`,
      );
    }
  });

  it("a random 32-character token passes; loopback keeps short tokens", () => {
    expect(issuesOf(admin("0.0.0.0", STRONG))).toEqual([]);
    for (const host of ["127.0.0.1", "127.0.0.53", "::1", "localhost"]) {
      expect(issuesOf(admin(host, "k3Jq9vX2mP7wL4tR8z"))).toEqual([]);
      // On loopback the token guards against local users only: a placeholder is their business.
      expect(issuesOf(admin(host, "change-me-to-a-long-secret"))).toEqual([]);
    }
  });

  it("a disabled admin listener is not judged", () => {
    expect(
      issuesOf(`admin: { enabled: false, host: 0.0.0.0, token: change-me-to-a-long-secret }\n${POOLS}`),
    ).toEqual([]);
  });

  it("loopback and placeholders, one by one", () => {
    expect([isLoopback("127.0.0.1"), isLoopback("127.1.2.3"), isLoopback("[::1]")]).toEqual([
      true,
      true,
      true,
    ]);
    expect([isLoopback("::ffff:127.0.0.1"), isLoopback("LOCALHOST")]).toEqual([true, true]);
    expect([isLoopback("0.0.0.0"), isLoopback("128.0.0.1"), isLoopback("127.example.com")]).toEqual([
      false,
      false,
      false,
    ]);
    expect(isPlaceholderToken("Change_Me")).toBe(true);
    expect(isPlaceholderToken("0123456789abcdef0123456789abcdef")).toBe(false);
    expect(isPlaceholderToken("40981735620984712093847561029384756")).toBe(false);
    expect(isPlaceholderToken(STRONG)).toBe(false);
  });
});

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
