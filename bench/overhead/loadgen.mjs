#!/usr/bin/env node
/**
 * Open-loop load generator: requests leave on a fixed timetable (request i at t0 + i / rate),
 * whatever the target does, and each latency is measured from the request's SCHEDULED send
 * time. A slow answer therefore cannot delay the next sends and hide its own queueing
 * (coordinated omission, Gil Tene, "How NOT to Measure Latency").
 *
 * Node's timers have 1 ms granularity, too coarse for sub-millisecond differences, and busy
 * waiting would steal the CPU core this shares with the backend. So a worker thread sleeps in
 * Atomics.wait (sub-millisecond resolution, no CPU while asleep) and posts a tick to the main
 * thread when a send is due; the main thread sends every request whose time has come. The
 * remaining lag of the send behind its schedule is reported (sendLag) and is part of `latency`;
 * `service` is measured from the actual send.
 *
 * usage: node bench/overhead/loadgen.mjs --url http://127.0.0.1:PORT --rate 500 --duration 10
 *          [--warmup 2] [--stream] [--connections 64] [--path /v1/chat/completions]
 *          [--header "name: value"]... [--extra '{"temperature":0}'] [--count-header NAME]
 * --extra merges fields into the request body; --count-header counts the values of one response
 * header (e.g. x-floodgate-cache) over the measured phase, as `headerCounts`.
 * Prints one JSON object on stdout.
 */
import { parseArgs } from "node:util";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";

/** How long a stream may stay open after its `data: [DONE]` before it counts as unterminated. */
const UNTERMINATED_MS = 50;

if (isMainThread) await main();
else runTimer(workerData);

/** Worker: sleep until each scheduled time, then tell the main thread which index is due. */
function runTimer({ t0Epoch, intervalMs, count }) {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const t0 = t0Epoch - performance.timeOrigin;
  for (let i = 0; i < count; i++) {
    const wait = t0 + i * intervalMs - performance.now();
    if (wait > 0) Atomics.wait(sleeper, 0, 0, wait);
    parentPort.postMessage(i);
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      path: { type: "string", default: "/v1/chat/completions" },
      rate: { type: "string", default: "500" },
      duration: { type: "string", default: "10" },
      warmup: { type: "string", default: "2" },
      connections: { type: "string", default: "64" },
      stream: { type: "boolean", default: false },
      model: { type: "string", default: "bench-model" },
      header: { type: "string", multiple: true, default: [] },
      extra: { type: "string", default: "{}" },
      "count-header": { type: "string" },
    },
  });
  if (!values.url) throw new Error("--url is required");
  const { Pool } = await import("undici");
  const rate = Number(values.rate);
  const stream = values.stream;
  const body = JSON.stringify({
    model: values.model,
    messages: [{ role: "user", content: "hello" }],
    max_tokens: 16,
    ...JSON.parse(values.extra),
    ...(stream ? { stream: true } : {}),
  });
  const headers = { "content-type": "application/json" };
  for (const h of values.header) {
    const colon = h.indexOf(":");
    if (colon < 1) throw new Error(`--header wants "name: value", got ${h}`);
    headers[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim();
  }
  const countHeader = values["count-header"]?.toLowerCase();
  const pool = new Pool(values.url, {
    connections: Number(values.connections),
    pipelining: 1,
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
    keepAliveTimeout: 60_000,
  });
  const request = {
    path: values.path,
    method: "POST",
    headers,
    body,
  };

  if (Number(values.warmup) > 0) await phase(Number(values.warmup));
  const measured = await phase(Number(values.duration));
  await pool.close();
  process.stdout.write(`${JSON.stringify({ rate, stream, ...measured })}\n`);

  /** One open-loop phase; resolves when every request sent in it has finished. */
  function phase(seconds) {
    const count = Math.round(rate * seconds);
    const intervalMs = 1000 / rate;
    const t0Epoch = performance.timeOrigin + performance.now() + 20;
    const t0 = t0Epoch - performance.timeOrigin;
    const samples = { latency: [], service: [], sendLag: [] };
    const statuses = {};
    const headerCounts = {};
    let errors = 0;
    let unterminated = 0;
    let next = 0;
    let outstanding = 0;
    let resolvePhase;
    const done = new Promise((resolve) => {
      resolvePhase = resolve;
    });
    const timer = new Worker(new URL(import.meta.url), { workerData: { t0Epoch, intervalMs, count } });
    timer.on("message", (due) => {
      while (next <= due) {
        fire(t0 + next * intervalMs);
        next++;
      }
    });
    timer.on("error", (err) => {
      throw err;
    });

    function fire(scheduled) {
      outstanding++;
      const sentAt = performance.now();
      samples.sendLag.push(sentAt - scheduled);
      pool
        .request(request)
        .then(
          (res) =>
            new Promise((resolve) => {
              let first;
              let settled = false;
              let ok = res.statusCode === 200;
              if (stream) ok &&= String(res.headers["content-type"]).startsWith("text/event-stream");
              const settle = (at, failed) => {
                if (settled) return;
                settled = true;
                statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
                if (countHeader) {
                  const v = String(res.headers[countHeader] ?? "(none)");
                  headerCounts[v] = (headerCounts[v] ?? 0) + 1;
                }
                if (ok && !failed && at !== undefined) {
                  samples.latency.push(at - scheduled);
                  samples.service.push(at - sentAt);
                } else errors++;
                resolve();
              };
              res.body.on("data", (chunk) => {
                if (first === undefined && (!stream || chunk.includes("data:"))) first = performance.now();
                if (stream && chunk.includes("data: [DONE]")) {
                  // Every event is in: a stream that does not end soon after is a proxy bug; it
                  // is counted, cut (its connection is lost) and its first event still timed.
                  setTimeout(() => {
                    if (settled) return;
                    unterminated++;
                    settle(first, false);
                    res.body.destroy();
                  }, UNTERMINATED_MS).unref();
                }
              });
              // Non-streamed: the whole body has arrived; streamed: the first data event.
              res.body.on("end", () => settle(stream ? first : performance.now(), false));
              res.body.on("error", () => settle(undefined, true));
            }),
          () => {
            errors++;
          },
        )
        .finally(() => {
          outstanding--;
          if (next === count && outstanding === 0) resolvePhase();
        });
    }

    return done.then(async () => {
      await timer.terminate();
      const wallSeconds = (performance.now() - t0) / 1000;
      return {
        sent: count,
        ok: samples.latency.length,
        errors,
        unterminated,
        statuses,
        ...(countHeader ? { headerCounts } : {}),
        achievedRate: Math.round(count / wallSeconds),
        latencyMs: summarize(samples.latency),
        serviceMs: summarize(samples.service),
        sendLagMs: summarize(samples.sendLag),
      };
    });
  }
}

function summarize(values) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  const at = (q) => round(sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]);
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return {
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    p999: at(0.999),
    max: round(sorted[sorted.length - 1]),
    mean: round(mean),
  };
}

function round(ms) {
  return Math.round(ms * 1000) / 1000;
}
