/** The floodgate command as an operator runs it: real processes, real exit codes. */
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const MAIN = join(import.meta.dirname, "../../../src/main.ts");

function run(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", MAIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

function file(text: string): string {
  const path = join(mkdtempSync(join(tmpdir(), "floodgate-cli-")), "gateway.yaml");
  writeFileSync(path, text);
  return path;
}

const BAD = `pools:
  x:
    models: [m]
    backends:
      - { url: http://127.0.0.1:1, weight: heavy }
    timeouts: { total: 10 }
`;

describe("floodgate CLI", () => {
  it("check: a valid file prints what it would run, exit 0", async () => {
    const res = await run(["check", "config/gateway.yaml"]);
    expect(res.code).toBe(0);
    expect(res.stdout).toContain("config/gateway.yaml: valid");
    expect(res.stdout).toContain("pool llama-8b: models llama-3.1-8b; least_request");
  });

  it("check: every error with its path and line, exit 2", async () => {
    const path = file(BAD);
    const res = await run(["check", path]);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain("invalid config, 2 errors:");
    expect(res.stderr).toContain(`${path}:5:44  pools.x.backends[0].weight: must be number, got "heavy"`);
    expect(res.stderr).toContain(`${path}:6:24  pools.x.timeouts.total: "10" is not valid`);
  });

  it("the gateway refuses to start on a bad config, exit 2", async () => {
    const res = await run(["--config", file(BAD)]);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain("pools.x.backends[0].weight");
  });

  it("a missing environment variable is named, exit 2", async () => {
    const res = await run([
      "check",
      file(
        "admin: { token: ${NO_SUCH_VAR_FOR_TEST} }\n" +
          BAD.replace("weight: heavy", "weight: 1").replace("total: 10", "total: 10s"),
      ),
    ]);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain("admin.token: environment variable NO_SUCH_VAR_FOR_TEST is not set");
  });

  it("a missing file and bad usage are exit 2", async () => {
    expect((await run(["check", "/nonexistent.yaml"])).code).toBe(2);
    expect((await run(["--bogus"])).code).toBe(2);
  });
});
