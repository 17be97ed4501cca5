#!/usr/bin/env node
/**
 * The overhead benchmark: what floodgate adds over reaching a backend directly, judged against
 * the floors measured in the same run. One run, one backend, the same load for every target:
 *   direct         the backend itself
 *   nginx          nginx (one worker) in front of it, when /usr/sbin/nginx or nginx is installed
 *   node-floor     floor-proxy.mjs: node:http + undici and nothing else, the floor for a Node proxy
 *   fastify-floor  floor-proxy.mjs --server fastify: the same behind a one-route Fastify 5 app,
 *                  the floor for a Fastify proxy and the yardstick of the targets (ratios to it)
 * and floodgate, every variant with the default logging (level info, access log on, stdout to
 * /dev/null) and its admin listener (metrics) on loopback, as operators run it:
 *   floodgate                the default config
 *   floodgate-nolog          the same with log level warn and no access log (informational:
 *                            splits the access log's cost)
 *   floodgate+memory-limits  an API key, a tenant request limit and a per-IP limit, both far
 *                            above the load (every request checked, none refused), memory store
 *   floodgate+redis-limits   the same with `store: redis` on a redis-server this script starts
 *   floodgate+redis-slots    no limits; `store: redis` (a second redis-server) and the backend's
 *                            maxConcurrency at half the connections: admission with slots shared
 *                            between replicas, whose Redis calls are per sync, not per request
 *   floodgate+cache-hit      the pool's response cache on, and `"temperature": 0` in the body:
 *                            after the first request every answer is a cache HIT
 *   floodgate+affinity       the pool's prefix affinity on (informational)
 * With --baseline DIR (another floodgate checkout, built: DIR/dist/src/main.js), the same run
 * also starts the --baseline-targets (by default the judged ones but redis-slots) from DIR, as
 * NAME@base: same configs, flags and core, each taking its turn right after its counterpart.
 * This machine's speed drifts between runs, so a build is only compared with another measured
 * in the same rounds (the report's "Before and after").
 * Proxies run on core 0; the backend, redis-server and the load generators (wrk, loadgen.mjs)
 * on core 1.
 *
 * Measurements: saturation throughput (wrk), open-loop latency at a fixed rate (loadgen.mjs),
 * time to the first SSE event at a fixed rate (loadgen.mjs --stream), and CPU profiles under
 * saturation of fastify-floor and of each judged floodgate variant. Writes
 * bench/overhead/REPORT.md (or --report FILE) and results/*.json.
 *
 * Each measurement runs in rounds (3 by default), the targets taking turns within a round, so
 * that a slow spell of this shared machine hits every target alike; the report takes each
 * target's ratio to fastify-floor within each round and judges the median of those ratios.
 *
 * usage: node bench/overhead/run.mjs [--quick] [--rounds N] [--backend trivial|sim] [--skip-nginx]
 *                                    [--skip-variants] [--skip-profile] [--report FILE]
 *                                    [--patience SECONDS] [--baseline DIR]
 *                                    [--baseline-targets NAME,NAME...]
 * (`npm run bench:overhead` builds first and runs this.)
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import {
  findBinary,
  freePort,
  PINNING,
  running,
  runToEnd,
  setUp,
  sleep,
  spawnedPids,
  startNginx,
  startServer,
  stop,
  stopAll,
  tail,
  waitReady,
} from "../lib/processes.mjs";
import { INSIDE_SCRIPTS, redisArgs, commandStats as redisCommandStats, waitRedis } from "../surge/redis.mjs";
import { summarizeProfile } from "./profile.mjs";
import { renderReport } from "./report.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const MAIN = join(ROOT, "dist/src/main.js");
/**
 * V8 flags every Node target runs with, as floodgate's `npm start` and Dockerfile do: a 64 MB
 * young generation, so that short-lived per-request objects die before a
 * scavenge copies them. The floors get the same, so the comparison stays fair.
 */
const NODE_FLAGS = ["--max-semi-space-size=64"];
const MODEL = "bench-model";

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    /** Rounds of every measurement (default 3; 1 with --quick). */
    rounds: { type: "string" },
    backend: { type: "string", default: "trivial" },
    "skip-nginx": { type: "boolean", default: false },
    /** Leave out floodgate's variants (limits, slots, cache, affinity): floodgate and floodgate-nolog only. */
    "skip-variants": { type: "boolean", default: false },
    "skip-profile": { type: "boolean", default: false },
    report: { type: "string", default: join(HERE, "REPORT.md") },
    /** Seconds the whole run may spend waiting for other processes to calm down and redoing. */
    patience: { type: "string", default: "40" },
    /** Another floodgate checkout, built, to measure beside this one (the @base targets). */
    baseline: { type: "string" },
    /**
     * The floodgate targets started from --baseline too, comma-separated; by default those of
     * DEFAULT_BASELINE_TARGETS in the run.
     */
    "baseline-targets": { type: "string" },
  },
});

const PLAN = args.quick
  ? {
      satWarmup: 1,
      satSeconds: 3,
      latRate: 500,
      latWarmup: 1,
      latSeconds: 3,
      sseRate: 200,
      sseWarmup: 1,
      sseSeconds: 2,
      profSeconds: 3,
    }
  : {
      satWarmup: 2,
      satSeconds: 10,
      latRate: 500,
      latWarmup: 1,
      latSeconds: 10,
      sseRate: 200,
      sseWarmup: 1,
      sseSeconds: 5,
      profSeconds: 6,
    };
PLAN.rounds = Math.max(1, Number(args.rounds ?? (args.quick ? 1 : 3)));
const CONNECTIONS = 64;
/** Other processes may use this fraction of one core during a measurement before it is redone. */
const QUIET = 0.05;
/** The same, measured as the cores' process time not accounted for by our processes. */
const RESIDUAL_LIMIT = 0.1;
/** Hypervisor steal time on either core beyond which a measurement is redone. */
const STEAL_LIMIT = 0.05;
const MAX_ATTEMPTS = 5;
const QUIET_WAIT_SECONDS = 30;

// ---------------------------------------------------------------------------------------------
// Processes (bench/lib/processes.mjs: tracked and ended on exit, error, SIGINT and SIGTERM) and
// the machine.

/** Set on SIGINT/SIGTERM, whose handlers (processes.mjs's) stop everything and exit. */
let interrupted = false;
/** The temp dir for the servers' logs, configs and profiles (setUp makes it, in main). */
let tmp;
/** Our processes: this one and every child; CPU used by any other process is interference. */
const ours = (pid) => pid === process.pid || spawnedPids.has(pid);

const NPROC = os.availableParallelism();
const PIN = PINNING;
const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

/** A server on `core`, started in the checkout (its stdout to `stdout` when given). */
function server(name, core, command, commandArgs, { stdout } = {}) {
  return startServer(name, command, commandArgs, ROOT, { core, stdout });
}

/** A command run to its end on `core` (wrk, loadgen), killed after timeoutSeconds. */
function runOn(core, command, commandArgs, timeoutSeconds, env = process.env) {
  return runToEnd(command, commandArgs, { cwd: ROOT, env, core, timeoutSeconds });
}

/** Per-CPU jiffies from /proc/stat. */
function cpuTimes() {
  const out = {};
  for (const line of readFileSync("/proc/stat", "utf8").split("\n")) {
    const m = /^cpu(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [user, nice, system, idle, iowait, irq, softirq, steal] = m[2].split(/\s+/).map(Number);
    const busy = user + nice + system + irq + softirq;
    out[m[1]] = { busy, steal, task: user + nice + system, total: busy + idle + iowait + steal };
  }
  return out;
}

/** This process's CPU time plus that of its children that ended (wrk, loadgen), in seconds. */
function selfAndReapedSeconds() {
  const stat = readFileSync("/proc/self/stat", "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
}

/** A process's name and user + system CPU time in seconds, or undefined when it is gone. */
function procStat(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const close = stat.lastIndexOf(")");
    const fields = stat.slice(close + 2).split(" ");
    return {
      comm: stat.slice(stat.indexOf("(") + 1, close),
      seconds: (Number(fields[11]) + Number(fields[12])) / CLK_TCK,
    };
  } catch {
    return undefined;
  }
}

/**
 * A process's CPU time in seconds, all threads, from the scheduler's nanosecond run times
 * (/proc/PID/task/TID/schedstat): tick-sampled utime/stime are too coarse for 10 s windows.
 */
function procSeconds(pid) {
  try {
    let ns = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
      } catch {
        // the thread ended
      }
    }
    return ns / 1e9;
  } catch {
    return procStat(pid)?.seconds ?? Number.NaN;
  }
}

/**
 * CPU time used by processes that are not ours, sampled every 250 ms: other work on this
 * machine (a test run, a build) competes for the two cores and makes a measurement worthless.
 * A process that starts and ends between two samples is missed, so this is a lower bound.
 */
function watchOthers() {
  const first = new Map();
  const last = new Map();
  const scan = (initial) => {
    for (const entry of readdirSync("/proc")) {
      if (!/^\d+$/.test(entry)) continue;
      const pid = Number(entry);
      if (ours(pid)) continue;
      const stat = procStat(pid);
      if (!stat) continue;
      if (!first.has(pid)) first.set(pid, initial ? stat.seconds : 0);
      last.set(pid, stat);
    }
  };
  scan(true);
  const timer = setInterval(() => scan(false), 250);
  return () => {
    clearInterval(timer);
    scan(false);
    const byName = new Map();
    let seconds = 0;
    for (const [pid, stat] of last) {
      if (ours(pid)) continue;
      const used = stat.seconds - first.get(pid);
      if (used <= 0) continue;
      seconds += used;
      byName.set(stat.comm, (byName.get(stat.comm) ?? 0) + used);
    }
    const top = [...byName]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 3)
      .map(([name, s]) => `${name} ${round3(s)}s`);
    return { seconds, top };
  };
}

/** Waits (up to maxSeconds) until nothing else competes for the CPU; returns the last check. */
async function waitQuiet(maxSeconds, log) {
  const deadline = Date.now() + maxSeconds * 1000;
  let { cpu } = await withCpu([], () => sleep(1000));
  let why = disturbance(cpu);
  if (!why) return cpu;
  log(`not quiet (${why}); waiting up to ${Math.round(maxSeconds)}s`);
  while (why && Date.now() < deadline) {
    ({ cpu } = await withCpu([], () => sleep(2000)));
    why = disturbance(cpu);
  }
  if (why) log(`still not quiet (${why}): measuring anyway (see the report)`);
  return cpu;
}

/** Measures core and process CPU use around `work`. */
async function withCpu(procs, work) {
  const servers = running().filter((p) => p.logPath && !p.exited);
  const c0 = cpuTimes();
  const p0 = procs.map((p) => procSeconds(p.child.pid));
  const s0 = servers.map((p) => procSeconds(p.child.pid));
  const self0 = selfAndReapedSeconds();
  const stopWatch = watchOthers();
  const started = performance.now();
  const result = await work();
  const wall = (performance.now() - started) / 1000;
  const others = stopWatch();
  const c1 = cpuTimes();
  // What the cores spent in processes minus what our processes used: catches the short-lived
  // processes that the /proc scan misses (tick-sampled, so only trusted beyond a few %).
  let residual = 0;
  for (const id of Object.keys(c1)) residual += (c1[id].task - c0[id].task) / CLK_TCK;
  residual -= selfAndReapedSeconds() - self0;
  servers.forEach((p, i) => {
    residual -= procSeconds(p.child.pid) - s0[i];
  });
  const cores = {};
  for (const id of Object.keys(c1)) {
    const total = c1[id].total - c0[id].total;
    cores[`cpu${id}`] = {
      busyPct: pct((c1[id].busy - c0[id].busy) / total),
      stealPct: pct((c1[id].steal - c0[id].steal) / total),
    };
  }
  const processes = {};
  procs.forEach((p, i) => {
    const seconds = procSeconds(p.child.pid) - p0[i];
    processes[p.name] = { cpuSeconds: round3(seconds), cpuPct: pct(seconds / wall) };
  });
  return {
    result,
    cpu: {
      wallSeconds: round3(wall),
      cores,
      processes,
      othersPct: pct(others.seconds / wall),
      othersTop: others.top,
      othersResidualPct: pct(Math.max(0, residual) / wall),
    },
  };
}

/** Why a measurement cannot be trusted, or undefined. */
function disturbance(cpu) {
  const reasons = [];
  if (cpu.othersPct > QUIET * 100) {
    reasons.push(`other processes used ${cpu.othersPct}% of a core (${cpu.othersTop.join(", ")})`);
  }
  if (cpu.othersResidualPct > RESIDUAL_LIMIT * 100) {
    reasons.push(`${cpu.othersResidualPct}% of a core went to processes not ours (per /proc/stat)`);
  }
  const steal = Math.max(...Object.values(cpu.cores).map((c) => c.stealPct));
  if (steal > STEAL_LIMIT * 100) reasons.push(`the hypervisor stole up to ${steal}% of a core`);
  return reasons.length > 0 ? reasons.join("; ") : undefined;
}

/**
 * Runs one measurement; when other processes disturbed it (more than QUIET of a core), waits for
 * quiet and measures again while the run's patience lasts (--patience seconds in all), keeping
 * the least disturbed attempt.
 */
async function measure(procs, work, log) {
  let best;
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    if (attempt > 1) {
      const left = patienceLeft();
      if (left <= 0) {
        log("  no patience left (--patience): keeping the disturbed measurement");
        break;
      }
      const spent = Date.now();
      await waitQuiet(Math.min(left, QUIET_WAIT_SECONDS), log);
      patienceUsedMs += Date.now() - spent;
    }
    const spent = Date.now();
    const m = await withCpu(procs, work);
    if (attempt > 1) patienceUsedMs += Date.now() - spent;
    m.cpu.attempts = attempt;
    m.cpu.disturbed = disturbance(m.cpu);
    if (!best || score(m.cpu) < score(best.cpu)) best = m;
    if (!m.cpu.disturbed) break;
    log(`  disturbed: ${m.cpu.disturbed}`);
  }
  return best;
}

/** How disturbed a measurement was, to keep the least disturbed attempt. */
function score(cpu) {
  const steal = Math.max(...Object.values(cpu.cores).map((c) => c.stealPct));
  return Math.max(cpu.othersPct, cpu.othersResidualPct) + steal;
}

let patienceUsedMs = 0;
function patienceLeft() {
  return Number(args.patience) - patienceUsedMs / 1000;
}

/**
 * One measurement's rounds as one result: the median round (by req/s, or by p50 latency), with
 * every percentile replaced by its median over the rounds, and every round kept in `rounds`, in
 * round order: the report takes ratios to fastify-floor within each round, not between medians.
 */
function medianRound(list, key) {
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  const headline = (r) => (key === "saturation" ? r.rps : r.latencyMs?.p50);
  const sorted = [...list].sort((a, b) => headline(a) - headline(b));
  const mid = sorted[Math.floor((sorted.length - 1) / 2)];
  const out = {
    ...mid,
    rounds: list.map((r) => ({
      ...(key === "saturation" ? { rps: r.rps, requests: r.requests } : { ...r.latencyMs }),
      // The requests a fixed-rate round sent, its warm-up included (its counters' window).
      ...(key === "saturation" ? {} : { sent: r.sent, rate: r.rate }),
      cpuSeconds: Object.fromEntries(Object.entries(r.cpu.processes).map(([n, c]) => [n, c.cpuSeconds])),
      ...(r.counters ? { counters: r.counters } : {}),
      ...(r.cpu.disturbed ? { disturbed: true } : {}),
    })),
  };
  for (const field of ["latencyMs", "serviceMs"]) {
    if (!list.every((r) => r[field])) continue;
    out[field] = Object.fromEntries(
      Object.keys(mid[field]).map((q) => [q, median(list.map((r) => r[field][q]))]),
    );
  }
  return out;
}

const pct = (x) => Math.round(x * 1000) / 10;
const round3 = (x) => Math.round(x * 1000) / 1000;

// ---------------------------------------------------------------------------------------------
// The targets.

/**
 * floodgate's config: the default logging (level info, access log on) and the admin listener
 * (/metrics, read around each measurement) on loopback, as operators run it. `variant` changes
 * one thing: `quiet` (level warn, no access log), `limits` (an API key with a tenant request
 * limit and a per-IP limit far above the load; memory store, or Redis with `redisPort`), `slots`
 * (Redis store, the backend's maxConcurrency shared between replicas), `cache` (the pool's
 * response cache) or `affinity` (the pool's prefix affinity).
 */
function gatewayYaml(port, adminPort, backendPort, variant = {}) {
  const lines = [
    `listen: { host: 127.0.0.1, port: ${port} }`,
    `admin: { enabled: true, host: 127.0.0.1, port: ${adminPort} }`,
    "server: { shutdownGrace: 2s }",
    variant.quiet ? "log: { level: warn, accessLog: false }" : "log: { level: info, accessLog: true }",
  ];
  if (variant.slots) {
    // Slots shared (store.slots.shared, on by default with Redis): one replica trading claims.
    lines.push(`store: { type: redis, url: "redis://127.0.0.1:${variant.slots.redisPort}" }`);
  }
  if (variant.limits) {
    lines.push(
      variant.redisPort
        ? `store: { type: redis, url: "redis://127.0.0.1:${variant.redisPort}" }`
        : "store: { type: memory }",
      `auth: { keys: [{ key: "${BENCH_KEY}", tenant: ${BENCH_TENANT} }] }`,
      "tenants:",
      `  ${BENCH_TENANT}:`,
      `    limits: { requests: { rate: ${NEVER_LIMITED}, per: 1s } }`,
      "rateLimits:",
      `  - { name: per-ip, by: ip, rate: ${NEVER_LIMITED}, per: 1s }`,
    );
  }
  lines.push(
    "pools:",
    "  bench:",
    `    models: [${MODEL}]`,
    `    backends: [{ url: "http://127.0.0.1:${backendPort}", maxConnections: 256${variant.slots ? `, maxConcurrency: ${variant.slots.maxConcurrency}` : ""} }]`,
  );
  if (variant.cache) lines.push("    cache: { enabled: true }");
  if (variant.affinity) lines.push("    affinity: { by: prefix }");
  lines.push("");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// The floodgate variants: request limits (memory and Redis store), shared slots, cache hits.

const BENCH_KEY = "bench-overhead-key-0123456789";
const BENCH_TENANT = "bench";
/** Requests per second for both limits: far above anything this machine can send. */
const NEVER_LIMITED = 1_000_000;
/** What a target's request differs in from the common one: an Authorization header, body fields. */
const LIMITS_REQUEST = { authorization: `Bearer ${BENCH_KEY}` };
const CACHE_REQUEST = { extra: { temperature: 0 } };
const BASE_BODY = { model: MODEL, messages: [{ role: "user", content: "hello" }], max_tokens: 16 };
/**
 * floodgate+redis-slots: the backend's maxConcurrency, half of wrk's connections, so that at
 * saturation requests wait for a slot (and bring syncs forward) while at the fixed rate few do.
 */
const SLOTS_MAX_CONCURRENCY = CONNECTIONS / 2;
/** Starts redis-server on core 1 (beside the backend), no persistence, loopback only. */
async function startRedis(port, name = "redis") {
  const dir = join(tmp, name);
  mkdirSync(dir);
  const proc = server(name, 1, REDIS, redisArgs(port, dir));
  await waitRedis(proc, port, tail);
  return proc;
}

/**
 * The scripts Redis ran (EVALSHA, and EVAL for the first call on a connection), failed calls
 * among them, the other commands but INFO (mostly those the scripts run), and the round trips
 * clients made: the scripts plus the commands a client sent itself (not run by a script).
 */
async function redisCalls(port) {
  const out = { evalsha: 0, eval: 0, failedScripts: 0, otherCommands: 0, roundTrips: 0 };
  for (const [name, { calls, failed }] of Object.entries(await redisCommandStats(port))) {
    if (name === "evalsha" || name === "eval") {
      out[name] += calls;
      out.failedScripts += failed;
      out.roundTrips += calls;
    } else if (name !== "info") {
      out.otherCommands += calls;
      if (!INSIDE_SCRIPTS.has(name)) out.roundTrips += calls;
    }
  }
  return out;
}

/** The trivial backend's POST counters (GET /stats): requests that reached it. */
async function backendPosts(backendUrl) {
  const res = await fetch(`${backendUrl}/stats`, { signal: AbortSignal.timeout(2000) });
  if (res.status !== 200) throw new Error(`backend /stats answered ${res.status}`);
  return res.json();
}

/** The counters in floodgate's /metrics that tell whether limits and cache did their work. */
function decisionCounts(metrics) {
  const sum = (name, filter = () => true) =>
    metrics.filter((m) => m.name === name && filter(m.labels)).reduce((a, m) => a + m.value, 0);
  return {
    allowed: sum("floodgate_ratelimit_decisions_total", (l) => l.includes('decision="allowed"')),
    limited: sum("floodgate_ratelimit_decisions_total", (l) => l.includes('decision="limited"')),
    storeErrors: sum("floodgate_store_errors_total"),
    // Round trips to Redis as floodgate counts them: the request path's takes, and the jobs
    // queue's, which run on the runner's timer (and the /metrics scrape's depth), not per request.
    takeCalls: sum("floodgate_store_calls_total", (l) => l.includes('operation="take"')),
    jobsCalls: sum("floodgate_store_calls_total", (l) => l.includes('operation="jobs ')),
    withoutStore: sum("floodgate_ratelimit_without_store_total"),
    cacheHits: sum("floodgate_cache_requests_total", (l) => l.includes('result="hit"')),
    cacheOther: sum("floodgate_cache_requests_total", (l) => !l.includes('result="hit"')),
    upstreamAttempts: sum("floodgate_upstream_attempts_total"),
    admittedNow: sum("floodgate_admission_decisions_total", (l) => l.includes('outcome="immediate"')),
    admittedAfterWait: sum("floodgate_admission_decisions_total", (l) => l.includes('outcome="after_wait"')),
    admissionRefused: sum(
      "floodgate_admission_decisions_total",
      (l) => !l.includes('outcome="immediate"') && !l.includes('outcome="after_wait"'),
    ),
    affinityDecisions: sum("floodgate_affinity_decisions_total"),
  };
}

function diffCounts(before, after) {
  return Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - (before[k] ?? 0)]));
}

/** Wraps a measurement so that the target's counters (Redis, backend) are read around it. */
function counted(t, work) {
  if (!t.counters) return work;
  return async () => {
    const before = await t.counters();
    const result = await work();
    const after = await t.counters();
    return { ...result, counters: diffCounts(before, after) };
  };
}

/** The variant's own counters from its /metrics: requests, limit decisions, store errors, cache. */
async function variantMetrics(adminUrl) {
  const res = await fetch(`${adminUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const wanted =
    /^(floodgate_(requests_total|ratelimit_decisions_total|store_errors_total|store_calls_total|ratelimit_without_store_total|cache_requests_total|upstream_attempts_total|admission_decisions_total|affinity_decisions_total|fleet_replicas|fleet_store_down|backend_slot_share))(\{[^}]*\})? (\S+)$/;
  const out = [];
  for (const line of text.split("\n")) {
    const m = wanted.exec(line);
    if (m) out.push({ name: m[1], labels: m[3] ?? "", value: Number(m[4]) });
  }
  return out;
}

/**
 * One non-streamed and one streamed request with the target's request. Returns a warning or
 * undefined, and what the answers showed (`observed`: the cache and rate-limit headers; for a
 * target with an API key, that a request without it is refused; for the cache, a third request).
 */
async function checkTarget(name, url, request = {}) {
  const body = { ...BASE_BODY, ...request.extra };
  const headers = { "content-type": "application/json" };
  if (request.authorization) headers.authorization = request.authorization;
  const post = (b, h = headers) =>
    fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: h,
      body: JSON.stringify(b),
      signal: AbortSignal.timeout(5000),
    });
  const seen = (res) => ({
    status: res.status,
    cache: res.headers.get("x-floodgate-cache"),
    rateLimit: res.headers.get("ratelimit-limit"),
    rateLimitRemaining: res.headers.get("ratelimit-remaining"),
  });
  const observed = {};
  const plain = await post(body);
  observed.plain = seen(plain);
  const json = await plain.json().catch(() => null);
  if (plain.status !== 200 || json?.object !== "chat.completion") {
    throw new Error(`${name}: non-streamed check failed: ${plain.status} ${JSON.stringify(json)}`);
  }
  const streamed = await post({ ...body, stream: true });
  observed.streamed = seen(streamed);
  if (streamed.status !== 200) throw new Error(`${name}: streamed check failed: ${streamed.status}`);
  // Read to `data: [DONE]`, then give the stream 2 s to end: a proxy that never ends it is
  // reported, and measured anyway (loadgen.mjs counts such streams as unterminated).
  const reader = streamed.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  while (!text.includes("data: [DONE]")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  if (!text.startsWith("data:") || !text.includes("data: [DONE]")) {
    throw new Error(`${name}: streamed check failed: ${text.slice(0, 200)}`);
  }
  const ended = await Promise.race([
    (async () => {
      while (!(await reader.read()).done) {
        // drain
      }
      return true;
    })(),
    sleep(2000).then(() => false),
  ]);
  let warning;
  if (!ended) {
    await reader.cancel().catch(() => {});
    warning = `${name}: a streamed answer was not ended within 2 s of its \`data: [DONE]\` event (the client waits until its own timeout).`;
  }
  if (request.extra) {
    const again = await post(body);
    observed.again = seen(again);
    await again.arrayBuffer();
  }
  if (request.authorization) {
    const { authorization: _, ...withoutKey } = headers;
    const refused = await post(body, withoutKey);
    observed.withoutKey = seen(refused);
    await refused.arrayBuffer();
  }
  return { warning, observed };
}

/** What a variant's check requests must show: limits applied but not refusing, cache HITs. */
function variantCheckWarnings(t, observed) {
  const out = [];
  if (t.variant?.limits) {
    if (observed.plain.status !== 200 || !observed.plain.rateLimit) {
      out.push(
        `${t.name}: the check request got ${observed.plain.status} without RateLimit-Limit: the limits are not applied.`,
      );
    }
    if (observed.withoutKey?.status !== 401) {
      out.push(`${t.name}: a request without the API key got ${observed.withoutKey?.status}, not 401.`);
    }
  }
  if (t.variant?.redisPort) {
    const scripts = (observed.counters?.evalsha ?? 0) + (observed.counters?.eval ?? 0);
    if (scripts < 4) out.push(`${t.name}: Redis ran ${scripts} bucket scripts for two checked requests.`);
  }
  if (t.variant?.affinity && observed.counters && !(observed.counters.affinityDecisions > 0)) {
    out.push(
      `${t.name}: floodgate made no affinity decision for the check requests: affinity is not applied.`,
    );
  }
  if (t.variant?.cache) {
    const want = { plain: "MISS", streamed: "HIT", again: "HIT" };
    for (const [k, v] of Object.entries(want)) {
      if (observed[k]?.cache !== v)
        out.push(`${t.name}: check request (${k}) had x-floodgate-cache ${observed[k]?.cache}, not ${v}.`);
    }
    if (observed.counters && observed.counters.posts !== 1) {
      out.push(
        `${t.name}: the backend got ${observed.counters.posts} requests for the 3 check requests, not 1.`,
      );
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Measurements.

const WRK_SCRIPT = join(HERE, "post.lua");

/** wrk against url; `request` (a target's Authorization header and body fields) via post.lua's env. */
async function wrk(url, seconds, request = {}) {
  const env = { ...process.env };
  delete env.BENCH_BODY;
  delete env.BENCH_AUTHORIZATION;
  if (request.extra) env.BENCH_BODY = JSON.stringify({ ...BASE_BODY, ...request.extra });
  if (request.authorization) env.BENCH_AUTHORIZATION = request.authorization;
  const { stdout } = await runOn(
    1,
    WRK,
    [
      "-t1",
      `-c${CONNECTIONS}`,
      `-d${seconds}s`,
      "--timeout",
      "5s",
      "-s",
      WRK_SCRIPT,
      `${url}/v1/chat/completions`,
    ],
    seconds + 30,
    env,
  );
  const line = stdout.split("\n").find((l) => l.startsWith("BENCH_JSON "));
  if (!line) throw new Error(`wrk printed no summary:\n${stdout}`);
  const summary = JSON.parse(line.slice("BENCH_JSON ".length));
  const errors = Object.values(summary.errors).reduce((a, b) => a + b, 0);
  return { rps: Math.round(summary.requests / (summary.durationUs / 1e6)), errorCount: errors, ...summary };
}

async function loadgen(url, { rate, seconds, warmup, stream }, request = {}) {
  const { stdout } = await runOn(
    1,
    process.execPath,
    [
      join(HERE, "loadgen.mjs"),
      "--url",
      url,
      "--rate",
      String(rate),
      "--duration",
      String(seconds),
      "--warmup",
      String(warmup),
      "--connections",
      String(CONNECTIONS),
      ...(stream ? ["--stream"] : []),
      ...(request.authorization ? ["--header", `authorization: ${request.authorization}`] : []),
      ...(request.extra
        ? ["--extra", JSON.stringify(request.extra), "--count-header", "x-floodgate-cache"]
        : []),
    ],
    seconds + warmup + 60,
  );
  return JSON.parse(stdout.trim().split("\n").at(-1));
}

/** floodgate's error and fatal (or also warn) log lines: how many, and the distinct kinds (message, code). */
function errorLines(path, levels = /"level":(50|60)/) {
  const kinds = new Map();
  let count = 0;
  let text = "";
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return { count, kinds: [] };
  }
  for (const line of text.split("\n")) {
    if (!levels.test(line)) continue;
    count++;
    let kind = line.slice(0, 200);
    try {
      const entry = JSON.parse(line);
      kind = [entry.msg, entry.code, entry.err?.code ?? entry.err?.type].filter(Boolean).join(" / ");
    } catch {
      // not JSON: keep the start of the line
    }
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return { count, kinds: [...kinds].map(([kind, n]) => ({ kind, count: n })) };
}

// ---------------------------------------------------------------------------------------------
// CPU profiles under saturation: fastify-floor and each judged floodgate variant.

/**
 * Starts a target again with `--cpu-prof` on core 0 (the measured targets are stopped by then,
 * so it has the core alone), loads it with wrk (its request) for PLAN.profSeconds after a
 * warm-up, and summarises the profile over the measured window only (no start-up, warm-up or
 * shutdown). `args` is what follows node's flags: floor-proxy.mjs or main.js with their own.
 */
async function profileTarget({ name, args: targetArgs, url, readyPath, request }, log) {
  const profDir = join(tmp, `prof-${name.replace(/[^a-z0-9-]/gi, "_")}`);
  const proc = server(
    `profile-${name}`,
    0,
    process.execPath,
    [...NODE_FLAGS, "--cpu-prof", `--cpu-prof-dir=${profDir}`, ...targetArgs],
    { stdout: "/dev/null" },
  );
  await waitReady(proc, `${url}${readyPath}`);
  await wrk(url, PLAN.satWarmup, request);
  // As measure() does: a disturbed window is measured again (in the same process, whose
  // profile holds every window) while the run's patience lasts; the least disturbed one counts.
  let best;
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const left = patienceLeft();
    if (attempt > 1 && left <= 0) {
      log("  no patience left (--patience): keeping the disturbed profile");
      break;
    }
    const waited = Date.now();
    await waitQuiet(Math.max(1, Math.min(QUIET_WAIT_SECONDS, left)), attempt > 1 ? log : () => {});
    patienceUsedMs += Date.now() - waited;
    const spent = Date.now();
    // V8 stamps samples with the monotonic clock in µs, as process.hrtime does in ns.
    const from = Number(process.hrtime.bigint() / 1000n);
    const m = await withCpu([proc], () => wrk(url, PLAN.profSeconds, request));
    const to = Number(process.hrtime.bigint() / 1000n);
    if (attempt > 1) patienceUsedMs += Date.now() - spent;
    const disturbed = disturbance(m.cpu);
    if (!best || score(m.cpu) < score(best.cpu)) best = { ...m, from, to, disturbed, attempt };
    if (!disturbed) break;
    log(`  disturbed: ${disturbed}`);
  }
  await stop(proc);
  const file = existsSync(profDir) && readdirSync(profDir).find((f) => f.endsWith(".cpuprofile"));
  if (!file) throw new Error(`${name} wrote no .cpuprofile:\n${tail(proc.logPath)}`);
  const profile = JSON.parse(readFileSync(join(profDir, file), "utf8"));
  return {
    rpsUnderProfiler: best.result.rps,
    errors: best.result.errorCount,
    disturbed: best.disturbed ?? null,
    attempts: best.attempt,
    ...summarizeProfile(profile, best.from, best.to, best.result.requests),
  };
}

// ---------------------------------------------------------------------------------------------

/** The newest modification time under dir, in ms. */
function newestMtime(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const mtime = statSync(join(entry.parentPath ?? entry.path, entry.name)).mtimeMs;
    if (mtime > newest) newest = mtime;
  }
  return newest;
}

function gitDescription() {
  const git = (a) => spawnSync("git", a, { cwd: ROOT, encoding: "utf8" }).stdout?.trim() ?? "";
  const head = git(["rev-parse", "--short", "HEAD"]);
  if (!head) return null;
  const dirty = git(["status", "--porcelain", "--", "src"]) !== "";
  return `${head}${dirty ? " + uncommitted changes in src/" : ""}`;
}

const WRK = findBinary(["wrk", "/usr/bin/wrk"]);
const NGINX = args["skip-nginx"] ? undefined : findBinary(["/usr/sbin/nginx", "nginx"]);
const REDIS = args["skip-variants"] ? undefined : findBinary(["redis-server", "/usr/bin/redis-server"]);
const ALL_PHASES = ["saturation", "latency", "ttft"];
/** The targets --baseline starts from the baseline build too, unless --baseline-targets says. */
const DEFAULT_BASELINE_TARGETS = [
  "floodgate",
  "floodgate+memory-limits",
  "floodgate+redis-limits",
  "floodgate+cache-hit",
];
/** What a target started from the --baseline build is called: its counterpart's name + this. */
const BASE_SUFFIX = "@base";
const BASELINE = args.baseline ? baselineBuild(resolve(args.baseline)) : undefined;

/** The --baseline checkout: its entry point and, when it is a git checkout, its commit. */
function baselineBuild(dir) {
  const git = (a) => spawnSync("git", ["-C", dir, ...a], { encoding: "utf8" }).stdout?.trim() ?? "";
  const commit = git(["rev-parse", "HEAD"]) || null;
  const dirty = commit !== null && git(["status", "--porcelain", "--", "src"]) !== "";
  return { dir, main: join(dir, "dist/src/main.js"), commit, dirty };
}

/**
 * floodgate's targets: the default config, and variants that change one thing each. `judged`:
 * the issue's targets are set for it (the report's Targets section); `profile`: profiled under
 * saturation after the rounds. A variant whose `needs` is missing (redis-server) is skipped.
 */
function floodgateTargets({ redisPort, slotsRedisPort }) {
  const all = [
    {
      name: "floodgate",
      label: "floodgate, default config (access log on, metrics on)",
      variant: {},
      request: {},
      phases: ALL_PHASES,
      judged: true,
      profile: true,
    },
    {
      name: "floodgate-nolog",
      label: "floodgate, log level warn, access log off (informational: the log's cost)",
      variant: { quiet: true },
      request: {},
      phases: ALL_PHASES,
    },
    {
      name: "floodgate+memory-limits",
      label: "floodgate, API key + tenant limit + per-IP limit, memory store",
      variant: { limits: true },
      request: LIMITS_REQUEST,
      phases: ["saturation", "latency"],
      judged: true,
      profile: true,
      extra: true,
    },
    {
      name: "floodgate+redis-limits",
      label: "floodgate, API key + tenant limit + per-IP limit, Redis store",
      variant: { limits: true, redisPort },
      request: LIMITS_REQUEST,
      phases: ["saturation", "latency"],
      judged: true,
      profile: true,
      extra: true,
      needs: redisPort,
      redis: "redis",
      own: () => redisCalls(redisPort),
    },
    {
      name: "floodgate+redis-slots",
      label: `floodgate, Redis store, backend maxConcurrency ${SLOTS_MAX_CONCURRENCY} shared through Redis (store.slots)`,
      variant: { slots: { redisPort: slotsRedisPort, maxConcurrency: SLOTS_MAX_CONCURRENCY } },
      request: {},
      phases: ["saturation", "latency"],
      judged: true,
      extra: true,
      needs: slotsRedisPort,
      redis: "redis-slots",
      own: () => redisCalls(slotsRedisPort),
    },
    {
      name: "floodgate+cache-hit",
      label: "floodgate, pool cache on, temperature 0: cache hits",
      variant: { cache: true },
      request: CACHE_REQUEST,
      phases: ALL_PHASES,
      judged: true,
      profile: true,
      extra: true,
    },
    {
      name: "floodgate+affinity",
      label: "floodgate, pool prefix affinity on (informational)",
      variant: { affinity: true },
      request: {},
      phases: ["saturation", "latency"],
      extra: true,
    },
  ];
  return all.filter((t) => !(t.extra && args["skip-variants"]) && (!("needs" in t) || t.needs));
}

async function main() {
  if (!existsSync(MAIN)) throw new Error(`${relative(ROOT, MAIN)} is missing: run \`npm run build\` first`);
  if (!WRK) throw new Error("wrk is not installed (Debian: apt-get install wrk)");
  if (!["trivial", "sim"].includes(args.backend)) throw new Error("--backend must be trivial or sim");
  if (BASELINE && !existsSync(BASELINE.main))
    throw new Error(`--baseline: ${BASELINE.main} is missing: build that checkout first`);
  tmp = setUp("floodgate-bench-");
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.on(signal, () => {
      interrupted = true;
    });
  }
  const startedAt = new Date();
  const log = (msg) =>
    console.log(`[${((Date.now() - startedAt.getTime()) / 1000).toFixed(0).padStart(3)}s] ${msg}`);

  const ports = {
    backend: await freePort(),
    floor: await freePort(),
    fastifyFloor: await freePort(),
  };
  const warnings = [];

  // Backend on core 1, beside the load generators.
  const backend =
    args.backend === "sim"
      ? server("backend", 1, process.execPath, [
          MAIN,
          "sim",
          "--port",
          String(ports.backend),
          "--model",
          MODEL,
          "--time-scale",
          "0",
          "--prefill-ms-per-token",
          "0",
          "--decode-step-ms",
          "0",
          "--decode-ms-per-seq",
          "0",
          "--output-tokens",
          "16..16",
          "--slots",
          "100000",
          "--max-queue",
          "100000",
        ])
      : server("backend", 1, process.execPath, [
          join(HERE, "backend.mjs"),
          "--port",
          String(ports.backend),
          "--model",
          MODEL,
        ]);
  const backendUrl = `http://127.0.0.1:${ports.backend}`;
  await waitReady(backend, `${backendUrl}/health`);

  const targets = [
    { name: "direct", label: "direct (backend)", url: backendUrl, proc: undefined, phases: ALL_PHASES },
  ];

  let nginxVersion;
  let nginxConfig;
  if (NGINX) {
    // bench/lib's nginx: one worker, access log off, upstream keepalive, unbuffered; on core 0.
    const nginx = await startNginx(NGINX, [ports.backend], undefined, "nginx", { core: 0 });
    nginxVersion = nginx.version;
    nginxConfig = nginx.conf;
    targets.push({
      name: "nginx",
      label: nginxVersion,
      url: nginx.url,
      proc: nginx.proc,
      phases: ALL_PHASES,
    });
  }

  /** What the floors run (after node's flags), for the measured targets and for the profile. */
  const floorArgs = (kind, port) => [
    join(HERE, "floor-proxy.mjs"),
    "--server",
    kind,
    "--port",
    String(port),
    "--upstream",
    backendUrl,
  ];
  for (const [name, port, kind, label] of [
    ["node-floor", ports.floor, "node", "minimal Node proxy (node:http + undici)"],
    ["fastify-floor", ports.fastifyFloor, "fastify", "minimal Fastify proxy (Fastify 5 + undici)"],
  ]) {
    const proc = server(name, 0, process.execPath, [...NODE_FLAGS, ...floorArgs(kind, port)]);
    const url = `http://127.0.0.1:${port}`;
    await waitReady(proc, `${url}/health`);
    targets.push({ name, label, url, proc, phases: ALL_PHASES });
  }

  // The Redis servers of the Redis variants, on core 1. floodgate+redis-slots has one of its
  // own: its syncs run all the time, and the limits variant's scripts per request must stay
  // its own. The @base limits target shares its counterpart's (the counters are read around
  // each measurement, and the targets take turns).
  let redis;
  let redisPort;
  let slotsRedis;
  let slotsRedisPort;
  if (!args["skip-variants"]) {
    if (REDIS) {
      redisPort = await freePort();
      redis = await startRedis(redisPort);
      slotsRedisPort = await freePort();
      slotsRedis = await startRedis(slotsRedisPort, "redis-slots");
    } else {
      const w =
        "redis-server is not installed (Debian: redis-server): floodgate+redis-limits and floodgate+redis-slots were skipped.";
      log(`WARNING ${w}`);
      warnings.push(w);
    }
  }
  const redisProcs = { redis, "redis-slots": slotsRedis };
  const redisPorts = { redis: redisPort, "redis-slots": slotsRedisPort };

  // The builds a floodgate target starts from: this checkout's, and the baseline's when given.
  // A baseline target follows its counterpart in the list, so in every round the two run one
  // right after the other.
  const floodgates = floodgateTargets({ redisPort, slotsRedisPort });
  const baselineNames = new Set(
    args["baseline-targets"]?.split(",").map((n) => n.trim()) ??
      DEFAULT_BASELINE_TARGETS.filter((n) => floodgates.some((v) => v.name === n)),
  );
  const builds = [
    { suffix: "", main: MAIN, label: "" },
    ...(BASELINE ? [{ suffix: BASE_SUFFIX, main: BASELINE.main, label: ", baseline build" }] : []),
  ];
  for (const n of baselineNames) {
    if (BASELINE && !floodgates.some((v) => v.name === n))
      throw new Error(`--baseline-targets: no floodgate target ${n} in this run`);
  }
  for (const v of floodgates) {
    for (const build of builds.filter((b) => !b.suffix || baselineNames.has(v.name))) {
      const name = v.name + build.suffix;
      const port = await freePort();
      const adminPort = await freePort();
      const yaml = gatewayYaml(port, adminPort, ports.backend, v.variant);
      const config = join(tmp, `${name}.yaml`);
      writeFileSync(config, yaml);
      // The access log goes to /dev/null; floodgate-nolog's stdout (warn and above) is kept to
      // count its warning and error lines.
      const proc = server(name, 0, process.execPath, [...NODE_FLAGS, build.main, "--config", config], {
        stdout: v.variant.quiet ? undefined : "/dev/null",
      });
      const url = `http://127.0.0.1:${port}`;
      await waitReady(proc, `${url}/healthz`);
      const adminUrl = `http://127.0.0.1:${adminPort}`;
      // Read around each measurement: Redis's or the backend's counters, and floodgate's own.
      const own =
        v.own ?? (v.variant.cache && args.backend === "trivial" ? () => backendPosts(backendUrl) : undefined);
      const counters = async () => ({
        ...(own ? await own() : {}),
        ...decisionCounts(await variantMetrics(adminUrl)),
      });
      targets.push({
        ...v,
        name,
        label: v.label + build.label,
        url,
        proc,
        adminUrl,
        yaml,
        main: build.main,
        counters,
        extraProcs: v.redis ? [redisProcs[v.redis]] : [],
        // Only this build's targets are judged and profiled.
        judged: v.judged && !build.suffix,
        profile: v.profile && !build.suffix,
      });
    }
  }
  if (newestMtime(join(ROOT, "src")) > statSync(MAIN).mtimeMs) {
    const stale =
      "dist/ is older than src/: this run measures the last build, not the source (npm run bench:overhead builds first).";
    log(`WARNING ${stale}`);
    warnings.push(stale);
  }
  if (BASELINE && existsSync(join(BASELINE.dir, "src"))) {
    if (newestMtime(join(BASELINE.dir, "src")) > statSync(BASELINE.main).mtimeMs) {
      const stale = `${BASELINE.dir}/dist is older than its src/: the @base targets run that checkout's last build.`;
      log(`WARNING ${stale}`);
      warnings.push(stale);
    }
  }
  const checks = {};
  for (const t of targets) {
    try {
      const before = await t.counters?.();
      const { warning, observed } = await checkTarget(t.name, t.url, t.request);
      if (before) observed.counters = diffCounts(before, await t.counters());
      checks[t.name] = observed;
      if (warning) {
        log(`WARNING ${warning}`);
        warnings.push(warning);
      }
      for (const w of variantCheckWarnings(t, observed)) {
        log(`WARNING ${w}`);
        warnings.push(w);
      }
    } catch (err) {
      throw new Error(
        `${t.name} (${t.url}) failed its check request: ${err instanceof Error ? err.message : err}`,
      );
    }
  }
  const waitStart = Date.now();
  const othersAtStart = await waitQuiet(Math.min(QUIET_WAIT_SECONDS, patienceLeft()), log);
  patienceUsedMs += Date.now() - waitStart;
  log(
    `targets up: ${targets.map((t) => t.name).join(", ")}; backend ${args.backend}; pinning ${PIN ? "on" : "off"}`,
  );

  const results = {
    meta: {
      date: startedAt.toISOString(),
      node: process.version,
      nproc: NPROC,
      cpuModel:
        /model name\s*:\s*(.*)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? os.cpus()[0]?.model,
      kernel: `${os.type()} ${os.release()}`,
      nginx: nginxVersion ?? null,
      nginxConfig: nginxConfig ?? null,
      wrk: spawnSync(WRK, ["-v"], { encoding: "utf8" }).stdout.split("\n")[0].trim(),
      backend: args.backend,
      git: gitDescription(),
      baseline: BASELINE ? { dir: BASELINE.dir, commit: BASELINE.commit, dirty: BASELINE.dirty } : null,
      warnings,
      pinning: PIN ? "proxies on cpu0; backend, redis-server, wrk and loadgen on cpu1 (taskset)" : "none",
      nodeFlags: NODE_FLAGS,
      plan: { ...PLAN, connections: CONNECTIONS, maxAttempts: MAX_ATTEMPTS },
      othersAtStartPct: Math.max(othersAtStart.othersPct, othersAtStart.othersResidualPct),
      quietThresholdPct: QUIET * 100,
      residualThresholdPct: RESIDUAL_LIMIT * 100,
      stealThresholdPct: STEAL_LIMIT * 100,
      targets: targets.map(({ name, label, phases, yaml, judged }) => ({
        name,
        label,
        phases,
        ...(yaml ? { config: yaml } : {}),
        ...(judged ? { judged: true } : {}),
      })),
    },
    checks,
    variants: {},
    saturation: {},
    latency: {},
    ttft: {},
    profiles: {},
    floodgateErrors: { count: 0, kinds: [] },
  };

  const measured = (t) => [...(t.proc ? [t.proc] : []), backend, ...(t.extraProcs ?? [])];
  const counts = (r) => (r.counters ? `; ${JSON.stringify(r.counters)}` : "");

  const open = (t, stream) => {
    const [rate, seconds, warmup] = stream
      ? [PLAN.sseRate, PLAN.sseSeconds, PLAN.sseWarmup]
      : [PLAN.latRate, PLAN.latSeconds, PLAN.latWarmup];
    return counted(t, () => loadgen(t.url, { rate, seconds, warmup, stream }, t.request));
  };
  const phases = [
    {
      key: "saturation",
      what: `${PLAN.satWarmup}s warm-up + ${PLAN.satSeconds}s, wrk -t1 -c${CONNECTIONS}`,
      // The warm-up runs outside the measured window: CPU per request counts measured requests.
      before: (t) => wrk(t.url, PLAN.satWarmup, t.request),
      work: (t) => counted(t, () => wrk(t.url, PLAN.satSeconds, t.request)),
      summary: (r) => `${r.rps} req/s, ${r.errorCount} errors`,
    },
    {
      key: "latency",
      what: `${PLAN.latRate} req/s open loop, ${PLAN.latWarmup}s warm-up + ${PLAN.latSeconds}s`,
      work: (t) => open(t, false),
      summary: (r) => `p50 ${r.latencyMs?.p50} ms, p99 ${r.latencyMs?.p99} ms, ${r.errors} errors`,
    },
    {
      key: "ttft",
      what: `first SSE event, ${PLAN.sseRate} req/s open loop, ${PLAN.sseWarmup}s warm-up + ${PLAN.sseSeconds}s`,
      work: (t) => open(t, true),
      summary: (r) => `p50 ${r.latencyMs?.p50} ms, p99 ${r.latencyMs?.p99} ms, ${r.errors} errors`,
    },
  ];
  for (const phase of phases) {
    const taking = targets.filter((t) => t.phases.includes(phase.key));
    const rounds = new Map(taking.map((t) => [t.name, []]));
    for (let round = 1; round <= PLAN.rounds; round++) {
      for (const t of taking) {
        log(`${phase.key} ${t.name} (round ${round}/${PLAN.rounds}): ${phase.what}`);
        // An exited server drops out of the running processes, and with it its log from the
        // error report: say which one ended, how (code or signal) and what it logged.
        if (t.proc?.exited)
          throw new Error(`${t.name} exited (${t.proc.exitCode}) during the run:\n${tail(t.proc.logPath)}`);
        await phase.before?.(t);
        const { result, cpu } = await measure(measured(t), phase.work(t), log);
        rounds.get(t.name).push({ ...result, cpu });
        log(`  ${phase.summary(result)}${counts(result)}`);
      }
    }
    for (const [name, list] of rounds) results[phase.key][name] = medianRound(list, phase.key);
  }
  const quiet = targets.find((t) => t.name === "floodgate-nolog");
  if (quiet) results.floodgateErrors = errorLines(quiet.proc.logPath);
  for (const t of targets.filter((x) => x.adminUrl)) {
    results.variants[t.name] = {
      config: t.yaml,
      metrics: await variantMetrics(t.adminUrl).catch((err) => [{ error: String(err) }]),
      // Only floodgate-nolog keeps its stdout (the others' goes to /dev/null with the access log).
      logLines: t.variant.quiet ? errorLines(t.proc.logPath, /"level":(40|50|60)/) : undefined,
      redis: t.redis
        ? {
            commandStats: await redisCommandStats(redisPorts[t.redis]),
            version: spawnSync(REDIS, ["--version"], { encoding: "utf8" }).stdout.trim(),
          }
        : undefined,
    };
  }

  // The proxies are stopped before profiling so that the profiled process has core 0 alone;
  // Redis stays up for the Redis variant's profile.
  await Promise.all(targets.filter((t) => t.proc).map((t) => stop(t.proc)));
  if (slotsRedis) await stop(slotsRedis);
  if (!args["skip-profile"]) {
    const profiled = [
      {
        name: "fastify-floor",
        args: floorArgs("fastify", await freePort()),
        readyPath: "/health",
        request: {},
      },
      ...targets
        .filter((t) => t.profile)
        .map((t) => ({ name: t.name, readyPath: "/healthz", request: t.request, t })),
    ];
    for (const p of profiled) {
      if (p.t) {
        const port = await freePort();
        const config = join(tmp, `profile-${p.name}.yaml`);
        writeFileSync(config, gatewayYaml(port, await freePort(), ports.backend, p.t.variant));
        p.args = [p.t.main, "--config", config];
        p.url = `http://127.0.0.1:${port}`;
      } else {
        p.url = `http://127.0.0.1:${p.args[p.args.indexOf("--port") + 1]}`;
      }
      log(`profile: ${p.name} under wrk for ${PLAN.profSeconds}s with --cpu-prof`);
      results.profiles[p.name] = await profileTarget(p, log);
      log(
        `  ${results.profiles[p.name].rpsUnderProfiler} req/s profiled, ${results.profiles[p.name].busyUsPerRequest} µs/req busy`,
      );
    }
  }
  await stopAll();

  const resultsDir = join(HERE, "results");
  mkdirSync(resultsDir, { recursive: true });
  const stamp = startedAt.toISOString().replace(/[:.]/g, "-");
  const json = `${JSON.stringify(results, null, 2)}\n`;
  writeFileSync(join(resultsDir, `overhead-${stamp}.json`), json);
  writeFileSync(join(resultsDir, "latest.json"), json);
  writeFileSync(args.report, renderReport(results));
  // The project's linter formats Markdown too: leave the report as `biome check` wants it.
  const biome = join(ROOT, "node_modules/.bin/biome");
  if (existsSync(biome)) spawnSync(biome, ["format", "--write", args.report], { cwd: ROOT, stdio: "ignore" });
  log(
    `done in ${Math.round((Date.now() - startedAt.getTime()) / 1000)} s: ${relative(ROOT, args.report)}, ${relative(ROOT, join(resultsDir, `overhead-${stamp}.json`))}`,
  );
}

main().then(
  () => process.exit(0),
  async (err) => {
    if (interrupted) return; // the signal handler cleans up and exits
    console.error(err instanceof Error ? err.message : err);
    for (const p of running()) console.error(`--- ${p.name} log ---\n${p.logPath ? tail(p.logPath) : ""}`);
    await stopAll();
    process.exit(1);
  },
);
