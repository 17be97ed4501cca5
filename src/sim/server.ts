/**
 * One simulated vLLM instance on one GPU, over plain node:http: it is also the backend of the
 * throughput benchmarks, where a framework's per-request cost would blur what is measured.
 *
 * Request path of an inference call: read body -> validate (400/404) -> loading? (503) ->
 * latency fault -> error fault -> hang fault -> batch scheduler (503 when the queue is full) ->
 * tokens. The client going away at any point frees its slot at once and counts as an abort.
 */

import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from "node:http";
import { BatchScheduler, type ScheduleFn } from "./batch-scheduler.js";
import { EmbeddingEngine } from "./embedding-engine.js";
import { serveEmbeddings } from "./embeddings-handler.js";
import { defaultSimFaults, parseFaults, type SimFaults } from "./faults.js";
import { serveGeneration } from "./generation-handler.js";
import { type OpenAIErrorSpec, readJsonBody, sendError, sendJson } from "./http-io.js";
import { METRICS_CONTENT_TYPE, renderMetrics } from "./metrics.js";
import { type GenerationKind, modelCard, modelsBody } from "./openai-format.js";
import {
  defaultSimOptions,
  isEmbedInstant,
  isInstant,
  resolveSimOptions,
  type SimOptions,
} from "./options.js";
import { PrefixCache } from "./prefix-cache.js";
import { parseEmbeddingsRequest, parseGenerationRequest } from "./request-parse.js";
import { createRng, mixSeeds } from "./rng.js";
import { type RequestLife, SERVER_BUSY, type SimRuntime } from "./runtime.js";
import { slowStartFactor } from "./slow-start.js";
import { createCounters, type SimStats } from "./stats.js";

export type { SimFaults } from "./faults.js";
export type { SimOptions } from "./options.js";
export type { SimStats } from "./stats.js";
export { defaultSimOptions };

export interface SimAbortEvent {
  /** Epoch ms when the server noticed the client had gone. */
  at: number;
  /** Request path, e.g. /v1/chat/completions. */
  path: string;
}

export interface SimServer {
  url: string;
  port: number;
  options: SimOptions;
  /** Merges into the current faults; resolves once refuse/listen changes took effect. */
  setFaults(f: Partial<SimFaults>): Promise<void>;
  clearFaults(): Promise<void>;
  /** The faults in force now. */
  faults(): SimFaults;
  stats(): SimStats;
  /** Called for every client abort, the moment the server sees it. Returns an unsubscribe function. */
  onAbort(listener: (event: SimAbortEvent) => void): () => void;
  close(): Promise<void>;
}

type Route = (req: IncomingMessage, res: ServerResponse, path: string) => void | Promise<void>;

function pathOf(url: string | undefined): string {
  if (url === undefined) return "/";
  const q = url.indexOf("?");
  return q < 0 ? url : url.slice(0, q);
}

function clientHost(host: string): string {
  if (host === "0.0.0.0") return "127.0.0.1";
  if (host === "::") return "[::1]";
  return host.includes(":") ? `[${host}]` : host;
}

/** Injected error bodies follow what OpenAI answers with that status. */
function injectedError(status: number): OpenAIErrorSpec {
  if (status === 503) return SERVER_BUSY;
  if (status === 429) {
    return {
      status,
      message: "Rate limit reached (injected fault)",
      type: "requests",
      code: "rate_limit_exceeded",
    };
  }
  if (status >= 500) {
    return {
      status,
      message: "The server had an error while processing your request (injected fault)",
      type: "server_error",
      code: null,
    };
  }
  return { status, message: "injected fault", type: "invalid_request_error", code: null };
}

const NOT_FOUND_TYPE = "invalid_request_error";

export async function startSim(partial: Partial<SimOptions> = {}): Promise<SimServer> {
  const options = resolveSimOptions(partial);
  let faults: SimFaults = { ...defaultSimFaults, ...options.faults };
  const counters = createCounters();
  const readyAt = performance.now() + options.loadTimeMs;
  let warmupFrom = readyAt;
  let closed = false;

  const timers = new Set<NodeJS.Timeout>();
  const schedule: ScheduleFn = (fn, ms) => {
    const timer = setTimeout(() => {
      timers.delete(timer);
      fn();
    }, ms);
    timers.add(timer);
    return () => {
      clearTimeout(timer);
      timers.delete(timer);
    };
  };

  const scheduler = new BatchScheduler({
    slots: options.slots,
    maxQueue: options.maxQueue,
    kvCacheTokens: options.kvCacheTokens,
    timing: options,
    scale: () => options.timeScale * slowStartFactor(performance.now() - warmupFrom, faults.slowStartMs),
    schedule,
  });

  const embeddings = new EmbeddingEngine({
    slots: options.embedSlots,
    maxQueue: options.maxQueue,
    timing: options,
    scale: () => options.timeScale * slowStartFactor(performance.now() - warmupFrom, faults.slowStartMs),
    schedule,
  });

  const prefixCache =
    options.prefixCacheBlocks > 0
      ? new PrefixCache(options.prefixCacheBlocks, options.prefixBlockChars)
      : null;

  // Own stream for fault dice, so injecting errors does not change what the model says.
  const faultRng = createRng(mixSeeds(options.seed, 0x6661756c));
  const idBase = randomBytes(4).toString("hex");
  let idCounter = 0;
  let requestNumber = 0;
  const abortListeners = new Set<(event: SimAbortEvent) => void>();

  const rt: SimRuntime = {
    options,
    counters,
    scheduler,
    embeddings,
    prefixCache,
    instant: isInstant(options),
    embedInstant: isEmbedInstant(options),
    faults: () => faults,
    nextRequestNumber: () => requestNumber++,
    newId: (prefix) => `${prefix}-${idBase}${(idCounter++).toString(16).padStart(8, "0")}`,
  };

  const stats = (): SimStats => ({
    ...counters,
    running: scheduler.runningCount + embeddings.runningCount,
    waiting: scheduler.waitingCount + embeddings.waitingCount,
    kvCacheUsage: scheduler.kvCacheUsage,
    prefixCache: { ...counters.prefixCache, blocks: prefixCache?.size ?? 0 },
  });

  const server = createServer();

  // --- inference -------------------------------------------------------------------------------

  async function inference(
    req: IncomingMessage,
    res: ServerResponse,
    path: string,
    kind: GenerationKind | "embeddings",
  ) {
    counters.received++;
    const requestId = req.headers["x-request-id"];
    const headers: OutgoingHttpHeaders = typeof requestId === "string" ? { "x-request-id": requestId } : {};
    const life: RequestLife = { onAbort: null, closedByServer: false, headers };
    let gone = false;
    res.on("close", () => {
      if (res.writableFinished || life.closedByServer || closed) return;
      gone = true;
      const cleanup = life.onAbort;
      life.onAbort = null;
      cleanup?.();
      const at = Date.now();
      counters.aborted++;
      counters.lastAbortAt = at;
      for (const listener of abortListeners) listener({ at, path });
    });

    const body = await readJsonBody(req);
    if (gone) return;
    if (!body.ok) return sendError(res, body.error, headers);

    const parsed =
      kind === "embeddings"
        ? parseEmbeddingsRequest(body.value, options.models)
        : parseGenerationRequest(
            kind,
            body.value,
            options.models,
            options.kvCacheTokens,
            options.schedulingPolicy === "priority",
          );
    if (!parsed.ok) return sendError(res, parsed.error, headers);

    const loadingMs = readyAt - performance.now();
    if (loadingMs > 0) {
      return sendError(
        res,
        {
          status: 503,
          message: "model is loading, try again later",
          type: "server_error",
          code: "model_loading",
        },
        { ...headers, "retry-after": String(Math.ceil(loadingMs / 1000)) },
      );
    }

    const latencyMs = faults.latencyMs;
    if (latencyMs > 0) {
      await new Promise<void>((resolve) => {
        life.onAbort = schedule(resolve, latencyMs);
      });
      life.onAbort = null;
      if (gone || closed) return;
    }

    const f = faults;
    if (f.errorRate > 0 && faultRng.next() < f.errorRate) {
      counters.errorsInjected++;
      const extra: OutgoingHttpHeaders = { ...headers, "x-sim-fault": "error" };
      if (f.errorRetryAfterS !== null && (f.errorStatus === 429 || f.errorStatus === 503)) {
        extra["retry-after"] = String(f.errorRetryAfterS);
      }
      return sendError(res, injectedError(f.errorStatus), extra);
    }
    if (f.hang) {
      // Held open until the client gives up; the close handler counts it as an abort.
      counters.hung++;
      return;
    }

    if ("inputs" in parsed.value) serveEmbeddings(rt, res, life, parsed.value);
    else serveGeneration(rt, res, life, parsed.value);
  }

  // --- admin -----------------------------------------------------------------------------------

  async function postFaults(req: IncomingMessage, res: ServerResponse) {
    const body = await readJsonBody(req, 64 * 1024);
    if (!body.ok) return sendError(res, body.error);
    const parsed = parseFaults(body.value);
    if (!parsed.ok) {
      return sendError(res, {
        status: 400,
        message: parsed.error,
        type: "invalid_request_error",
        code: null,
      });
    }
    try {
      await setFaults(parsed.faults);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      return sendError(res, { status: 500, message, type: "server_error", code: null });
    }
    if (faults.refuseConnections) res.shouldKeepAlive = false;
    sendJson(res, 200, faults);
  }

  const created = Math.floor(Date.now() / 1000);
  const routes: Record<string, Partial<Record<string, Route>>> = {
    "/v1/chat/completions": { POST: (req, res, path) => inference(req, res, path, "chat") },
    "/v1/completions": { POST: (req, res, path) => inference(req, res, path, "completion") },
    "/v1/embeddings": { POST: (req, res, path) => inference(req, res, path, "embeddings") },
    "/v1/models": {
      GET: (_req, res) => sendJson(res, 200, modelsBody(options.models, created, options.kvCacheTokens)),
    },
    "/health": {
      GET: (_req, res) => {
        if (performance.now() < readyAt) {
          return sendJson(res, 503, { status: "loading" });
        }
        if (faults.unhealthy) return sendJson(res, 503, { status: "unhealthy" });
        res.writeHead(200, { "content-length": 0 });
        res.end();
      },
    },
    "/metrics": {
      GET: (_req, res) => {
        const text = renderMetrics(options.models[0] ?? "", stats());
        res.writeHead(200, {
          "content-type": METRICS_CONTENT_TYPE,
          "content-length": Buffer.byteLength(text),
        });
        res.end(text);
      },
    },
    "/sim/faults": {
      GET: (_req, res) => sendJson(res, 200, faults),
      POST: (req, res) => postFaults(req, res),
      DELETE: async (_req, res) => {
        await clearFaults();
        sendJson(res, 200, faults);
      },
    },
    "/sim/stats": { GET: (_req, res) => sendJson(res, 200, stats()) },
  };

  function notFound(res: ServerResponse, method: string, path: string): void {
    sendError(res, {
      status: 404,
      message: `Not found: ${method} ${path}`,
      type: NOT_FOUND_TYPE,
      code: "not_found",
    });
  }

  server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    // While refusing, connections that were already open must not be kept for reuse.
    if (faults.refuseConnections) res.shouldKeepAlive = false;
    const method = req.method ?? "GET";
    const path = pathOf(req.url);
    const byMethod = routes[path];
    if (byMethod === undefined) {
      const prefix = "/v1/models/";
      if (method === "GET" && path.startsWith(prefix)) {
        const id = decodeURIComponent(path.slice(prefix.length));
        if (options.models.includes(id))
          return sendJson(res, 200, modelCard(id, created, options.kvCacheTokens));
        return sendError(res, {
          status: 404,
          message: `The model \`${id}\` does not exist or you do not have access to it.`,
          type: NOT_FOUND_TYPE,
          param: null,
          code: "model_not_found",
        });
      }
      return notFound(res, method, path);
    }
    const route = byMethod[method];
    if (route === undefined) {
      return sendError(
        res,
        { status: 405, message: `Method ${method} not allowed on ${path}`, type: NOT_FOUND_TYPE, code: null },
        { allow: Object.keys(byMethod).join(", ") },
      );
    }
    const result = route(req, res, path);
    if (result instanceof Promise) {
      result.catch((err: unknown) => {
        if (res.headersSent) {
          res.destroy();
          return;
        }
        const message = err instanceof Error ? err.message : String(err);
        sendError(res, { status: 500, message, type: "server_error", code: null });
      });
    }
  });

  server.on("connection", (socket) => {
    if (!faults.resetConnections) return;
    counters.connectionsReset++;
    socket.resetAndDestroy();
  });

  // --- listening, refusing, closing ---------------------------------------------------------------

  function listenOn(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => {
        server.off("listening", onListening);
        reject(err);
      };
      const onListening = () => {
        server.off("error", onError);
        resolve();
      };
      server.once("error", onError);
      server.once("listening", onListening);
      server.listen(port, options.host);
    });
  }

  await listenOn(options.port);
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("sim server has no TCP address");
  const port = address.port;

  let listenChain: Promise<void> = Promise.resolve();
  /** Serialised, so quick refuse/accept toggles cannot race two listen() calls. */
  function syncListening(): Promise<void> {
    const op = listenChain.then(async () => {
      if (closed) return;
      if (faults.refuseConnections && server.listening) {
        // Stops accepting at once and closes idle keep-alive connections; in-flight ones may finish.
        server.close();
      } else if (!faults.refuseConnections && !server.listening) {
        await listenOn(port);
        // The GPU "comes back" cold, as a restarted engine: slow at first, its prefix cache empty.
        warmupFrom = performance.now();
        prefixCache?.clear();
      }
    });
    listenChain = op.catch(() => {});
    return op;
  }

  async function setFaults(change: Partial<SimFaults>): Promise<void> {
    const parsed = parseFaults(change);
    if (!parsed.ok) throw new RangeError(parsed.error);
    faults = { ...faults, ...parsed.faults };
    // Set at run time, slow start means "the GPU is cold now".
    if ((parsed.faults.slowStartMs ?? 0) > 0) warmupFrom = performance.now();
    // Pooled keep-alive connections would dodge the reset; make clients reconnect.
    if (parsed.faults.resetConnections === true) server.closeIdleConnections();
    await syncListening();
  }

  function clearFaults(): Promise<void> {
    return setFaults({ ...defaultSimFaults });
  }

  if (faults.refuseConnections) await syncListening();

  let closing: Promise<void> | null = null;
  async function close(): Promise<void> {
    if (closing !== null) return closing;
    closed = true;
    closing = (async () => {
      scheduler.close();
      embeddings.close();
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      await listenChain;
      server.closeAllConnections();
      if (server.listening) {
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
    })();
    return closing;
  }

  return {
    url: `http://${clientHost(options.host)}:${port}`,
    port,
    options: { ...options, port },
    setFaults,
    clearFaults,
    faults: () => ({ ...faults }),
    stats,
    onAbort(listener) {
      abortListeners.add(listener);
      return () => abortListeners.delete(listener);
    },
    close,
  };
}
