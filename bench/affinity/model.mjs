#!/usr/bin/env node
/**
 * The affinity benchmark in virtual time, for trying policies in seconds instead of minutes: the
 * gateway's real pool and admission (dist/src/upstream/pool.js, with its ring, cache models and
 * queue) in front of the simulator's real batch scheduler and prefix cache
 * (dist/src/sim/batch-scheduler.js, prefix-cache.js), with the workload of workload.mjs, and no
 * HTTP, processes or wall clock: timers run on a virtual clock (setTimeout and performance.now
 * are replaced in this process), so a 100-second round takes about half a second and the same
 * seed gives the same result.
 *
 * It leaves out what run.mjs measures for real: HTTP and streaming costs, the gateway's other
 * stages, a shared machine's noise. Its numbers are for comparing policies with each other, and
 * run.mjs (REPORT.md) is the benchmark. On the development machine the two agree within a few
 * points of hit rate (least_request about 50%, the ring alone 60-70%, the cache models about 86%
 * at loadFactor 1.25); first-token times are lower here (no HTTP), least_request's most of all.
 *
 * usage: npm run build && node bench/affinity/model.mjs [--seeds 1-10] [--rate 8]
 *          [--affinity JSON]...   each --affinity is a target (default: the MODELLED config)
 *          [--oracle]             also a fixed assignment of applications to servers, no gateway
 */
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    seeds: { type: "string", default: "1-10" },
    rate: { type: "string", default: "8" },
    affinity: { type: "string", multiple: true },
    oracle: { type: "boolean", default: false },
  },
});

// ---------------------------------------------------------------------------------------------
// Virtual time: a heap of timers, run in order; performance.now() and Date.now() follow it.

let vnow = 0;
let seq = 0;
const heap = [];
const before = (a, b) => a.t < b.t || (a.t === b.t && a.seq < b.seq);
function push(e) {
  heap.push(e);
  for (let i = heap.length - 1; i > 0; ) {
    const p = (i - 1) >> 1;
    if (!before(heap[i], heap[p])) break;
    [heap[i], heap[p]] = [heap[p], heap[i]];
    i = p;
  }
}
function pop() {
  const top = heap[0];
  const last = heap.pop();
  if (heap.length > 0) {
    heap[0] = last;
    for (let i = 0; ; ) {
      const l = 2 * i + 1;
      let m = i;
      if (l < heap.length && before(heap[l], heap[m])) m = l;
      if (l + 1 < heap.length && before(heap[l + 1], heap[m])) m = l + 1;
      if (m === i) break;
      [heap[i], heap[m]] = [heap[m], heap[i]];
      i = m;
    }
  }
  return top;
}
globalThis.setTimeout = (fn, ms, ...rest) => {
  const e = { t: vnow + Math.max(0, Number(ms) || 0), seq: seq++, fn: () => fn(...rest), cancelled: false };
  e.unref = () => e;
  e.ref = () => e;
  e.hasRef = () => true;
  push(e);
  return e;
};
globalThis.clearTimeout = (e) => {
  if (e && typeof e === "object") e.cancelled = true;
};
performance.now = () => vnow;
const epoch = Date.now();
Date.now = () => epoch + vnow;

async function runUntil(t) {
  let n = 0;
  while (heap.length > 0 && heap[0].t <= t) {
    const e = pop();
    if (e.cancelled) continue;
    vnow = e.t;
    e.fn();
    // Let promise callbacks (refusals) run now and then.
    if (++n % 2000 === 0) await new Promise((r) => setImmediate(r));
  }
  vnow = Math.max(vnow, t);
  await new Promise((r) => setImmediate(r));
}

// ---------------------------------------------------------------------------------------------
// The fleet and the gateway

const root = new URL("../../dist/src/", import.meta.url);
const { parseConfig } = await import(new URL("config/index.js", root));
const { UpstreamPool } = await import(new URL("upstream/pool.js", root));
const { Ticket } = await import(new URL("admission/admission.js", root));
const { affinityKey } = await import(new URL("upstream/affinity.js", root));
const { promptBlocks } = await import(new URL("upstream/prefix-model.js", root));
const { BatchScheduler } = await import(new URL("sim/batch-scheduler.js", root));
const { PrefixCache, cachedPromptTokens } = await import(new URL("sim/prefix-cache.js", root));
const { countPromptTokens } = await import(new URL("tokens/tokenizer.js", root));
const W = await import("./workload.mjs");
const { poissonTimes, prng } = await import("../surge/load.mjs");

const FLEET = [
  { name: "sim-a", slots: 8, weight: 2 },
  { name: "sim-b", slots: 8, weight: 2 },
  { name: "sim-c", slots: 4, weight: 1 },
];
const CACHE_BLOCKS = W.CACHE_PROMPTS * W.blocksPerPrompt();
/** The simulator's defaults for decode (run.mjs sets only the prefill rate). */
const TIMING = { prefillMsPerToken: W.PREFILL_MS_PER_TOKEN, decodeStepMs: 15, decodeMsPerSeq: 0.3 };
const WARMUP_S = 20;
const COUNTED_S = 60;
const SLO_MS = 2000;
const MODELLED = {
  by: "prefix",
  cacheTokens: (CACHE_BLOCKS * W.BLOCK_CHARS) / W.CHARS_PER_TOKEN,
  prefillTokensPerSecond: W.PREFILL_TOKENS_PER_SECOND,
};

function fleet() {
  return FLEET.map((f) => ({
    ...f,
    cache: new PrefixCache(CACHE_BLOCKS, W.BLOCK_CHARS),
    hits: 0,
    queries: 0,
    sched: new BatchScheduler({
      slots: f.slots,
      maxQueue: 64,
      kvCacheTokens: 32768,
      timing: TIMING,
      scale: () => 1,
      schedule: (fn, ms) => {
        const e = setTimeout(fn, ms);
        return () => clearTimeout(e);
      },
    }),
  }));
}

/** One request on a server: the simulator's prefix-cache lookup at prefill, as its HTTP handler does. */
function submit(server, request, counted, onFirst, onFinish) {
  server.sched.submit({
    promptTokens: request.promptTokens,
    outputTokens: W.MAX_TOKENS,
    cachedPromptTokens: () => {
      const hits = cachedPromptTokens(request.promptTokens, server.cache.process(request.promptKey));
      if (counted) {
        server.hits += hits;
        server.queries += request.promptTokens;
      }
      return hits;
    },
    onToken: (i) => {
      if (i === 0) onFirst();
    },
    onFinish,
  });
}

function workload(seed, rate) {
  const times = poissonTimes(rate, WARMUP_S + COUNTED_S, seed);
  const requests = W.bodies(times.length, seed).map(({ app, body }) => {
    const parsed = JSON.parse(body);
    return {
      app,
      body: parsed,
      promptKey: JSON.stringify(parsed.messages),
      promptTokens: countPromptTokens(parsed),
    };
  });
  return { times, requests };
}

function summary(servers, records) {
  const ttfts = records.filter((r) => r.ttft !== null).map((r) => r.ttft);
  const hits = servers.reduce((a, s) => a + s.hits, 0);
  const queries = servers.reduce((a, s) => a + s.queries, 0);
  return {
    hitRate: hits / queries,
    meanTtft: ttfts.reduce((a, b) => a + b, 0) / Math.max(1, ttfts.length),
    withinSlo: ttfts.filter((t) => t <= SLO_MS).length / records.length,
  };
}

/** One target: affinity undefined is least_request. */
async function run(affinity, seed, rate) {
  heap.length = 0;
  const t0 = vnow;
  const servers = fleet();
  const backends = servers
    .map(
      (s, i) =>
        `{ name: ${s.name}, url: "http://127.0.0.1:${40001 + i}", weight: ${s.weight}, maxConcurrency: ${s.slots} }`,
    )
    .join(", ");
  const config = parseConfig(
    `pools: { main: { models: [m], healthCheck: { enabled: false }, backends: [${backends}]${
      affinity ? `, affinity: ${JSON.stringify(affinity)}` : ""
    } } }`,
    "model",
  ).pools.main;
  const pool = new UpstreamPool("main", config, { now: () => vnow, random: prng(seed + 5) });
  const byName = new Map(servers.map((s) => [s.name, s]));
  const { times, requests } = workload(seed, rate);
  const records = [];
  times.forEach((at, i) => {
    setTimeout(() => {
      const request = requests[i];
      const counted = at >= WARMUP_S * 1000;
      const record = { ttft: null };
      if (counted) records.push(record);
      const hash = config.affinity.by === "off" ? undefined : affinityKey(request.body, config.affinity);
      const key =
        hash === undefined
          ? undefined
          : { hash, blocks: promptBlocks(request.body, config.affinity.blockChars, pool.modelBlocks) };
      const start = (b) => {
        const takenAt = pool.admission.lastTake;
        submit(
          byName.get(b.name),
          request,
          counted,
          () => {
            record.ttft = vnow - (t0 + at);
          },
          () => pool.release(b, takenAt),
        );
      };
      let got;
      try {
        got = pool.acquire({
          band: 0,
          tenant: counted ? `app${request.app}` : "warmup",
          weight: 1,
          deadline: vnow + config.admission.bands.interactive.maxWait,
          retry: false,
          patient: false,
          affinity: key,
        });
      } catch {
        return;
      }
      if (got instanceof Ticket) {
        got.onGrant = start;
        got.promise.catch(() => undefined);
      } else start(got);
    }, at);
  });
  await runUntil(t0 + (WARMUP_S + COUNTED_S + 30) * 1000);
  for (const s of servers) s.sched.close();
  return summary(servers, records);
}

/**
 * No gateway: each application always on the same server, balanced by hand (sim-a the most
 * popular and four rare ones, sim-b and sim-c five each, the rarest shared): the ceiling a
 * partition that never moves or copies a prompt reaches here.
 */
const ASSIGNMENT = [0, 1, 1, 1, 2, 0, 1, 2, 2, 0, 2, 0, 1, 2, 0, 2];
async function oracle(seed, rate) {
  heap.length = 0;
  const t0 = vnow;
  const servers = fleet();
  const { times, requests } = workload(seed, rate);
  const records = [];
  times.forEach((at, i) => {
    setTimeout(() => {
      const counted = at >= WARMUP_S * 1000;
      const record = { ttft: null };
      if (counted) records.push(record);
      submit(
        servers[ASSIGNMENT[requests[i].app]],
        requests[i],
        counted,
        () => {
          record.ttft = vnow - (t0 + at);
        },
        () => {},
      );
    }, at);
  });
  await runUntil(t0 + (WARMUP_S + COUNTED_S + 30) * 1000);
  for (const s of servers) s.sched.close();
  return summary(servers, records);
}

// ---------------------------------------------------------------------------------------------

function seedList(spec) {
  const m = /^(\d+)-(\d+)$/.exec(spec);
  if (!m) return spec.split(",").map(Number);
  return Array.from({ length: Number(m[2]) - Number(m[1]) + 1 }, (_, i) => Number(m[1]) + i);
}

const seeds = seedList(args.seeds);
const rate = Number(args.rate);
const targets = (args.affinity ?? [JSON.stringify(MODELLED)]).map((a) => JSON.parse(a));
const baseline = [];
for (const seed of seeds) baseline.push(await run(undefined, seed, rate));
const line = (name, rs) => {
  const mean = (f) => rs.reduce((a, r, i) => a + f(r, i), 0) / rs.length;
  const range = (f) => `${Math.min(...rs.map(f)).toFixed(2)}-${Math.max(...rs.map(f)).toFixed(2)}`;
  const ratio = (r, i) => r.meanTtft / baseline[i].meanTtft;
  console.log(
    `${name}\n  hit rate ${(100 * mean((r) => r.hitRate)).toFixed(1)}% (${range((r) => 100 * r.hitRate)}), ` +
      `mean first token ${mean((r) => r.meanTtft).toFixed(0)} ms, ${mean(ratio).toFixed(2)}x least_request's ` +
      `(${range(ratio)}), within the SLO ${(100 * mean((r) => r.withinSlo)).toFixed(1)}%`,
  );
};
console.log(`${seeds.length} seeds at ${rate} requests/s, ${WARMUP_S} s warm-up, ${COUNTED_S} s counted`);
line("least_request", baseline);
for (const affinity of targets) {
  const rs = [];
  for (const seed of seeds) rs.push(await run(affinity, seed, rate));
  line(`affinity ${JSON.stringify(affinity)}`, rs);
}
if (args.oracle) {
  const rs = [];
  for (const seed of seeds) rs.push(await oracle(seed, rate));
  line("fixed assignment, no gateway", rs);
}
