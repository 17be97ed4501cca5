import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import type { Engine } from "../../../src/config/index.js";
import { startSim } from "../../../src/sim/index.js";
import {
  type LoadSignal,
  LoadSignalScraper,
  loadPenalty,
  type ScraperOptions,
  UNKNOWN_PENALTY,
} from "../../../src/upstream/load-signals.js";
import { eventually } from "../../helpers/eventually.js";

const TGI_TEXT = `# TYPE tgi_queue_size gauge
tgi_queue_size 3
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 9
# TYPE tgi_request_count counter
tgi_request_count 120
`;

const LLAMACPP_TEXT = `# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 4
`;

interface SeenRequest {
  method: string | undefined;
  url: string | undefined;
  headers: IncomingHttpHeaders;
}

interface TextServer {
  origin: string;
  seen: SeenRequest[];
  /** Requests whose client went away before the answer ended. */
  aborted: number;
  close(): Promise<void>;
}

/** A plain node:http server on port 0; the handler decides the answer. */
async function textServer(
  handler: (req: IncomingMessage, res: ServerResponse, n: number) => void,
): Promise<TextServer> {
  const seen: SeenRequest[] = [];
  const state: TextServer = { origin: "", seen, aborted: 0, close: async () => {} };
  const server = createServer((req, res) => {
    seen.push({ method: req.method, url: req.url, headers: req.headers });
    res.on("close", () => {
      if (!res.writableFinished) state.aborted++;
    });
    handler(req, res, seen.length);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  state.origin = `http://127.0.0.1:${port}`;
  state.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return state;
}

const serveText = (text: string) => (_req: IncomingMessage, res: ServerResponse) => {
  res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
  res.end(text);
};

/** `timeoutMs` is only there to turn a hang into a failure: generous, never the verdict. */
async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  await eventually(cond, { timeout: Math.max(timeoutMs, 10_000), interval: 5, what });
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function scraper(
  origin: string,
  engine: Engine,
  options: Partial<ScraperOptions> = {},
  extra: {
    basePath?: string;
    headers?: [string, string][];
    onReading?: (s: LoadSignal | undefined) => void;
  } = {},
): LoadSignalScraper {
  const s = new LoadSignalScraper(
    { name: "b0", origin, basePath: extra.basePath ?? "", engine, headers: extra.headers ?? [] },
    { intervalMs: 60_000, timeoutMs: 1_000, staleAfterMs: 5_000, ...options },
    extra.onReading,
  );
  cleanups.push(() => s.stop());
  return s;
}

describe("LoadSignalScraper against the simulator (vLLM metric names)", () => {
  it("reads the queue under load, then goes stale once the backend is gone", async () => {
    const sim = await startSim({
      models: ["m"],
      slots: 2,
      decodeStepMs: 50,
      decodeMsPerSeq: 0,
      prefillMsPerToken: 0,
    });
    let simOpen = true;
    cleanups.push(() => (simOpen ? sim.close() : undefined));
    // Stale after 1 s: a reading is used well within that, however busy the machine.
    const staleAfterMs = 1000;
    const s = scraper(sim.url, "vllm", { intervalMs: 50, timeoutMs: 500, staleAfterMs });

    // Idle first: a real reading, penalty 1.
    await s.scrapeNow();
    expect(s.current()).toMatchObject({ waiting: 0, running: 0, kvCacheUsage: 0 });
    expect(loadPenalty(s.current(), performance.now(), staleAfterMs)).toBe(1);

    // Five 50 s requests on two slots: two run, three wait, until the test lets them go.
    const body = JSON.stringify({
      model: "m",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 1000,
    });
    const controller = new AbortController();
    cleanups.push(() => controller.abort());
    const calls = Array.from({ length: 5 }, () =>
      request(`${sim.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
        signal: controller.signal,
      }).then(
        async (res) => {
          await res.body.text();
          return res.statusCode;
        },
        () => "aborted",
      ),
    );
    await waitFor(() => sim.stats().waiting === 3, 2_000, "three queued requests");
    await s.scrapeNow();
    const loaded = s.current();
    expect(loaded).toBeDefined();
    expect(loaded?.waiting).toBe(3);
    expect(loaded?.running).toBe(2);
    expect(loaded?.kvCacheUsage).toBeGreaterThan(0);
    expect(loaded?.kvCacheUsage).toBeLessThanOrEqual(1);
    expect(loadPenalty(loaded, loaded?.at ?? 0, staleAfterMs)).toBeGreaterThanOrEqual(4);
    controller.abort();
    expect(await Promise.all(calls)).toEqual(["aborted", "aborted", "aborted", "aborted", "aborted"]);

    // Scraping on its own interval from here on; the queue drains.
    s.start();
    await waitFor(() => s.current()?.waiting === 0 && s.current()?.running === 0, 2_000, "drained");

    await sim.close();
    simOpen = false;
    const lastAt = s.last?.at ?? 0;
    await waitFor(() => s.current() === undefined, 2_000, "the reading to go stale");
    // Not dropped early: refused scrapes leave the reading in place until it is staleAfterMs old.
    expect(performance.now() - lastAt).toBeGreaterThanOrEqual(staleAfterMs);
    expect(s.last).toMatchObject({ waiting: 0, running: 0 });
    expect(s.last?.at).toBe(lastAt);
    expect(loadPenalty(s.current(), performance.now(), staleAfterMs)).toBe(UNKNOWN_PENALTY);
  });
});

describe("LoadSignalScraper against plain HTTP servers", () => {
  it("GETs basePath/metrics with the target's headers and reads TGI's gauges", async () => {
    const srv = await textServer(serveText(TGI_TEXT));
    cleanups.push(() => srv.close());
    const readings: (LoadSignal | undefined)[] = [];
    const s = scraper(
      srv.origin,
      "tgi",
      {},
      {
        basePath: "/tgi/v2",
        headers: [["Authorization", "Bearer backend-secret"]],
        onReading: (r) => readings.push(r),
      },
    );
    await s.scrapeNow();
    expect(srv.seen).toHaveLength(1);
    expect(srv.seen[0]?.method).toBe("GET");
    expect(srv.seen[0]?.url).toBe("/tgi/v2/metrics");
    expect(srv.seen[0]?.headers.authorization).toBe("Bearer backend-secret");
    // Asks for the classic text format, not OpenMetrics.
    expect(srv.seen[0]?.headers.accept).toContain("text/plain;version=0.0.4");
    expect(s.current()).toMatchObject({ waiting: 3, running: 9, kvCacheUsage: undefined });
    expect(readings).toEqual([s.current()]);
  });

  it("reads llama.cpp's gauges (a build without the KV gauge: kvCacheUsage undefined)", async () => {
    const srv = await textServer(serveText(LLAMACPP_TEXT));
    cleanups.push(() => srv.close());
    const s = scraper(srv.origin, "llamacpp");
    await s.scrapeNow();
    expect(s.current()).toMatchObject({ waiting: 4, running: 1, kvCacheUsage: undefined });
    expect(loadPenalty(s.current(), performance.now(), 5_000)).toBe(5);
  });

  it("start() scrapes at once, then about every intervalMs", async () => {
    const srv = await textServer(serveText(TGI_TEXT));
    cleanups.push(() => srv.close());
    // At once: with a one-minute interval, the first scrape cannot be the timer's.
    const once = scraper(srv.origin, "tgi", { intervalMs: 60_000 });
    once.start();
    await waitFor(() => srv.seen.length === 1, 1_000, "the first scrape");
    once.stop();
    // Then on its interval: it keeps coming, and never sooner than 40 ms - 10% apart.
    const s = scraper(srv.origin, "tgi", { intervalMs: 40 });
    const t0 = performance.now();
    s.start();
    await waitFor(() => srv.seen.length >= 1 + 5, 1_000, "five scrapes");
    s.stop();
    const elapsed = performance.now() - t0;
    const scrapes = srv.seen.length - 1;
    expect(scrapes).toBeLessThanOrEqual(1 + Math.floor(elapsed / 36));
    const afterStop = srv.seen.length;
    await sleep(150);
    expect(srv.seen.length).toBe(afterStop);
  });

  it("keeps the previous reading through a failed scrape (500, garbage, wrong engine) until it is stale", async () => {
    let answer: "ok" | "error" | "garbage" = "ok";
    const srv = await textServer((_req, res) => {
      if (answer === "error") {
        res.writeHead(500).end("boom");
      } else {
        res
          .writeHead(200, { "content-type": "text/plain" })
          .end(answer === "ok" ? TGI_TEXT : "<html>hi</html>");
      }
    });
    cleanups.push(() => srv.close());
    let t = 1_000;
    const readings: (LoadSignal | undefined)[] = [];
    const s = scraper(
      srv.origin,
      "tgi",
      { staleAfterMs: 100, now: () => t },
      { onReading: (r) => readings.push(r) },
    );

    await s.scrapeNow();
    const first = s.current();
    expect(first).toMatchObject({ waiting: 3, at: 1_000 });

    t = 1_050;
    answer = "error";
    await s.scrapeNow();
    answer = "garbage";
    await s.scrapeNow();
    expect(s.current()).toBe(first);
    expect(readings).toEqual([first, undefined, undefined]);

    t = 1_101; // older than staleAfterMs
    expect(s.current()).toBeUndefined();
    expect(s.last).toBe(first);
    expect(loadPenalty(s.current(), t, 100)).toBe(UNKNOWN_PENALTY);

    answer = "ok";
    await s.scrapeNow();
    expect(s.current()).toMatchObject({ waiting: 3, at: 1_101 });
  });

  it("gives up on a hanging backend after timeoutMs, and never throws", async () => {
    const srv = await textServer(() => {
      /* never answers */
    });
    cleanups.push(() => srv.close());
    const s = scraper(srv.origin, "vllm", { timeoutMs: 150 });
    const t0 = performance.now();
    await s.scrapeNow();
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(140);
    // It never answers: without the timeout this would not end. Slack for a busy machine.
    expect(took).toBeLessThan(2_000);
    expect(s.current()).toBeUndefined();
    await waitFor(() => srv.aborted === 1, 1_000, "the server to see the scrape abandoned");
  });

  it("stop() aborts an in-flight scrape at once", async () => {
    const srv = await textServer(() => {
      /* never answers */
    });
    cleanups.push(() => srv.close());
    const readings: (LoadSignal | undefined)[] = [];
    const s = scraper(srv.origin, "sglang", { timeoutMs: 10_000 }, { onReading: (r) => readings.push(r) });
    const pending = s.scrapeNow();
    await waitFor(() => srv.seen.length === 1, 1_000, "the scrape to arrive");
    const t0 = performance.now();
    s.stop();
    await pending;
    // At once, not at the 10 s timeout; slack for a busy machine.
    expect(performance.now() - t0).toBeLessThan(5_000);
    await waitFor(() => srv.aborted === 1, 1_000, "the server to see the abort");
    // A stopped scraper reports nothing, and scrapes no more.
    expect(readings).toEqual([]);
    await s.scrapeNow();
    expect(srv.seen).toHaveLength(1);
  });

  it("does not scrape engines without metrics (ollama, openai)", async () => {
    const srv = await textServer(serveText(LLAMACPP_TEXT));
    cleanups.push(() => srv.close());
    for (const engine of ["ollama", "openai"] as const) {
      const s = scraper(srv.origin, engine, { intervalMs: 10 });
      s.start();
      await s.scrapeNow();
      await sleep(50);
      expect(s.current()).toBeUndefined();
    }
    expect(srv.seen).toHaveLength(0);
  });

  it("survives a refused connection and a throwing listener", async () => {
    const srv = await textServer(serveText(TGI_TEXT));
    const origin = srv.origin;
    await srv.close();
    const s = scraper(
      origin,
      "tgi",
      {},
      {
        onReading: () => {
          throw new Error("listener bug");
        },
      },
    );
    await expect(s.scrapeNow()).resolves.toBeUndefined();
    expect(s.current()).toBeUndefined();
  });
});
