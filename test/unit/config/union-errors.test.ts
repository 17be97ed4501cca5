/** A value in a union (one limit or a list of them, a pool name or an object) is one error, not three. */
import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../../src/config/index.js";

const POOLS = "pools: { x: { models: [m], backends: [{ url: http://127.0.0.1:9000 }] } }\n";

function issuesOf(yaml: string): ConfigError {
  try {
    parseConfig(yaml, "gateway.yaml", {});
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error("config was accepted");
}

describe("errors inside a union", () => {
  it("a typo in a limit is one line naming the path, the value and what a rate is", () => {
    const one = issuesOf(`${POOLS}tenants:\n  a:\n    limits:\n      requests: { rate: five, per: 1s }\n`);
    expect(one.issues).toHaveLength(1);
    expect(one.message).not.toContain("anyOf");
    expect(one.message).toContain(
      'gateway.yaml:5:25  tenants.a.limits.requests.rate: "five" is not valid (expected a number above 0: how many in each `per`, such as 10)',
    );
    const inList = issuesOf(
      `${POOLS}tenants:\n  a:\n    limits:\n      requests: [{ rate: five, per: 1s }]\n`,
    );
    expect(inList.issues).toHaveLength(1);
    expect(inList.message).toContain('tenants.a.limits.requests[0].rate: "five" is not valid');
    const global = issuesOf(`${POOLS}rateLimits:\n  - { name: a, rate: five }\n`);
    expect(global.issues).toHaveLength(1);
    expect(global.message).toContain('rateLimits[0].rate: "five" is not valid (expected a number above 0');
  });

  it("each entry of a record is judged on its own: two tenants, two lines", () => {
    const err = issuesOf(
      `${POOLS}tenants:\n  a: { limits: { requests: { rate: 5 } } }\n  b: { limits: { requests: [{ rate: 5, per: 1s, brust: 2 }] } }\n`,
    );
    expect(err.issues.map((i) => i.message)).toEqual(["is required", "unknown field"]);
    expect(err.message).toContain("tenants.a.limits.requests.per: is required");
    expect(err.message).toContain(
      'tenants.b.limits.requests[0].brust: unknown field (did you mean "burst"?)',
    );
  });

  it("a value of no accepted shape is one line that says what is accepted", () => {
    const limit = issuesOf(`${POOLS}tenants:\n  a: { limits: { requests: 5 } }\n`);
    expect(limit.issues).toHaveLength(1);
    expect(limit.message).toContain(
      "tenants.a.limits.requests: 5 is not valid (expected a limit such as { rate: 10, per: 1s }, or a list of them)",
    );
    const fallback = issuesOf(
      POOLS.replace("}] } }", '}], fallback: ["bad name!", [1]] } }').concat("tenants: {}\n"),
    );
    expect(fallback.issues).toHaveLength(2);
    expect(fallback.message).toContain(
      `pools.x.fallback[0]: "bad name!" is not valid (expected letters, digits, '.', '_' or '-')`,
    );
    expect(fallback.message).toContain(
      "pools.x.fallback[1]: [1] is not valid (expected a pool's name, or { pool: NAME, model: MODEL })",
    );
  });
});
