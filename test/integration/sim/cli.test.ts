import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { runSimCli } from "../../../src/sim/index.js";
import { call } from "./sim-http.js";

describe("floodgate sim CLI", () => {
  it("starts a server from flags and prints one line when listening", async () => {
    const lines: string[] = [];
    const sim = await runSimCli(
      ["--port", "0", "--model", "a", "--model", "b", "--time-scale", "0", "--latency", "1ms", "--seed", "3"],
      (line) => lines.push(line),
    );
    try {
      expect(lines).toEqual([expect.stringContaining(`listening on ${sim.url}`)]);
      expect(sim.options.models).toEqual(["a", "b"]);
      expect(sim.faults().latencyMs).toBe(1);
      const models = await call(`${sim.url}/v1/models`);
      expect((models.body as { data: { id: string }[] }).data.map((m) => m.id)).toEqual(["a", "b"]);
    } finally {
      await sim.close();
    }
  });
});

describe("floodgate sim CLI exits", () => {
  const run = async (argv: string[]) => {
    const script = `import { runSimCli } from ${JSON.stringify(new URL("../../../src/sim/cli.ts", import.meta.url).pathname)};
await runSimCli(${JSON.stringify(argv)});`;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    return { code, stdout, stderr };
  };

  it("exits 2 naming a bad flag, and 0 with usage for --help", async () => {
    const [bad, help] = await Promise.all([run(["--slots", "many"]), run(["--help"])]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--slots");
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("Usage: floodgate sim");
  });
});
