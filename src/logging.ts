/**
 * The gateway's logging: pino JSON lines, Fastify's own request logging off (the access line is
 * floodgate's), and the upstream state changes worth a line.
 */
import { LogController } from "fastify";
import pino, { type Logger } from "pino";
import type { GatewayConfig } from "./config/index.js";
import type { UpstreamEvents } from "./upstream/pool.js";

/**
 * JSON lines on stdout, written asynchronously in batches: a synchronous write per access line
 * cost about a fifth of the gateway's throughput. Buffered lines are flushed at shutdown and,
 * by pino, at process exit.
 */
export function createLogger(log: GatewayConfig["log"], destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level: log.level,
      base: { service: "floodgate" },
      redact: {
        paths: ["req.headers.authorization", 'req.headers["x-api-key"]', "headers.authorization", "key"],
        censor: "[redacted]",
      },
    },
    destination ?? pino.destination({ dest: 1, sync: false, minLength: 4096 }),
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
