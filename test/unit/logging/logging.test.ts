/**
 * The log of a quiet gateway: lines reach the file within a short interval (not only once 4 KB
 * have piled up), a warning at once. Decided by what the file holds, polled with a generous
 * bound, never by a tight time limit.
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createLogger } from "../../../src/logging.js";

let dir: string | undefined;
let fd: number | undefined;
afterEach(() => {
  if (fd !== undefined) closeSync(fd);
  if (dir) rmSync(dir, { recursive: true, force: true });
  fd = undefined;
  dir = undefined;
});

function logFile() {
  dir = mkdtempSync(join(tmpdir(), "floodgate-log-"));
  const path = join(dir, "log");
  fd = openSync(path, "a");
  return { fd, read: () => readFileSync(path, "utf8") };
}

async function eventually(check: () => boolean): Promise<boolean> {
  for (let i = 0; i < 200; i++) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

describe("logging at low traffic", () => {
  it("a single info line reaches the log without 4 KB behind it", async () => {
    const file = logFile();
    const logger = createLogger({ level: "info", accessLog: true }, undefined, file.fd);
    logger.info({ requestId: "r1" }, "request");
    expect(await eventually(() => file.read().includes('"requestId":"r1"'))).toBe(true);
    expect(file.read().split("\n").filter(Boolean)).toHaveLength(1);
  });

  it("a warning is written at once, with the lines before it", async () => {
    const file = logFile();
    const logger = createLogger({ level: "info", accessLog: true }, undefined, file.fd);
    logger.info("first");
    logger.warn("store unavailable");
    expect(await eventually(() => file.read().includes("store unavailable"))).toBe(true);
    const lines = file.read().split("\n").filter(Boolean);
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(["first", "store unavailable"]);
  });

  it("lines go on being written in order as traffic continues", async () => {
    const file = logFile();
    const logger = createLogger({ level: "info", accessLog: true }, undefined, file.fd);
    for (let i = 0; i < 500; i++) logger.info({ n: i }, "request");
    expect(await eventually(() => file.read().split("\n").filter(Boolean).length === 500)).toBe(true);
    const ns = file
      .read()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l).n);
    expect(ns).toEqual(Array.from({ length: 500 }, (_, i) => i));
  });
});
