/** SIGHUP reloads the config of a running `floodgate --config FILE`; it does not stop it. */
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { afterEach, expect, it } from "vitest";
import { eventually } from "../../helpers/eventually.js";

const MAIN = join(import.meta.dirname, "../../../src/main.ts");
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

const config = (models: string) => `listen: { host: 127.0.0.1, port: 0 }
admin: { enabled: false }
log: { level: info, accessLog: false }
pools:
  x:
    models: [${models}]
    backends: [{ url: "http://127.0.0.1:1" }]
    healthCheck: { enabled: false }
    loadSignals: { enabled: false }
`;

it("SIGHUP: the new config serves, the process lives on, and the log says so", async () => {
  const file = join(mkdtempSync(join(tmpdir(), "floodgate-hup-")), "gateway.yaml");
  writeFileSync(file, config("m1"));
  const child = spawn(process.execPath, ["--import", "tsx", MAIN, "--config", file], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  cleanups.push(() => child.kill("SIGKILL"));
  let out = "";
  child.stdout.on("data", (d) => {
    out += d;
  });
  let exited = false;
  child.on("exit", () => {
    exited = true;
  });
  const url = await eventually(() => /"url":"(http:[^"]+)"/.exec(out)?.[1], { timeout: 30_000 });
  const models = async () => {
    const res = await request(`${url}/v1/models`);
    return ((await res.body.json()) as { data: { id: string }[] }).data.map((m) => m.id);
  };
  expect(await models()).toEqual(["m1"]);

  writeFileSync(file, config("m2"));
  child.kill("SIGHUP");
  await eventually(() => out.includes("config reloaded"), { timeout: 30_000 });
  expect(await models()).toEqual(["m2"]);

  // A bad file: the error is logged, the running config stays.
  writeFileSync(file, config("m3").replace("port: 0", "port: many"));
  child.kill("SIGHUP");
  await eventually(() => out.includes("config reload failed"), { timeout: 30_000 });
  expect(out).toContain("listen.port");
  expect(await models()).toEqual(["m2"]);
  expect(exited).toBe(false);
}, 60_000);
