/** The floodgate command as an operator runs it: real processes, real exit codes. */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
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

/** Starts the gateway and resolves with its stdout lines once it says it is listening. */
function start(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ child: ChildProcess; lines: string[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", MAIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
      if (stdout.includes("floodgate listening")) resolve({ child, lines: stdout.split("\n") });
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("close", (code) => reject(new Error(`exited ${code} before listening: ${stderr}`)));
  });
}

/** What an operator exports before starting config/gateway.yaml. */
const SHIPPED_ENV = {
  FLOODGATE_ADMIN_TOKEN: "9d2f6a1c0b8e4d7f3a5c9e1b7d0f2a4c",
  TEAM_A_KEY: "sk-team-a-0123456789",
};

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

const OPEN_POOL = `pools:
  x:
    models: [m]
    backends:
      - { url: http://127.0.0.1:1 }
    healthCheck: { enabled: false }
    loadSignals: { enabled: false }
`;

const EXPOSED_ADMIN = `listen: { host: 127.0.0.1, port: 0 }
admin: { host: 0.0.0.0, port: 0, token: "\${FLOODGATE_ADMIN_TOKEN}" }
${OPEN_POOL}`;

// Each test starts up to four Node processes (tsx compiling the sources each time): seconds
// apiece on a loaded machine, so more time than the suite's default 20 s.
describe("floodgate CLI", { timeout: 60_000 }, () => {
  it("check: a valid file prints what it would run, exit 0", async () => {
    const res = await run(["check", "config/gateway.yaml"], SHIPPED_ENV);
    expect(res.code).toBe(0);
    expect(res.stdout).toContain("config/gateway.yaml: valid");
    expect(res.stdout).toContain("pool llama-8b: models llama-3.1-8b; least_request");
    const lines = res.stdout.split("\n");
    expect(lines).toContain(
      "tenant team-a: interactive, weight 1; requests 50/s (burst 100) and 1000/m; tokens 200000/m; concurrency 20",
    );
    expect(lines).toContain("tenant batch-jobs: batch, weight 1; models llama-3.1-8b; no limits");
    expect(lines).toContain("limit per-ip: 20/s (burst 40) by ip; never limited: 127.0.0.1");
    expect(lines).toContain("limit big-model: 100/s by model, models llama-3.1-70b");
    // Each pool's cache, admission queue and fallback chain, under the pool's own line.
    const pool8b = lines.slice(lines.findIndex((l) => l.startsWith("pool llama-8b:")));
    expect(pool8b.slice(1, 4)).toEqual([
      "  cache on: ttl 10m, deterministic, scope tenant, stale-if-error 1h",
      "  admission on: maxQueue 10000; longest waits interactive 1500ms, batch 30s, background 5m",
      "  fallback -> llama-70b (llama-3.1-70b)",
    ]);
    const pool70b = lines.slice(lines.findIndex((l) => l.startsWith("pool llama-70b:")));
    expect(pool70b[1]).toBe("  cache off");
    expect(pool70b[3]).not.toContain("fallback");
    expect(res.stdout).not.toContain("warning:");
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

  it("check: warnings are printed with their paths, and the file is still valid, exit 0", async () => {
    const path = file(`listen: { host: 0.0.0.0, port: 8080 }
tenants: { t: { limits: { tokens: { rate: 500, per: 1m } } } }
${OPEN_POOL}`);
    const res = await run(["check", path]);
    expect(res.code).toBe(0);
    const warnings = res.stdout.split("\n").filter((l) => l.startsWith("warning: "));
    expect(warnings).toEqual([
      expect.stringContaining(
        "warning: auth: none, and listen.host 0.0.0.0 is not a loopback address: anyone who can reach port 8080 can use the GPUs",
      ),
      expect.stringContaining(
        "warning: tenants.t.limits.tokens: a budget of 500 tokens is not above tokens.defaultMaxTokens (1024)",
      ),
    ]);
  });

  it("the gateway refuses a placeholder admin token off loopback, exit 2", async () => {
    const res = await run(["--config", file(EXPOSED_ADMIN)], {
      FLOODGATE_ADMIN_TOKEN: "change-me-to-a-long-secret",
    });
    expect(res.code).toBe(2);
    expect(res.stderr).toContain(
      "admin.token: is a well-known placeholder, and the admin listener binds 0.0.0.0",
    );
    expect(res.stderr).toContain("openssl rand -hex 32");
  });

  it("check refuses a short admin token off loopback, exit 2", async () => {
    const res = await run(["check", file(EXPOSED_ADMIN)], { FLOODGATE_ADMIN_TOKEN: "k3Jq9vX2mP7wL4tR8z" });
    expect(res.code).toBe(2);
    expect(res.stderr).toContain("admin.token: is 18 characters, fewer than 32");
  });

  it("the gateway logs each config warning once at start", async () => {
    const path = file(`listen: { host: 0.0.0.0, port: 0 }
admin: { enabled: false }
${OPEN_POOL}`);
    const { child, lines } = await start(["--config", path]);
    const closed = new Promise((resolve) => child.on("close", resolve));
    child.kill("SIGTERM");
    await closed;
    const warns = lines.filter((l) => l.includes('"level":40'));
    expect(warns).toHaveLength(1);
    expect(JSON.parse(warns[0] ?? "{}").msg).toBe(
      "config: auth: none, and listen.host 0.0.0.0 is not a loopback address: anyone who can reach port 0 can use the GPUs (add auth.keys, or set listen.host: 127.0.0.1)",
    );
  });

  it("check --help and -h print check's usage, exit 0; an unknown flag to check is exit 2 with it", async () => {
    const [help, h, bogus] = await Promise.all([
      run(["check", "--help"]),
      run(["check", "-h"]),
      run(["check", "--bogus", "config/gateway.yaml"]),
    ]);
    for (const res of [help, h]) {
      expect(res.code).toBe(0);
      expect(res.stdout).toContain("usage: floodgate check FILE");
      expect(res.stderr).toBe("");
    }
    expect(bogus.code).toBe(2);
    expect(bogus.stderr).toContain("floodgate check: Unknown option '--bogus'");
    expect(bogus.stderr).toContain("usage: floodgate check FILE");
  });

  it("demo --help documents its flags, exit 0; a bad flag is one line and the usage, exit 2, no stack", async () => {
    const [help, bad, unknown] = await Promise.all([
      run(["demo", "--help"]),
      run(["demo", "--port", "eighty"]),
      run(["demo", "--prot", "8080"]),
    ]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("usage: floodgate demo [--port N] [--admin-port N]");
    expect(help.stdout).toMatch(/--port N +the gateway's port \(default 8080/);
    expect(help.stdout).toMatch(/--admin-port N +the admin listener's port/);
    expect(bad.code).toBe(2);
    expect(bad.stderr.split("\n")[0]).toBe(
      'floodgate demo: --port expects a port from 0 to 65535, got "eighty"',
    );
    expect(unknown.code).toBe(2);
    expect(unknown.stderr.split("\n")[0]).toContain("floodgate demo: Unknown option '--prot'");
    for (const res of [bad, unknown]) {
      expect(res.stderr).toContain("usage: floodgate demo");
      expect(res.stderr).not.toMatch(/^\s+at /m);
    }
  });

  it("--version and -v print the version in package.json", async () => {
    const pkg = readFileSync(join(import.meta.dirname, "../../../package.json"), "utf8");
    const { version } = JSON.parse(pkg) as { version: string };
    const [long, short] = await Promise.all([run(["--version"]), run(["-v"])]);
    for (const res of [long, short]) {
      expect(res.code).toBe(0);
      expect(res.stdout).toBe(`${version}\n`);
    }
  });

  it("a port another process holds: one line naming the address, listen.port and the fix, exit 1", async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, "127.0.0.1", resolve));
    const { port } = holder.address() as { port: number };
    try {
      const path = file(
        `listen: { host: 127.0.0.1, port: ${port} }\nadmin: { port: 0 }\n${BAD.replace("weight: heavy", "weight: 1").replace("total: 10", "total: 10s")}`,
      );
      const res = await run(["--config", path]);
      expect(res.code).toBe(1);
      const errors = res.stderr.split("\n").filter((l) => l.startsWith("floodgate:"));
      expect(errors).toEqual([
        `floodgate: cannot listen on 127.0.0.1:${port} (listen.port in ${path}): another process holds that port; set another listen.port, or stop the process that holds it`,
      ]);
      expect(res.stderr).not.toMatch(/^\s+at /m);
      expect(res.stderr).not.toContain("EADDRINUSE");
    } finally {
      holder.close();
    }
  });

  it("a missing file and bad usage are exit 2", async () => {
    expect((await run(["check", "/nonexistent.yaml"])).code).toBe(2);
    expect((await run(["--bogus"])).code).toBe(2);
  });
});
