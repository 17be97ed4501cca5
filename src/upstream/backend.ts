/** One inference server: its connection pool, its identity, and the load floodgate puts on it. */
import { Pool } from "undici";
import { type BackendConfig, backendName, type TimeoutsConfig } from "../config/index.js";

export class Backend {
  readonly name: string;
  readonly origin: string;
  /** Path prefix of the backend URL (`https://host/openai` → `/openai`), without a trailing slash. */
  readonly basePath: string;
  readonly weight: number;
  readonly maxConcurrency: number;
  readonly backup: boolean;
  readonly engine: BackendConfig["engine"];
  /** Configured extra headers, lower-cased once here rather than per request. */
  readonly extraHeaders: ReadonlyArray<readonly [string, string]>;
  readonly dispatcher: Pool;
  inFlight = 0;

  constructor(config: BackendConfig, timeouts: TimeoutsConfig) {
    const url = new URL(config.url);
    this.name = backendName(config.url, config.name);
    this.origin = url.origin;
    this.basePath = url.pathname.replace(/\/+$/, "");
    this.weight = config.weight;
    this.maxConcurrency = config.maxConcurrency ?? Number.POSITIVE_INFINITY;
    this.backup = config.backup;
    this.engine = config.engine;
    this.extraHeaders = Object.entries(config.headers).map(([k, v]) => [k.toLowerCase(), v] as const);
    this.dispatcher = new Pool(this.origin, {
      connections: config.maxConnections,
      connect: { timeout: timeouts.connect },
      headersTimeout: timeouts.firstByte,
      bodyTimeout: timeouts.idle,
      // Inference servers close idle connections after some seconds; stay under common values.
      keepAliveTimeout: 4_000,
      keepAliveMaxTimeout: 60_000,
      pipelining: 1,
    });
  }

  get full(): boolean {
    return this.inFlight >= this.maxConcurrency;
  }

  close(): Promise<void> {
    return this.dispatcher.destroy();
  }
}
