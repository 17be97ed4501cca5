/** The catalogue is the one place errors are made, every entry is OpenAI-shaped, and the README lists them all. */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { errors, GatewayError } from "../../src/errors.js";

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : path.endsWith(".ts") ? [path] : [];
  });
}

/** One instance of every catalogue entry (each kind of the parameterised ones), with sample arguments. */
function everyError(): GatewayError[] {
  const out: GatewayError[] = [];
  for (const [name, make] of Object.entries(errors)) {
    if (name === "rateLimited") {
      for (const kind of ["requests", "tokens", "concurrency"] as const)
        out.push(errors.rateLimited(kind, "d", 1000));
    } else if (name === "upstreamTimeout") {
      for (const phase of ["connect", "first_byte", "idle", "total"] as const)
        out.push(errors.upstreamTimeout(phase));
    } else if (name === "queueRefused") {
      for (const why of ["queue_full", "deadline_unmeetable", "evicted", "timed_out"] as const)
        out.push(errors.queueRefused(why, "p", "interactive", 1000, 2000));
    } else {
      out.push((make as (...args: unknown[]) => GatewayError)("x", "y", 1000));
    }
  }
  return out;
}

describe("the error catalogue", () => {
  it("is the only place in src/ that makes a GatewayError", () => {
    const makers = sources("src")
      .filter((f) => !f.endsWith("src/errors.ts"))
      .filter((f) => readFileSync(f, "utf8").includes("new GatewayError("));
    expect(makers).toEqual([]);
  });

  it("every entry leaves in the OpenAI shape, with retry headers exactly when it says when to come back", () => {
    for (const err of everyError()) {
      expect(err).toBeInstanceOf(GatewayError);
      expect(err.statusCode).toBeGreaterThanOrEqual(400);
      expect(err.body()).toEqual({
        error: { message: err.message, type: err.type, code: err.code, param: err.param },
      });
      const headers = err.headers();
      if (err.retryAfterMs === undefined) expect(headers).toEqual({ "x-should-retry": "false" });
      else expect(headers["x-should-retry"]).toBe("true");
    }
  });

  it("every code is in the README's table of errors", () => {
    const readme = readFileSync("README.md", "utf8");
    const table = readme.slice(readme.indexOf("### Errors"), readme.indexOf("### Bounds"));
    const missing = everyError()
      .map((e) =>
        e.code.replace(
          /^upstream_(connect|first_byte|idle|total)_timeout$/,
          "upstream_{connect,first_byte,idle,total}_timeout",
        ),
      )
      .filter((code) => !table.includes(`\`${code}\``));
    expect(missing).toEqual([]);
  });
});
