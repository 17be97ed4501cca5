/**
 * The log of a quiet gateway: lines reach the file within a short interval (not only once 4 KB
 * have piled up), a warning at once. Decided by what the file holds, polled with a generous
 * bound, never by a tight time limit.
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type AccessFields, accessLogWriter, createLogger } from "../../../src/logging.js";

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

describe("the access line", () => {
  const fields: AccessFields = {
    requestId: "req-1",
    tenant: 'team "a"\n',
    method: "POST",
    route: "/v1/chat/completions",
    model: "llama\u2028\u0007é😀",
    pool: "gpu",
    backend: "10.0.0.1:8000",
    stream: true,
    fallback: undefined,
    cache: "MISS",
    status: 200,
    error: undefined,
    durationMs: 12.3,
    queueMs: 0.5,
    firstByteMs: 4.2,
    promptTokens: 7,
    completionTokens: 16,
    bytesIn: 86,
    bytesOut: Number.NaN,
  };
  /** What pino writes for the same fields: the line the writer must reproduce. */
  const viaPino = { ...fields, stream: true as const, bytesOut: null };

  function lines(read: () => string, n: number) {
    return eventually(() => read().split("\n").filter(Boolean).length === n).then(() =>
      read()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    );
  }

  it("is the line pino writes, field for field and in the same order, escapes and all", async () => {
    const file = logFile();
    const logger = createLogger({ level: "info", accessLog: true }, undefined, file.fd);
    const write = accessLogWriter(logger);
    logger.info(viaPino, "request");
    write(fields);
    const [pinoLine, ours] = await lines(file.read, 2);
    expect(ours).toBeDefined();
    const { time: t1, ...a } = pinoLine as Record<string, unknown>;
    const { time: t2, ...b } = ours as Record<string, unknown>;
    expect(typeof t2).toBe("number");
    expect(Math.abs((t2 as number) - (t1 as number))).toBeLessThan(60_000);
    expect(Object.keys(b)).toEqual(Object.keys(a));
    expect(b).toEqual(a);
    expect(b.model).toBe(fields.model);
    expect(b.tenant).toBe(fields.tenant);
  });

  it("leaves out the fields a request does not have", async () => {
    const file = logFile();
    const write = accessLogWriter(createLogger({ level: "info", accessLog: true }, undefined, file.fd));
    write({
      ...fields,
      tenant: undefined,
      model: undefined,
      pool: undefined,
      backend: undefined,
      stream: false,
      cache: undefined,
      error: "route_not_found",
      status: 404,
      queueMs: undefined,
      firstByteMs: undefined,
      promptTokens: undefined,
      completionTokens: undefined,
      bytesIn: undefined,
      bytesOut: undefined,
    });
    const [line] = await lines(file.read, 1);
    expect(Object.keys(line ?? {})).toEqual([
      "level",
      "time",
      "service",
      "requestId",
      "method",
      "route",
      "status",
      "error",
      "durationMs",
      "msg",
    ]);
  });

  it("is not written when the level is above info, and is again after a change back", async () => {
    const file = logFile();
    const logger = createLogger({ level: "warn", accessLog: true }, undefined, file.fd);
    const write = accessLogWriter(logger);
    write({ ...fields, requestId: "quiet" });
    logger.level = "info";
    write({ ...fields, requestId: "heard" });
    const [line] = await lines(file.read, 1);
    expect(line?.requestId).toBe("heard");
  });

  it("goes to a destination stream given to the logger", () => {
    const out: string[] = [];
    const logger = createLogger({ level: "info", accessLog: true }, { write: (s: string) => out.push(s) });
    accessLogWriter(logger)(fields);
    expect(out).toHaveLength(1);
    expect(JSON.parse(out[0] ?? "").requestId).toBe("req-1");
  });
});
