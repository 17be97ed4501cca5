/**
 * The gateway's logging: pino JSON lines, Fastify's own request logging off (the access line is
 * floodgate's), and the upstream state changes worth a line.
 */
import { LogController } from "fastify";
import pino, { type Logger } from "pino";
import type { GatewayConfig } from "./config/index.js";
import type { UpstreamEvents } from "./upstream/pool.js";

/** Buffered lines reach the log at most this long after they were written. */
const FLUSH_MS = 250;
const WARN = 40;

/**
 * JSON lines on stdout (or `fd`), written asynchronously in batches of 4 KB: a synchronous write
 * per access line cost about a fifth of the gateway's throughput. A quiet gateway still shows
 * its lines promptly: the buffer is flushed every 250 ms when something was written, and at
 * once after a warning or an error. Buffered lines are also flushed at shutdown and, by pino,
 * at process exit.
 */
export function createLogger(
  log: GatewayConfig["log"],
  destination?: pino.DestinationStream,
  fd = 1,
): Logger {
  const options: pino.LoggerOptions = {
    level: log.level,
    base: { service: "floodgate" },
    redact: {
      paths: ["req.headers.authorization", 'req.headers["x-api-key"]', "headers.authorization", "key"],
      censor: "[redacted]",
    },
  };
  if (destination) return pino(options, destination);
  const dest = pino.destination({ dest: fd, sync: false, minLength: 4096 });
  // Flushes left to try: two, so that a line written while a write was in flight still goes
  // out on the next tick (a flush during a write does nothing).
  let pending = 0;
  const flush = () => {
    if (pending === 0) return;
    pending--;
    try {
      dest.flush();
    } catch {
      // Closed meanwhile: nothing left to write.
    }
  };
  setInterval(flush, FLUSH_MS).unref();
  return pino(
    {
      ...options,
      hooks: {
        logMethod(args, method, level) {
          method.apply(this, args);
          pending = 2;
          if (level >= WARN) flush();
        },
      },
    },
    dest,
  );
}

/** Upstream state changes worth a log line: they explain traffic shifts after the fact. */
export function upstreamLogEvents(logger: Logger): UpstreamEvents {
  return {
    ejected: (pool, backend, reason, durationMs) =>
      logger.warn({ pool, backend, reason, durationMs }, "backend ejected"),
    healthChanged: (pool, backend, healthy) =>
      healthy
        ? logger.info({ pool, backend }, "backend healthy")
        : logger.warn({ pool, backend }, "backend unhealthy"),
    backendsChanged: (pool, added, removed) => logger.info({ pool, added, removed }, "backends discovered"),
    discoveryError: (pool, message, err) => logger.error({ pool, err }, message),
  };
}

/** Calls every listener's hook in turn. */
export function combineEvents(...all: UpstreamEvents[]): UpstreamEvents {
  const keys = new Set(all.flatMap((e) => Object.keys(e) as (keyof UpstreamEvents)[]));
  const out: Record<string, (...args: never[]) => void> = {};
  for (const key of keys) {
    const fns = all.map((e) => e[key]).filter((f): f is NonNullable<typeof f> => f !== undefined) as ((
      ...args: unknown[]
    ) => void)[];
    out[key] = (...args: never[]) => {
      for (const fn of fns) fn(...args);
    };
  }
  return out as UpstreamEvents;
}

export function quietLogs(): LogController {
  return new LogController({ disableRequestLogging: true, requestIdLogLabel: "requestId" });
}
