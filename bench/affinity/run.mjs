#!/usr/bin/env node
/**
 * The prefix-affinity benchmark: three `floodgate sim` servers (8, 8 and 4 slots, weights 2, 2
 * and 1) that cache prompt prefixes (each about five system prompts' worth of 256-character
 * blocks, prefill at 5,000 tokens/s), the workload of workload.mjs at 1.5x the fleet's uncached
 * capacity, measured in the same run, through each target:
 *   least_request            floodgate, affinity off (its default balancer)
 *   affinity                    floodgate, `affinity: { by: prefix }` with the model of the
 *                               servers' caches (cacheTokens, prefillTokensPerSecond) and
 *                               loadFactor 2: the target the issue's targets are judged on
 *   affinity (loadFactor 1.25)  the same at the default load bound
 *   affinity (ring only)        `affinity: { by: prefix }` alone: consistent hashing, no model
 *   nginx least_conn            least_conn over the three (when nginx is installed)
 * Each target gets a fresh fleet (cold caches) and the same seeded arrivals; the first
 * `warmup` seconds fill the caches and are not counted. Reported per target: the prefix-cache
 * hit rate in prompt tokens (the simulators' vllm:prefix_cache counters), mean and p99 time to
 * first token, goodput (answers whose first token came within 2 s, per second), and each
 * server's peak of requests queued beyond its slots. Raw results go to bench/affinity/results/
 * (git-ignored), the report to bench/affinity/REPORT.md with its SVG charts.
 *
 * usage: node bench/affinity/run.mjs [--quick] [--duration SECONDS] [--warmup SECONDS]
 *                                    [--rounds N] [--seed N] [--skip-nginx]
 *                                    [--targets "least_request,affinity"] [--affinity JSON]
 * (`npm run bench:affinity` builds first and runs this.)
 */
import { setMaxListeners } from "node:events";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { stringify as toYaml } from "yaml";
import {
  findBinary,
  freePort,
  setUp,
  sleep,
  startNginx,
  startServer,
  stopAll,
  waitReady,
} from "../lib/processes.mjs";
import { newClient, openLoop, poissonTimes, prng, streamOnce } from "../surge/load.mjs";
import { writeReport } from "./report.mjs";
import {
  BLOCK_CHARS,
  blocksPerPrompt,
  bodies,
  CACHE_PROMPTS,
  CHARS_PER_TOKEN,
  MODEL,
  PREFILL_MS_PER_TOKEN,
  PREFILL_TOKENS_PER_SECOND,
  uncachedBody,
} from "./workload.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const MAIN = join(ROOT, "dist/src/main.js");
const NODE_FLAGS = ["--max-semi-space-size=64"];

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    duration: { type: "string" },
    warmup: { type: "string" },
    rounds: { type: "string", default: "1" },
    seed: { type: "string", default: "1" },
    "skip-nginx": { type: "boolean", default: false },
    /** Only these targets, comma-separated names (for trying changes; the report shows what ran). */
    targets: { type: "string" },
    /** The `affinity` target's `affinity:` block as JSON, instead of MODELLED with loadFactor 2. */
    affinity: { type: "string" },
  },
});

const PLAN = {
  /** Seconds of counted arrivals, after the warm-up. */
  seconds: Number(args.duration ?? (args.quick ? 20 : 60)),
  warmupSeconds: Number(args.warmup ?? (args.quick ? 10 : 20)),
  rounds: Number(args.rounds),
  seed: Number(args.seed),
  load: 1.5,
  capacityWarmupS: args.quick ? 4 : 6,
  capacityWindowS: args.quick ? 15 : 30,
  stragglerSeconds: 30,
  sloMs: 2000,
};
const FLEET = [
  { name: "sim-a", slots: 8, weight: 2, seed: 11 },
  { name: "sim-b", slots: 8, weight: 2, seed: 12 },
  { name: "sim-c", slots: 4, weight: 1, seed: 13 },
];
const CACHE_BLOCKS = CACHE_PROMPTS * blocksPerPrompt();
const QUEUE_SAMPLE_MS = 20;
const log = (msg) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${msg}`);

async function startFleet() {
  const fleet = [];
  for (const b of FLEET) {
    const port = await freePort();
    const proc = startServer(
      b.name,
      process.execPath,
      [
        MAIN,
        "sim",
        ...["--port", String(port), "--model", MODEL, "--slots", String(b.slots), "--seed", String(b.seed)],
        ...["--prefill-ms-per-token", String(PREFILL_MS_PER_TOKEN)],
        ...["--prefix-cache-blocks", String(CACHE_BLOCKS), "--prefix-block-chars", String(BLOCK_CHARS)],
      ],
      ROOT,
    );
    fleet.push({ ...b, url: `http://127.0.0.1:${port}`, port, proc });
  }
  for (const b of fleet) await waitReady(b.proc, `${b.url}/health`);
  return fleet;
}

async function simStats(fleet) {
  return Promise.all(
    fleet.map(async (b) => (await fetch(`${b.url}/sim/stats`, { signal: AbortSignal.timeout(5000) })).json()),
  );
}

/**
 * The fleet's uncached capacity: closed loops straight to each server, as many at once as it has
 * slots, every request with a system prompt of its own. Completions per second, summed; per
 * worker between its first and last completion in the window (see surge's closedLoop).
 */
async function measureCapacity(fleet) {
  const dispatcher = newClient();
  const random = prng(PLAN.seed + 99);
  const t0 = performance.now();
  const clock = () => performance.now() - t0;
  const from = PLAN.capacityWarmupS * 1000;
  const to = from + PLAN.capacityWindowS * 1000;
  const signal = new AbortController().signal;
  setMaxListeners(0, signal);
  let n = 0;
  const worker = async (url) => {
    const ends = [];
    while (clock() < to) {
      const rec = await streamOnce(dispatcher, url, "Bearer none", signal, clock, uncachedBody(random, n++));
      if (!rec.error && rec.end >= from && rec.end < to) ends.push(rec.end);
    }
    return ends.length >= 2 ? ((ends.length - 1) * 1000) / (ends.at(-1) - ends[0]) : 0;
  };
  const rates = await Promise.all(fleet.flatMap((b) => Array.from({ length: b.slots }, () => worker(b.url))));
  await dispatcher.close();
  return rates.reduce((a, r) => a + r, 0);
}

function floodgateConfig(port, adminPort, fleet, affinity) {
  return toYaml({
    listen: { host: "127.0.0.1", port },
    admin: { enabled: true, host: "127.0.0.1", port: adminPort, token: "affinity-bench-admin-token" },
    log: { level: "warn", accessLog: false },
    pools: {
      main: {
        models: [MODEL],
        backends: fleet.map((b) => ({
          name: b.name,
          url: b.url,
          engine: "vllm",
          weight: b.weight,
          maxConcurrency: b.slots,
        })),
        ...(affinity ? { affinity } : {}),
      },
    },
  });
}

/**
 * The gateway's model of the servers' caches, as an operator would configure it from the engines:
 * each caches CACHE_BLOCKS blocks of BLOCK_CHARS characters (in tokens of 4 characters) and
 * prefills at PREFILL_TOKENS_PER_SECOND.
 */
const MODELLED = {
  by: "prefix",
  cacheTokens: (CACHE_BLOCKS * BLOCK_CHARS) / CHARS_PER_TOKEN,
  prefillTokensPerSecond: PREFILL_TOKENS_PER_SECOND,
};

/**
 * `affinity`, the target the issue's targets are judged on, bounds the load at twice a server's
 * share: at this load (about 8 of the fleet's 20 slots in flight) the default 1.25 caps the
 * 4-slot server at 2 or 3 requests and the others at 4 or 5, so a popular prompt's requests leave
 * the server holding it even though it has free slots (REPORT.md shows the default beside it).
 */
const TARGETS = [
  { name: "least_request", kind: "floodgate", affinity: undefined },
  {
    name: "affinity",
    kind: "floodgate",
    affinity: args.affinity ? JSON.parse(args.affinity) : { ...MODELLED, loadFactor: 2 },
  },
  { name: "affinity (loadFactor 1.25)", kind: "floodgate", affinity: MODELLED },
  { name: "affinity (ring only)", kind: "floodgate", affinity: { by: "prefix" } },
  { name: "nginx least_conn", kind: "nginx" },
];

/** Each nginx run gets a directory of its own. */
let nginxRuns = 0;

async function startTarget(target, fleet, tmp, nginx) {
  if (target.kind === "nginx") {
    const t = await startNginx(
      nginx,
      fleet.map((b) => ({ port: b.port, weight: b.weight })),
      "least_conn;",
      `nginx-${++nginxRuns}`,
    );
    return { ...t, config: t.conf };
  }
  const port = await freePort();
  const adminPort = await freePort();
  const config = floodgateConfig(port, adminPort, fleet, target.affinity);
  const file = join(tmp, `${target.name}.yaml`);
  writeFileSync(file, config);
  const proc = startServer(target.name, process.execPath, [...NODE_FLAGS, MAIN, "--config", file], ROOT);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(proc, `${url}/healthz`);
  return { url, proc, config, metricsUrl: `http://127.0.0.1:${adminPort}/metrics` };
}

async function affinityDecisions(metricsUrl) {
  if (!metricsUrl) return null;
  const text = await (
    await fetch(metricsUrl, { headers: { authorization: "Bearer affinity-bench-admin-token" } })
  ).text();
  const out = {};
  for (const m of text.matchAll(/^floodgate_affinity_decisions_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$/gm))
    out[m[1]] = Number(m[2]);
  return Object.keys(out).length > 0 ? out : null;
}

/** One target on a fresh fleet: warm-up and counted arrivals in one open loop. */
async function runTarget(target, arrivals, tmp, nginx) {
  const fleet = await startFleet();
  const t = await startTarget(target, fleet, tmp, nginx);
  const dispatcher = newClient();
  const peaks = fleet.map(() => 0);
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const stats = await simStats(fleet).catch(() => null);
      stats?.forEach((s, i) => {
        peaks[i] = Math.max(peaks[i], s.waiting);
      });
      await sleep(QUEUE_SAMPLE_MS);
    }
  })();
  // The caches' counters when the counted part starts, and at the end.
  let atWarmup;
  const warm = setTimeout(async () => {
    atWarmup = await simStats(fleet);
  }, PLAN.warmupSeconds * 1000);
  const run = await openLoop({
    dispatcher,
    url: t.url,
    arrivals,
    stragglerMs: PLAN.stragglerSeconds * 1000,
  });
  clearTimeout(warm);
  const atEnd = await simStats(fleet);
  sampling = false;
  await sampler;
  const decisions = await affinityDecisions(t.metricsUrl).catch(() => null);
  await dispatcher.close();
  await stopAll();
  const servers = fleet.map((b, i) => {
    const before = atWarmup?.[i]?.prefixCache ?? { hits: 0, queries: 0 };
    const after = atEnd[i].prefixCache;
    return {
      name: b.name,
      slots: b.slots,
      weight: b.weight,
      hits: after.hits - before.hits,
      queries: after.queries - before.queries,
      received: atEnd[i].received - (atWarmup?.[i]?.received ?? 0),
      peakQueued: peaks[i],
    };
  });
  return {
    target: target.name,
    config: t.config,
    version: t.version ?? null,
    servers,
    decisions,
    records: run.records,
  };
}

async function main() {
  const tmp = setUp("floodgate-affinity-");
  const nginx = args["skip-nginx"] ? undefined : findBinary(["/usr/sbin/nginx", "nginx"]);
  log(`fleet: ${FLEET.map((b) => `${b.name} ${b.slots} slots`).join(", ")}; cache ${CACHE_BLOCKS} blocks`);
  const results = {
    startedAt: new Date().toISOString(),
    plan: { ...PLAN, cacheBlocks: CACHE_BLOCKS, fleet: FLEET },
    node: process.version,
    rounds: [],
  };
  for (let round = 0; round < PLAN.rounds; round++) {
    const fleet = await startFleet();
    log(`round ${round + 1}: measuring the fleet's uncached capacity`);
    const capacity = await measureCapacity(fleet);
    await stopAll();
    const rate = PLAN.load * capacity;
    const seconds = PLAN.warmupSeconds + PLAN.seconds;
    const times = poissonTimes(rate, seconds, PLAN.seed + round);
    const requests = bodies(times.length, PLAN.seed + round);
    const arrivals = times.map((at, i) => ({
      at,
      tenant: at >= PLAN.warmupSeconds * 1000 ? `app${requests[i].app}` : "warmup",
      authorization: "Bearer none",
      body: requests[i].body,
    }));
    log(`uncached capacity ${capacity.toFixed(2)}/s; sending ${rate.toFixed(2)}/s for ${seconds} s`);
    const runs = [];
    for (const target of TARGETS) {
      if (target.kind === "nginx" && !nginx) continue;
      if (args.targets && !args.targets.split(",").includes(target.name)) continue;
      log(`round ${round + 1}: ${target.name}`);
      runs.push(await runTarget(target, arrivals, tmp, nginx));
    }
    results.rounds.push({ capacity, rate, runs });
  }
  mkdirSync(join(HERE, "results"), { recursive: true });
  const file = join(HERE, "results", `${results.startedAt.replace(/[:.]/g, "-")}.json`);
  writeFileSync(file, JSON.stringify(results));
  log(`raw results: ${file}`);
  const report = writeReport(results);
  log(`report: ${report}`);
}

main().catch(async (err) => {
  console.error(err);
  await stopAll();
  process.exit(1);
});
