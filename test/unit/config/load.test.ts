import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig, parseDuration, parseSize } from "../../../src/config/index.js";

const MINIMAL = "pools: { x: { models: [m], backends: [{ url: http://127.0.0.1:9000 }] } }";

function issuesOf(yaml: string, env: NodeJS.ProcessEnv = {}) {
  try {
    parseConfig(yaml, "gateway.yaml", env);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error("config was accepted");
}

describe("parseConfig", () => {
  it("fills every default from a minimal config", () => {
    const c = parseConfig(MINIMAL, "x", {});
    expect(c.listen).toEqual({ host: "0.0.0.0", port: 8080 });
    expect(c.server.requestTimeout).toBe(30_000);
    expect(c.server.bodyLimit).toBe(4 * 1024 * 1024);
    expect(c.pools.x?.timeouts).toEqual({ connect: 2000, firstByte: 60_000, idle: 30_000, total: 600_000 });
    expect(c.pools.x?.backends[0]).toMatchObject({ weight: 1, engine: "openai", backup: false, headers: {} });
    expect(c.store.type).toBe("memory");
    expect(c.routes).toEqual([]);
  });

  it("interpolates ${VAR} and ${VAR:-default}, unquoted inside flow maps too", () => {
    const c = parseConfig(
      `${MINIMAL}
auth: { keys: [ { key: \${TEAM_KEY}, tenant: a }, { key: "\${OTHER:-fallback-key}", tenant: a } ] }
tenants: { a: {} }
listen: { port: \${PORT} }
`,
      "x",
      { TEAM_KEY: "sk-0123456789", PORT: "9999" },
    );
    expect(c.auth?.keys[0]?.key).toBe("sk-0123456789");
    expect(c.auth?.keys[1]?.key).toBe("fallback-key");
    expect(c.listen.port).toBe(9999);
  });

  it("never lets a variable's value inject YAML", () => {
    const c = parseConfig(`${MINIMAL}\nadmin: { token: "\${T}" }\n`, "x", {
      T: "abc\nlisten: { port: 1 }0123456789",
    });
    expect(c.admin.token).toContain("listen:");
    expect(c.listen.port).toBe(8080);
  });

  it("names a missing variable and where it is used", () => {
    const err = issuesOf(`${MINIMAL}\nadmin:\n  token: \${ADMIN_TOKEN}\n`);
    expect(err.issues).toHaveLength(1);
    expect(err.message).toContain(
      "gateway.yaml:3:10  admin.token: environment variable ADMIN_TOKEN is not set",
    );
  });

  it("lists every error with its YAML path, line and the fix", () => {
    const err = issuesOf(`
listn: { port: 8081 }
server: { requestTimeout: 30 }
log: { level: loud }
pools:
  "bad name!": { models: [m], backends: [{ url: http://a:1 }] }
  y:
    models: [m2]
    balancer: fastest
    backends:
      - { url: "ftp://a", wieght: 3 }
`);
    const lines = err.message.split("\n");
    expect(lines[0]).toBe("invalid config, 7 errors:");
    expect(err.message).toContain('gateway.yaml:2:1  listn: unknown field (did you mean "listen"?)');
    expect(err.message).toContain(
      'server.requestTimeout: "30" is not valid (expected a duration such as 250ms, 5s, 10m or 1h)',
    );
    expect(err.message).toContain(
      'log.level: must be one of: fatal, error, warn, info, debug, trace, silent; got "loud"',
    );
    expect(err.message).toContain('pools.bad name!: "bad name!" is not a valid name');
    expect(err.message).toContain(
      'pools.y.balancer: must be one of: least_request, round_robin, random; got "fastest"',
    );
    expect(err.message).toContain(
      'gateway.yaml:11:16  pools.y.backends[0].url: "ftp://a" is not valid (expected an http:// or https:// URL)',
    );
    expect(err.message).toContain('pools.y.backends[0].wieght: unknown field (did you mean "weight"?)');
  });

  it("reports a missing required field and an empty pools map", () => {
    expect(issuesOf("listen: { port: 1 }").message).toContain("pools: is required");
    expect(issuesOf("pools: { x: { models: [m] } }").message).toContain("pools.x.backends: is required");
  });

  it("checks references and uniqueness across sections", () => {
    const err = issuesOf(`
pools:
  a: { models: [m], backends: [{ url: http://h:1 }, { url: http://h:1 }] }
  b: { models: [m], backends: [{ url: http://h:2, backup: true }] }
routes: [{ prefix: /x, pool: nope }]
auth: { keys: [{ key: sk-0123456789, tenant: ghost }, { tenant: ghost }] }
store: { type: redis }
admin: { host: 0.0.0.0 }
`);
    const m = err.message;
    expect(m).toContain('pools.a.backends[1]: two backends named "h:1"');
    expect(m).toContain('pools.b.models[0]: model "m" is already served by pool "a"');
    expect(m).toContain("pools.b.backends: every backend is a backup");
    expect(m).toContain('routes[0].pool: no pool named "nope"');
    expect(m).toContain('auth.keys[0].tenant: no tenant named "ghost"');
    expect(m).toContain("auth.keys[1]: needs exactly one of key or sha256");
    expect(m).toContain("store: a redis store needs url, nodes or sentinels");
    expect(m).toContain("admin.token: is required when the admin listener binds 0.0.0.0");
  });

  it("refuses a head timeout longer than the whole request's, which Node would refuse at start", () => {
    expect(issuesOf(`server: { headersTimeout: 10m }\n${MINIMAL}`).message).toContain(
      "server.headersTimeout: (600000 ms) must not exceed server.requestTimeout (30000 ms)",
    );
    expect(
      parseConfig(`server: { headersTimeout: 10m, requestTimeout: 10m }\n${MINIMAL}`, "x", {}).server,
    ).toMatchObject({ headersTimeout: 600_000, requestTimeout: 600_000 });
  });

  it("a pool's cache block turns its cache on unless it says enabled: false; no block, no cache", () => {
    const pool = (cache: string) =>
      parseConfig(
        `pools: { x: { models: [m], backends: [{ url: http://127.0.0.1:9000 }]${cache} } }`,
        "x",
        {},
      ).pools.x?.cache;
    expect(pool("")?.enabled).toBe(false);
    expect(pool(", cache: { ttl: 10m }")).toMatchObject({ enabled: true, ttl: 600_000 });
    expect(pool(", cache: { enabled: false, ttl: 10m }")?.enabled).toBe(false);
  });

  it("admission: a default maxWait that does not fit a short total timeout becomes half of it; an explicit one is an error", () => {
    const c = parseConfig(
      "pools: { x: { models: [m], backends: [{ url: http://127.0.0.1:9000 }], timeouts: { total: 20s } } }",
      "x",
      {},
    );
    expect(c.pools.x?.admission.bands).toMatchObject({
      interactive: { maxWait: 1500 },
      batch: { maxWait: 10_000 },
      background: { maxWait: 10_000 },
    });
    const m = issuesOf(
      "pools: { x: { models: [m], backends: [{ url: http://127.0.0.1:9000 }], timeouts: { total: 20s }, admission: { bands: { batch: { maxWait: 30s } } } } }",
    ).message;
    expect(m).toContain(
      "pools.x.admission.bands.batch.maxWait: 30s is not below the pool's total timeout (20s)",
    );
  });

  it("rejects a slot lease shorter than three syncs (live replicas would lose their slots)", () => {
    const m = issuesOf(`store: { slots: { sync: 1s, lease: 2s } }\n${MINIMAL}`).message;
    expect(m).toContain("store.slots.lease: a lease of 2000 ms is less than three syncs (1000 ms each)");
  });

  it("rejects what would fail at run time: a zero period, admin on the main port, enginePriority off vLLM", () => {
    const m = issuesOf(`
listen: { port: 8080 }
admin: { port: 8080 }
rateLimits: [{ name: ip, rate: 5, per: 0s }]
tenants:
  t: { limits: { requests: { rate: 5, per: 0s }, tokens: { rate: 500, per: 1m } } }
pools: { x: { models: [m], backends: [{ url: http://127.0.0.1:9000, enginePriority: true }] } }
`).message;
    expect(m).toContain("rateLimits[0].per: must be longer than 0");
    expect(m).toContain("tenants.t.limits.requests.per: must be longer than 0");
    expect(m).toContain("admin.port: is the same port as listen.port (8080)");
    expect(m).toContain("pools.x.backends[0].enginePriority: only vLLM takes a request priority");
    const affinity = issuesOf(`
pools:
  x: { models: [m], backends: [{ url: http://127.0.0.1:9000 }], affinity: { by: header, cacheTokens: 1000 } }
  y: { models: [n], backends: [{ url: http://127.0.0.1:9001 }], affinity: { by: prefix, prefillTokensPerSecond: 5000 } }
`).message;
    expect(affinity).toContain("pools.x.affinity.cacheTokens: the cache model follows prompt prefixes");
    expect(affinity).toContain("set by: prefix, or remove cacheTokens");
    expect(affinity).toContain("pools.y.affinity.prefillTokensPerSecond:");
    expect(affinity).toContain("set cacheTokens to each engine's prefix cache in tokens");
    // Different addresses may share a port number.
    expect(() =>
      parseConfig(
        `listen: { host: 10.0.0.1, port: 8080 }
admin: { host: 127.0.0.1, port: 8080 }
${MINIMAL}`,
        "x",
        {},
      ),
    ).not.toThrow();
  });

  it("checks fallback chains", () => {
    const m = issuesOf(`
pools:
  a: { models: [m1], backends: [{ url: http://h:1 }], fallback: [a, nope, { pool: b, model: m9 }] }
  b: { models: [m2], backends: [{ url: http://h:2 }], fallback: [{ pool: a }] }
`).message;
    expect(m).toContain("pools.a.fallback[0]: a pool cannot fall back to itself");
    expect(m).toContain('pools.a.fallback[1]: no pool named "nope"');
    expect(m).toContain('pools.a.fallback[2].model: pool "b" does not serve model "m9"');
    expect(m).not.toContain("pools.b.fallback");
  });

  it("checks tenants' model lists: every name or pattern is served by some pool", () => {
    const pools = `pools:
  small: { models: [llama-8b, mistral-7b], backends: [{ url: http://h:1 }] }
  big: { models: [llama-70b], backends: [{ url: http://h:2 }] }
`;
    const c = parseConfig(`${pools}tenants: { a: { models: [llama-8b, "llama-*"] }, b: {} }`, "x", {});
    expect(c.tenants.a?.models).toEqual(["llama-8b", "llama-*"]);
    expect(c.tenants.b?.models).toBeUndefined();
    const unknown = issuesOf(`${pools}tenants:\n  a: { models: [llama-8b, llama-7b, "gpt-*"] }\n`);
    expect(unknown.issues).toHaveLength(2);
    expect(unknown.message).toContain(
      'gateway.yaml:5:27  tenants.a.models[1]: no pool serves model "llama-7b" (models served: llama-8b, mistral-7b, llama-70b)',
    );
    expect(unknown.message).toContain('tenants.a.models[2]: "gpt-*" matches no model any pool serves');
    const shape = issuesOf(`${pools}tenants:\n  b: { models: [] }\n  c: { models: [llama-8b, llama-8b] }\n`);
    expect(shape.issues).toHaveLength(2);
    expect(shape.message).toContain("tenants.b.models: must NOT have fewer than 1 items");
    expect(shape.message).toContain("leave models out for all");
    expect(shape.message).toContain("tenants.c.models: must NOT have duplicate items");
  });

  it("checks discovery URLs", () => {
    const m = issuesOf(`
pools:
  a:
    models: [m]
    backends:
      - { url: http://10.0.0.1:8000, discovery: dns }
      - { url: http://_x._tcp.svc:8000, discovery: srv }
`).message;
    expect(m).toContain("pools.a.backends[0].url: discovery dns needs a DNS name, not an address");
    expect(m).toContain("pools.a.backends[1].url: an SRV name takes its ports from DNS");
  });

  it("reports YAML syntax errors with their line", () => {
    const err = issuesOf("pools:\n  x: [unclosed\n");
    expect(err.issues[0]?.message).toMatch(/^YAML: /);
    expect(err.issues[0]?.line).toBeGreaterThan(0);
  });
});

describe("units", () => {
  it.each([
    ["250ms", 250],
    ["5s", 5000],
    ["1.5s", 1500],
    ["10m", 600_000],
    ["1h", 3_600_000],
  ])("duration %s = %d ms", (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each([
    ["512kb", 524_288],
    ["8mb", 8_388_608],
    ["8MB", 8_388_608],
    ["10b", 10],
  ])("size %s = %d bytes", (text, n) => expect(parseSize(text)).toBe(n));

  it.each(["30", "5 s", "-1s", "1d", ""])("rejects duration %j", (text) =>
    expect(() => parseDuration(text)).toThrow(),
  );
});
