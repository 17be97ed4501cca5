#!/usr/bin/env node
/**
 * The embeddings micro-batching benchmark: one `floodgate sim` whose embeddings engine runs one
 * call at a time at its default costs (8 ms per call + 0.5 ms per input + 0.1 ms per token: an
 * encoder served by llama.cpp with one slot, or Ollama), behind two floodgates that differ only
 * in the pool's `microBatch`:
 *   off  no batching (the default)
 *   on   microBatch: { enabled: true, maxBatchInputs: 64, maxBatchTokens: 8192, batchWindow: 5ms }
 * both with the backend at maxConcurrency 2 (one call computing, the next waiting in the engine,
 * so the engine never idles between two calls; the rest wait in floodgate's admission queue).
 *
 * Load: closed loops of 1, 8 and 64 concurrent clients, each sending one single-input request
 * (a text of 8 words from a seeded generator, all different) after another; a warm-up, then a
 * counted window. Per run: answers per second (complete 200s ending in the window), latency p50
 * and p99 from send to the whole answer, errors, and from the simulator's counters the upstream
 * calls and inputs (so inputs per call). Runs take turns in rounds (the order of off and on
 * alternating), and the report judges each round. After each `on` run, a sample of concurrent
 * requests is checked against the simulator's own answer to each input alone.
 *
 * Output: bench/microbatch/REPORT.md with throughput.svg and latency.svg (ECharts SVG), raw
 * results in bench/microbatch/results/ (git-ignored). Serialize with other load runs:
 *   flock -o /tmp/bench.lock npm run bench:microbatch
 *
 * usage: node bench/microbatch/run.mjs [--quick] [--rounds N] [--warmup S] [--window S]
 *                                      [--clients 1,8,64] [--seed N]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Agent, request } from "undici";
import { stringify as toYaml } from "yaml";
import { freePort, PINNING, setUp, sleep, startServer, stopAll, waitReady } from "../lib/processes.mjs";
import { prng } from "../surge/load.mjs";
import { writeReport } from "./report.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const MAIN = join(ROOT, "dist/src/main.js");
const NODE_FLAGS = ["--max-semi-space-size=64"];
const MODEL = "bench-embed";
const ADMIN_TOKEN = "microbatch-bench-admin-token";

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    rounds: { type: "string" },
    warmup: { type: "string" },
    window: { type: "string" },
    clients: { type: "string", default: "1,8,64" },
    seed: { type: "string", default: "1" },
  },
});

const PLAN = {
  rounds: Number(args.rounds ?? (args.quick ? 1 : 3)),
  warmupSeconds: Number(args.warmup ?? (args.quick ? 1 : 2)),
  windowSeconds: Number(args.window ?? (args.quick ? 4 : 10)),
  clients: args.clients.split(",").map(Number),
  seed: Number(args.seed),
  wordsPerInput: 8,
  maxConcurrency: 2,
  /** The simulator's defaults (src/sim/options.ts), stated for the report. */
  sim: { embedCallMs: 8, embedPerInputMs: 0.5, prefillMsPerToken: 0.1, embedSlots: 1 },
  microBatch: { enabled: true, maxBatchInputs: 64, maxBatchTokens: 8192, batchWindow: "5ms" },
  checkSample: 16,
};

const WORDS = (
  "river stone cloud lamp garden paper violet orbit candle meadow harbor signal pepper lantern " +
  "copper willow falcon marble thunder velvet glacier ember canyon saffron beacon quartz tundra"
).split(" ");
const log = (msg) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${msg}`);

/** A text of `n` words, different for every request (a number among the words). */
function text(random, n) {
  const words = [];
  for (let i = 0; i < n - 1; i++) words.push(WORDS[Math.floor(random() * WORDS.length)]);
  words.push(`w${Math.floor(random() * 1e9)}`);
  return words.join(" ");
}

async function startSim() {
  const port = await freePort();
  const proc = startServer(
    "sim",
    process.execPath,
    [MAIN, "sim", "--port", String(port), "--model", MODEL],
    ROOT,
    {
      core: 1,
    },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitReady(proc, `${url}/health`);
  return { url, proc };
}

function gatewayConfig(port, adminPort, simUrl, batching) {
  return toYaml({
    listen: { host: "127.0.0.1", port },
    admin: { enabled: true, host: "127.0.0.1", port: adminPort, token: ADMIN_TOKEN },
    log: { level: "warn", accessLog: false },
    pools: {
      embed: {
        models: [MODEL],
        backends: [{ name: "sim", url: simUrl, maxConcurrency: PLAN.maxConcurrency }],
        ...(batching ? { microBatch: PLAN.microBatch } : {}),
      },
    },
  });
}

async function startGateway(name, tmp, simUrl, batching) {
  const port = await freePort();
  const adminPort = await freePort();
  const config = gatewayConfig(port, adminPort, simUrl, batching);
  const file = join(tmp, `${name}.yaml`);
  writeFileSync(file, config);
  const proc = startServer(name, process.execPath, [...NODE_FLAGS, MAIN, "--config", file], ROOT, {
    core: 0,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitReady(proc, `${url}/healthz`);
  return { name, batching, url, proc, config, metricsUrl: `http://127.0.0.1:${adminPort}/metrics` };
}

const dispatcher = new Agent({ connections: null, pipelining: 1, headersTimeout: 0, bodyTimeout: 0 });

async function embed(url, input) {
  const res = await request(`${url}/v1/embeddings`, {
    dispatcher,
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, input }),
  });
  const body = await res.body.text();
  return { status: res.statusCode, headers: res.headers, body };
}

async function simStats(simUrl) {
  return (await request(`${simUrl}/sim/stats`, { dispatcher })).body.json();
}

/** Until the simulator has nothing running or waiting. */
async function drain(simUrl) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const s = await simStats(simUrl);
    if (s.running + s.waiting === 0 || Date.now() > deadline) return;
    await sleep(100);
  }
}

/** Samples of a Prometheus metric on floodgate's admin listener, as { labels: value }. */
async function scrape(target, name) {
  const res = await request(target.metricsUrl, {
    dispatcher,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  const text = await res.body.text();
  const out = {};
  for (const m of text.matchAll(new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, "gm"))) out[m[1]] = Number(m[2]);
  return out;
}

/**
 * `clients` closed loops against `target` for warm-up + window seconds. Every request is
 * recorded: { start, end, ok, status, batch } in ms from the start of the run.
 */
async function closedLoop(target, clients, random) {
  const t0 = performance.now();
  const clock = () => performance.now() - t0;
  const until = (PLAN.warmupSeconds + PLAN.windowSeconds) * 1000;
  const records = [];
  const worker = async () => {
    while (clock() < until) {
      const input = text(random, PLAN.wordsPerInput);
      const start = clock();
      const rec = { start, end: 0, ok: false, status: 0, batch: null, error: null };
      try {
        const res = await embed(target.url, input);
        rec.status = res.status;
        rec.batch = res.headers["x-floodgate-microbatch"] ?? null;
        const json = JSON.parse(res.body);
        rec.ok = res.status === 200 && json.data?.length === 1 && json.data[0].index === 0;
        if (!rec.ok) rec.error = json.error?.code ?? `status ${res.status}`;
      } catch (err) {
        rec.error = `network:${err?.code ?? err?.name}`;
      }
      rec.end = clock();
      records.push(rec);
    }
  };
  await Promise.all(Array.from({ length: clients }, worker));
  return records;
}

/**
 * Concurrent requests through the batching gateway, each compared with the simulator's answer
 * to its input alone (the simulator's embeddings are deterministic).
 */
async function checkAnswers(target, simUrl, random) {
  const inputs = Array.from({ length: PLAN.checkSample }, () => text(random, PLAN.wordsPerInput));
  const through = await Promise.all(inputs.map((input) => embed(target.url, input)));
  let same = 0;
  let merged = 0;
  for (const [i, input] of inputs.entries()) {
    const direct = await embed(simUrl, input);
    if (through[i].status === 200 && through[i].body === direct.body) same++;
    if (Number(through[i].headers["x-floodgate-microbatch"] ?? 1) > 1) merged++;
  }
  return { checked: inputs.length, same, merged };
}

async function runOne(target, clients, simUrl, random) {
  await drain(simUrl);
  const before = await simStats(simUrl);
  const flushesBefore = await scrape(target, "floodgate_microbatch_flushes_total");
  const records = await closedLoop(target, clients, random);
  const after = await simStats(simUrl);
  const flushesAfter = await scrape(target, "floodgate_microbatch_flushes_total");
  const flushes = {};
  for (const [labels, n] of Object.entries(flushesAfter)) {
    const reason = /reason="(\w+)"/.exec(labels)?.[1] ?? labels;
    flushes[reason] = (flushes[reason] ?? 0) + n - (flushesBefore[labels] ?? 0);
  }
  const run = {
    target: target.name,
    batching: target.batching,
    clients,
    records,
    upstream: {
      calls: after.embeddingCalls - before.embeddingCalls,
      inputs: after.embeddingInputs - before.embeddingInputs,
      rejectedBusy: after.rejectedBusy - before.rejectedBusy,
    },
    flushes,
  };
  if (target.batching) {
    await drain(simUrl);
    run.check = await checkAnswers(target, simUrl, random);
  }
  return run;
}

async function main() {
  const tmp = setUp("floodgate-microbatch-");
  const cpus = os.cpus();
  const results = {
    startedAt: new Date().toISOString(),
    node: process.version,
    machine: { cpu: cpus[0]?.model ?? "unknown", cores: os.availableParallelism(), pinned: PINNING },
    plan: PLAN,
    rounds: [],
  };
  const sim = await startSim();
  const off = await startGateway("off", tmp, sim.url, false);
  const on = await startGateway("on", tmp, sim.url, true);
  results.configs = { off: off.config, on: on.config };
  log(`sim ${sim.url}; floodgate off ${off.url}, on ${on.url}; ${PINNING ? "pinned" : "not pinned"}`);
  const random = prng(PLAN.seed);
  for (let round = 0; round < PLAN.rounds; round++) {
    const runs = [];
    for (const clients of PLAN.clients) {
      const order = round % 2 === 0 ? [off, on] : [on, off];
      for (const target of order) {
        const run = await runOne(target, clients, sim.url, random);
        const counted = run.records.filter((r) => r.ok).length;
        log(
          `round ${round + 1}: ${clients} clients, batching ${target.name}: ${counted} answers, ` +
            `${run.upstream.calls} upstream calls for ${run.upstream.inputs} inputs`,
        );
        runs.push(run);
      }
    }
    results.rounds.push({ runs });
  }
  await dispatcher.close();
  await stopAll();
  mkdirSync(join(HERE, "results"), { recursive: true });
  const file = join(HERE, "results", `microbatch-${results.startedAt.replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, JSON.stringify(results));
  writeFileSync(join(HERE, "results", "latest.json"), JSON.stringify(results));
  log(`raw results: ${file}`);
  log(`report: ${writeReport(results)}`);
}

main().catch(async (err) => {
  console.error(err);
  await stopAll();
  process.exit(1);
});
