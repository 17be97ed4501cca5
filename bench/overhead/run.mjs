#!/usr/bin/env node
/**
 * The overhead benchmark: what floodgate adds over reaching a backend directly, with nginx as
 * the yardstick. One run, one backend, the same load for every target:
 *   direct         the backend itself
 *   nginx          nginx (one worker) in front of it, when /usr/sbin/nginx or nginx is installed
 *   node-floor     floor-proxy.mjs: node:http + undici and nothing else, the floor for a Node proxy
 *   fastify-floor  floor-proxy.mjs --server fastify: the same behind a one-route Fastify 5 app,
 *                  the floor for a Fastify proxy (what floodgate costs beyond it is its own)
 *   floodgate      `floodgate --config` with log level warn and no access log
 *   floodgate+log  the same with the default logging (info + access log; stdout to /dev/null)
 * and three variants of `floodgate` (same logging), each changing one thing:
 *   floodgate+memory-limits  an API key, a tenant request limit and a per-IP limit, both far
 *                            above the load (every request checked, none refused), memory store
 *   floodgate+redis-limits   the same with `store: redis` on a redis-server this script starts:
 *                            two bucket scripts (EVALSHA) per request
 *   floodgate+redis-slots    no limits; `store: redis` (a second redis-server) and the backend's
 *                            maxConcurrency at half the connections: admission with slots shared
 *                            between replicas, whose Redis calls are per sync, not per request
 *   floodgate+cache-hit      the pool's response cache on, and `"temperature": 0` in the body:
 *                            after the first request every answer is a cache HIT
 * With --baseline DIR (another floodgate checkout, built: DIR/dist/src/main.js), the same run
 * also starts floodgate, floodgate+log and floodgate+memory-limits from DIR, as floodgate@base,
 * floodgate+log@base and floodgate+memory-limits@base: same configs, flags and core, each taking
 * its turn right after its counterpart. This machine's speed drifts between runs, so a build is
 * only compared with another measured in the same rounds (the report's "Before and after").
 * Proxies run on core 0; the backend, redis-server and the load generators (wrk, loadgen.mjs)
 * on core 1.
 *
 * Measurements: saturation throughput (wrk), open-loop latency at a fixed rate (loadgen.mjs),
 * time to the first SSE event at a fixed rate (loadgen.mjs --stream), and a CPU profile of
 * floodgate under saturation. Writes bench/overhead/REPORT.md and results/*.json.
 *
 * Each measurement runs in rounds (3 by default), the targets taking turns within a round, so
 * that a slow spell of this shared machine hits every target alike; the report keeps the median
 * round and shows the spread.
 *
 * usage: node bench/overhead/run.mjs [--quick] [--rounds N] [--backend trivial|sim] [--skip-nginx]
 *                                    [--skip-variants] [--skip-profile] [--report FILE]
 *                                    [--patience SECONDS] [--baseline DIR]
 * (`npm run bench:overhead` builds first and runs this.)
 */
import { spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import os from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { INSIDE_SCRIPTS, redisArgs, commandStats as redisCommandStats, waitRedis } from "../surge/redis.mjs";
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
    /** Leave out the limits and cache variants of floodgate (they run by default). */
    "skip-variants": { type: "boolean", default: false },
    "skip-profile": { type: "boolean", default: false },
    report: { type: "string", default: join(HERE, "REPORT.md") },
    /** Seconds the whole run may spend waiting for other processes to calm down and redoing. */
    patience: { type: "string", default: "40" },
    /** Another floodgate checkout, built, to measure beside this one (the @base targets). */
    baseline: { type: "string" },
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
// Child processes: every one is tracked and ended on exit, error, SIGINT and SIGTERM.

const children = new Set();
/** Our process ids: this one and every child; CPU used by any other process is interference. */
const ours = new Set([process.pid]);
let tmp;

function pinned(core, command, commandArgs) {
  return PIN ? ["taskset", ["-c", String(core), command, ...commandArgs]] : [command, commandArgs];
}

/** Starts a long-running server; its output goes to a file in the temp dir (or /dev/null). */
function startServer(name, core, command, commandArgs, { stdout } = {}) {
  const logPath = join(tmp, `${name}.log`);
  const out = openSync(stdout ?? logPath, "a");
  const err = openSync(logPath, "a");
  const [cmd, cmdArgs] = pinned(core, command, commandArgs);
  const child = spawn(cmd, cmdArgs, { cwd: ROOT, stdio: ["ignore", out, err] });
  ours.add(child.pid);
  closeSync(out);
  closeSync(err);
  const proc = { name, child, logPath, exited: false, exitCode: null };
  children.add(proc);
  child.on("exit", (code, signal) => {
    proc.exited = true;
    proc.exitCode = code ?? signal;
    children.delete(proc);
  });
  return proc;
}

/** Runs a command to its end (killed after timeoutSeconds), capturing its output. */
function runToEnd(core, command, commandArgs, timeoutSeconds, env = process.env) {
  const [cmd, cmdArgs] = pinned(core, command, commandArgs);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, cmdArgs, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    const watchdog = setTimeout(() => child.kill("SIGKILL"), timeoutSeconds * 1000);
    ours.add(child.pid);
    const proc = { name: command, child, exited: false };
    children.add(proc);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => {
      stdout += c;
    });
    child.stderr.on("data", (c) => {
      stderr += c;
    });
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      clearTimeout(watchdog);
      proc.exited = true;
      children.delete(proc);
      if (code === 0) resolvePromise({ stdout, stderr });
      else reject(new Error(`${command} exited with ${code ?? signal}: ${stderr.trim() || stdout.trim()}`));
    });
  });
}

async function stop(proc, signal = "SIGTERM") {
  if (proc.exited) return;
  const exited = new Promise((r) => proc.child.once("exit", r));
  proc.child.kill(signal);
  const timeout = new Promise((r) => setTimeout(() => r("timeout"), 5000).unref());
  if ((await Promise.race([exited, timeout])) === "timeout" && !proc.exited) {
    proc.child.kill("SIGKILL");
    await exited;
  }
}

async function stopAll() {
  await Promise.all([...children].map((p) => stop(p)));
}

process.on("exit", () => {
  for (const p of children) {
    if (!p.exited) p.child.kill("SIGKILL");
  }
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});
let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    interrupted = true;
    console.error(`\n${signal}: stopping the benchmark's processes`);
    stopAll().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------------------------------
// Machine and helpers.

const NPROC = os.availableParallelism();
const HAVE_TASKSET = spawnSync("taskset", ["-V"]).status === 0;
const PIN = HAVE_TASKSET && NPROC >= 2;
const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

function findBinary(candidates) {
  for (const c of candidates) {
    if (c.includes("/")) {
      if (existsSync(c)) return c;
    } else {
      const found = spawnSync("sh", ["-c", `command -v ${c}`], { encoding: "utf8" }).stdout.trim();
      if (found) return found;
    }
  }
  return undefined;
}

function freePort() {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePromise(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitReady(proc, url) {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (proc.exited)
      throw new Error(`${proc.name} exited (${proc.exitCode}) before it was ready:\n${tail(proc.logPath)}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status < 500) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`${proc.name} not ready at ${url} after 15 s:\n${tail(proc.logPath)}`);
}

function tail(path) {
  try {
    return readFileSync(path, "utf8").split("\n").slice(-20).join("\n");
  } catch {
    return "(no log)";
  }
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
      if (ours.has(pid)) continue;
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
      if (ours.has(pid)) continue;
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
  const servers = [...children].filter((p) => p.logPath && !p.exited);
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
 * every percentile replaced by its median over the rounds, and each round's headline numbers
 * kept in `rounds` for the spread.
 */
function medianRound(list, key) {
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
  const headline = (r) => (key === "saturation" ? r.rps : r.latencyMs?.p50);
  const sorted = [...list].sort((a, b) => headline(a) - headline(b));
  const mid = sorted[Math.floor((sorted.length - 1) / 2)];
  // A saturation round keeps its requests and every process's CPU time too: the report's
  // before-and-after takes ratios to the floor within each round, not between medians.
  const out = {
    ...mid,
    rounds: list.map((r) =>
      key === "saturation"
        ? {
            rps: r.rps,
            requests: r.requests,
            cpuSeconds: Object.fromEntries(
              Object.entries(r.cpu.processes).map(([n, c]) => [n, c.cpuSeconds]),
            ),
          }
        : { ...r.latencyMs },
    ),
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
 * floodgate's config. `variant` adds, for the limits and cache runs: an admin listener on
 * loopback (read once after the run, for its counters), an API key with a tenant request limit
 * and a per-IP limit far above the load (memory store, or Redis with `redisPort`), or the pool's
 * response cache.
 */
function gatewayYaml(port, backendPort, accessLog, variant = {}) {
  const lines = [
    `listen: { host: 127.0.0.1, port: ${port} }`,
    variant.adminPort
      ? `admin: { enabled: true, host: 127.0.0.1, port: ${variant.adminPort} }`
      : "admin: { enabled: false }",
    "server: { shutdownGrace: 2s }",
    accessLog ? "log: { level: info, accessLog: true }" : "log: { level: warn, accessLog: false }",
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
  lines.push("");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// The floodgate variants: request limits (memory and Redis store) and cache hits.

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
  const proc = startServer(name, 1, REDIS, redisArgs(port, dir));
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
    /^(floodgate_(requests_total|ratelimit_decisions_total|store_errors_total|ratelimit_without_store_total|cache_requests_total|upstream_attempts_total|admission_decisions_total|fleet_replicas|fleet_store_down|backend_slot_share))(\{[^}]*\})? (\S+)$/;
  const out = [];
  for (const line of text.split("\n")) {
    const m = wanted.exec(line);
    if (m) out.push({ name: m[1], labels: m[3] ?? "", value: Number(m[4]) });
  }
  return out;
}

function nginxConf(dir, port, backendPort) {
  return `# written by bench/overhead/run.mjs
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  upstream backend {
    server 127.0.0.1:${backendPort};
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`;
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
  const { stdout } = await runToEnd(
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
  const { stdout } = await runToEnd(
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
// CPU profile of floodgate under saturation: self time by function and by package.

async function profileFloodgate(backendPort) {
  const port = await freePort();
  const config = join(tmp, "floodgate-profile.yaml");
  writeFileSync(config, gatewayYaml(port, backendPort, true));
  const profDir = join(tmp, "prof");
  const proc = startServer(
    "floodgate-profile",
    0,
    process.execPath,
    [...NODE_FLAGS, "--cpu-prof", `--cpu-prof-dir=${profDir}`, MAIN, "--config", config],
    { stdout: "/dev/null" },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitReady(proc, `${url}/healthz`);
  await wrk(url, PLAN.satWarmup);
  await waitQuiet(Math.max(1, Math.min(QUIET_WAIT_SECONDS, patienceLeft())), () => {});
  // V8 stamps samples with the monotonic clock in µs, as process.hrtime does in ns: the summary
  // keeps only the measured window (no start-up, warm-up or shutdown).
  const from = Number(process.hrtime.bigint() / 1000n);
  const { result, cpu } = await withCpu([proc], () => wrk(url, PLAN.profSeconds));
  const to = Number(process.hrtime.bigint() / 1000n);
  await stop(proc);
  const file = readdirSync(profDir).find((f) => f.endsWith(".cpuprofile"));
  if (!file) throw new Error("floodgate wrote no .cpuprofile");
  const profile = JSON.parse(readFileSync(join(profDir, file), "utf8"));
  return {
    rpsUnderProfiler: result.rps,
    disturbed: disturbance(cpu) ?? null,
    ...summarizeProfile(profile, from, to, result.requests),
  };
}

/** Self time by function and by package, and floodgate's functions' inclusive time, in [from, to] µs. */
function summarizeProfile(profile, from, to, requests) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Time per node: each sample stands for the interval up to the next one.
  const time = new Map();
  let at = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    at += profile.timeDeltas[i];
    const next = i + 1 < profile.samples.length ? at + profile.timeDeltas[i + 1] : profile.endTime;
    if (at < from || at > to) continue;
    const id = profile.samples[i];
    time.set(id, (time.get(id) ?? 0) + (next - at));
  }
  const idle = (id) => byId.get(id).callFrame.functionName === "(idle)";
  let busy = 0;
  let idleUs = 0;
  for (const [id, us] of time) {
    if (idle(id)) idleUs += us;
    else busy += us;
  }
  const self = new Map();
  const inclusive = new Map();
  const areas = new Map();
  const add = (map, key, us) => map.set(key, (map.get(key) ?? 0) + us);
  for (const [id, us] of time) {
    if (idle(id)) continue;
    const frame = byId.get(id).callFrame;
    add(self, frameKey(frame), us);
    add(areas, area(frame), us);
    const seen = new Set();
    for (let node = id; node !== undefined; node = parent.get(node)) {
      const f = byId.get(node).callFrame;
      if (!f.url.includes("/dist/src/")) continue;
      const k = frameKey(f);
      if (seen.has(k)) continue;
      seen.add(k);
      add(inclusive, k, us);
    }
  }
  const top = (map, n) =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([name, us]) => ({
        name,
        pct: pct(us / busy),
        usPerRequest: Math.round((us / requests) * 10) / 10,
      }));
  return {
    windowSeconds: round3((to - from) / 1e6),
    busyPct: pct(busy / (busy + idleUs)),
    busyUsPerRequest: Math.round((busy / requests) * 10) / 10,
    requests,
    selfTop: top(self, 25),
    areas: top(areas, 15),
    floodgateInclusive: top(inclusive, 15),
  };
}

function frameKey(frame) {
  const name = frame.functionName || "(anonymous)";
  if (!frame.url) return name;
  return `${name} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
}

function shortUrl(url) {
  const nm = url.lastIndexOf("/node_modules/");
  if (nm !== -1) return url.slice(nm + "/node_modules/".length);
  const src = url.indexOf("/dist/src/");
  if (src !== -1) return url.slice(src + 1);
  return url.replace(/^file:\/\//, "");
}

function area(frame) {
  const url = frame.url;
  if (!url) return frame.functionName.startsWith("(") ? frame.functionName : "(native)";
  const nm = url.lastIndexOf("/node_modules/");
  if (nm !== -1) {
    const rest = url.slice(nm + "/node_modules/".length).split("/");
    return rest[0].startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0];
  }
  if (url.includes("/dist/src/")) return "floodgate (dist/src)";
  if (url.startsWith("node:")) {
    const m = /^node:(internal\/)?([a-z_]+)/.exec(url);
    return `node:${m ? m[2] : url}`;
  }
  return url;
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

async function main() {
  if (!existsSync(MAIN)) throw new Error(`${relative(ROOT, MAIN)} is missing: run \`npm run build\` first`);
  if (!WRK) throw new Error("wrk is not installed (Debian: apt-get install wrk)");
  if (!["trivial", "sim"].includes(args.backend)) throw new Error("--backend must be trivial or sim");
  if (BASELINE && !existsSync(BASELINE.main))
    throw new Error(`--baseline: ${BASELINE.main} is missing: build that checkout first`);
  tmp = mkdtempSync(join(os.tmpdir(), "floodgate-bench-"));
  const startedAt = new Date();
  const log = (msg) =>
    console.log(`[${((Date.now() - startedAt.getTime()) / 1000).toFixed(0).padStart(3)}s] ${msg}`);

  const ports = {
    backend: await freePort(),
    nginx: await freePort(),
    floodgate: await freePort(),
    floodgateLog: await freePort(),
    floor: await freePort(),
    fastifyFloor: await freePort(),
  };
  const warnings = [];

  // Backend on core 1, beside the load generators.
  const backend =
    args.backend === "sim"
      ? startServer("backend", 1, process.execPath, [
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
      : startServer("backend", 1, process.execPath, [
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
  if (NGINX) {
    const dir = join(tmp, "nginx");
    mkdirSync(dir);
    writeFileSync(join(dir, "nginx.conf"), nginxConf(dir, ports.nginx, ports.backend));
    nginxVersion = spawnSync(NGINX, ["-v"], { encoding: "utf8" })
      .stderr.trim()
      .replace(/^nginx version: /, "");
    const proc = startServer("nginx", 0, NGINX, [
      "-p",
      dir,
      "-c",
      join(dir, "nginx.conf"),
      "-e",
      join(dir, "error.log"),
    ]);
    await waitReady(proc, `http://127.0.0.1:${ports.nginx}/health`);
    targets.push({
      name: "nginx",
      label: nginxVersion,
      url: `http://127.0.0.1:${ports.nginx}`,
      proc,
      phases: ALL_PHASES,
    });
  }

  for (const [name, port, server, label] of [
    ["node-floor", ports.floor, "node", "minimal Node proxy (node:http + undici)"],
    ["fastify-floor", ports.fastifyFloor, "fastify", "minimal Fastify proxy (Fastify 5 + undici)"],
  ]) {
    const proc = startServer(name, 0, process.execPath, [
      ...NODE_FLAGS,
      join(HERE, "floor-proxy.mjs"),
      "--server",
      server,
      "--port",
      String(port),
      "--upstream",
      backendUrl,
    ]);
    const url = `http://127.0.0.1:${port}`;
    await waitReady(proc, `${url}/health`);
    targets.push({ name, label, url, proc, phases: ALL_PHASES });
  }

  // The builds a floodgate target starts from: this checkout's, and the baseline's when given.
  // A baseline target follows its counterpart in the list, so in every round the two run one
  // right after the other.
  const builds = [
    { suffix: "", main: MAIN, label: "" },
    ...(BASELINE ? [{ suffix: BASE_SUFFIX, main: BASELINE.main, label: ", baseline build" }] : []),
  ];
  for (const [name, port, accessLog] of [
    ["floodgate", ports.floodgate, false],
    ["floodgate+log", ports.floodgateLog, true],
  ]) {
    for (const build of builds) {
      const own = name + build.suffix;
      const listen = build.suffix ? await freePort() : port;
      const config = join(tmp, `${own}.yaml`);
      writeFileSync(config, gatewayYaml(listen, ports.backend, accessLog));
      // Access log lines go to /dev/null; the quiet variant's stdout is kept to count error lines.
      const proc = startServer(own, 0, process.execPath, [...NODE_FLAGS, build.main, "--config", config], {
        stdout: accessLog ? "/dev/null" : undefined,
      });
      const url = `http://127.0.0.1:${listen}`;
      await waitReady(proc, `${url}/healthz`);
      targets.push({
        name: own,
        label: `${accessLog ? "floodgate, access log on (info)" : "floodgate, access log off (warn)"}${build.label}`,
        url,
        proc,
        phases: ALL_PHASES,
      });
    }
  }

  // The variants: limits on the memory store, limits on Redis, cache hits. Latency and
  // saturation for each; the first SSE event only for the cache (a streamed hit is replayed).
  let redis;
  let redisPort;
  // floodgate+redis-slots has a redis-server of its own: its syncs run all the time, and the
  // limits variant's scripts per request must stay its own.
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
    const variants = [
      {
        name: "floodgate+memory-limits",
        label: "floodgate, API key + tenant limit + per-IP limit, memory store",
        variant: { limits: true },
        request: LIMITS_REQUEST,
        phases: ["saturation", "latency"],
        // The one variant measured from the baseline build too: the request path's limits.
        withBaseline: true,
      },
      redis && {
        name: "floodgate+redis-limits",
        label: "floodgate, API key + tenant limit + per-IP limit, Redis store",
        variant: { limits: true, redisPort },
        request: LIMITS_REQUEST,
        phases: ["saturation", "latency"],
        extraProcs: [redis],
        own: () => redisCalls(redisPort),
      },
      slotsRedis && {
        name: "floodgate+redis-slots",
        label: `floodgate, backend maxConcurrency ${SLOTS_MAX_CONCURRENCY} shared through Redis (store.slots)`,
        variant: { slots: { redisPort: slotsRedisPort, maxConcurrency: SLOTS_MAX_CONCURRENCY } },
        request: {},
        phases: ["saturation", "latency"],
        extraProcs: [slotsRedis],
        own: () => redisCalls(slotsRedisPort),
      },
      {
        name: "floodgate+cache-hit",
        label: "floodgate, pool cache on, temperature 0: cache hits",
        variant: { cache: true },
        request: CACHE_REQUEST,
        phases: ALL_PHASES,
        // The trivial backend counts the requests that reach it; the simulator does not.
        own: args.backend === "trivial" ? () => backendPosts(backendUrl) : undefined,
      },
    ].filter(Boolean);
    for (const v of variants) {
      for (const build of builds.filter((b) => !b.suffix || v.withBaseline)) {
        const name = v.name + build.suffix;
        const port = await freePort();
        const adminPort = await freePort();
        const yaml = gatewayYaml(port, ports.backend, false, { ...v.variant, adminPort });
        const config = join(tmp, `${name}.yaml`);
        writeFileSync(config, yaml);
        const proc = startServer(name, 0, process.execPath, [...NODE_FLAGS, build.main, "--config", config]);
        const url = `http://127.0.0.1:${port}`;
        await waitReady(proc, `${url}/healthz`);
        const adminUrl = `http://127.0.0.1:${adminPort}`;
        // Read around each measurement: Redis's or the backend's counters, and floodgate's own.
        const counters = async () => ({
          ...(v.own ? await v.own() : {}),
          ...decisionCounts(await variantMetrics(adminUrl)),
        });
        targets.push({ ...v, name, label: v.label + build.label, url, proc, adminUrl, yaml, counters });
      }
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
      wrk: spawnSync(WRK, ["-v"], { encoding: "utf8" }).stdout.split("\n")[0].trim(),
      backend: args.backend,
      git: gitDescription(),
      baseline: BASELINE ? { dir: BASELINE.dir, commit: BASELINE.commit, dirty: BASELINE.dirty } : null,
      warnings,
      pinning: PIN ? "proxies on cpu0; backend, wrk and loadgen on cpu1 (taskset)" : "none",
      plan: { ...PLAN, connections: CONNECTIONS, maxAttempts: MAX_ATTEMPTS },
      othersAtStartPct: Math.max(othersAtStart.othersPct, othersAtStart.othersResidualPct),
      quietThresholdPct: QUIET * 100,
      residualThresholdPct: RESIDUAL_LIMIT * 100,
      stealThresholdPct: STEAL_LIMIT * 100,
      targets: targets.map(({ name, label, phases }) => ({ name, label, phases })),
    },
    checks,
    variants: {},
    saturation: {},
    latency: {},
    ttft: {},
    profile: null,
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
        // An exited server drops out of `children`, and with it its log from the error report:
        // say which one ended, how (code or signal) and what it logged, not just "fetch failed".
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
  const quiet = targets.find((t) => t.name === "floodgate");
  results.floodgateErrors = errorLines(quiet.proc.logPath);
  for (const t of targets.filter((x) => x.adminUrl)) {
    results.variants[t.name] = {
      config: t.yaml,
      metrics: await variantMetrics(t.adminUrl).catch((err) => [{ error: String(err) }]),
      logLines: errorLines(t.proc.logPath, /"level":(40|50|60)/),
      redis: t.name.includes("redis")
        ? {
            commandStats: await redisCommandStats(t.name.includes("slots") ? slotsRedisPort : redisPort),
            version: spawnSync(REDIS, ["--version"], { encoding: "utf8" }).stdout.trim(),
          }
        : undefined,
    };
  }

  // The proxies are stopped before profiling so that the profiled process has core 0 alone.
  await Promise.all(targets.filter((t) => t.proc).map((t) => stop(t.proc)));
  if (redis) await stop(redis);
  if (slotsRedis) await stop(slotsRedis);
  if (!args["skip-profile"]) {
    log(`profile: floodgate (access log on) under wrk for ${PLAN.profSeconds}s with --cpu-prof`);
    results.profile = await profileFloodgate(ports.backend);
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
  log(`done: ${relative(ROOT, args.report)}, ${relative(ROOT, join(resultsDir, `overhead-${stamp}.json`))}`);
}

main().then(
  () => process.exit(0),
  async (err) => {
    if (interrupted) return; // the signal handler cleans up and exits
    console.error(err instanceof Error ? err.message : err);
    for (const p of children) console.error(`--- ${p.name} log ---\n${p.logPath ? tail(p.logPath) : ""}`);
    await stopAll();
    process.exit(1);
  },
);
