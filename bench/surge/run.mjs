#!/usr/bin/env node
/**
 * The surge benchmark: what a gateway does when more work arrives than the GPUs behind it can
 * do. A fleet of three `floodgate sim` backends (8, 8 and 4 slots), its capacity C measured in
 * the same run, then open-loop Poisson arrivals at multiples of C through each target:
 *   nginx      least_conn over the three (when /usr/sbin/nginx or nginx is installed)
 *   floodgate  `floodgate --config`, one pool with maxConcurrency 8, 8, 4 and four tenants
 *   floodgate×3  three `floodgate --config` replicas with the same pool on `store: redis` (one
 *              redis-server on a free port, backend slots shared: src/upstream/fleet.ts), nginx
 *              round-robin in front of them (needs nginx and redis-server)
 * Scenarios: tenant `interactive` alone at 1x, 2x, 3x and 10x of C; a priority mix (interactive
 * 0.5x + batch 2.5x); a fairness mix (noisy 3x + quiet 0.3x, both interactive). Every request
 * is recorded, and so are each simulator's queue beyond its slots (sampled) and, for floodgate×3,
 * Redis's INFO commandstats around the run; analyze.mjs turns the records into outcomes and
 * goodput, report.mjs into bench/surge/REPORT.md and its SVG charts. Raw results go to
 * bench/surge/results/ (git-ignored).
 *
 * usage: node bench/surge/run.mjs [--quick] [--duration SECONDS] [--seed N] [--skip-nginx]
 *                                 [--scenarios 1x,10x,...] [--gateway-config-extra FILE]
 *                                 [--build DIR] [--skip-replicas] [--replica-scenarios 3x,...]
 * (`npm run bench:surge` builds first and runs this.) --build runs floodgate (and the simulators)
 * from another checkout's dist/, e.g. a clean clone of HEAD while src/ is being edited.
 * --gateway-config-extra: a YAML mapping merged (deeply) into the generated pool, e.g.
 * `admission: { reserve: 10 }`; a top-level `tenants:` key in it is merged into the config's
 * tenants instead (e.g. `tenants: { quiet: { weight: 2 } }`).
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { parse as parseYaml, stringify as toYaml } from "yaml";
import {
  findBinary,
  freePort,
  running,
  setUp,
  sleep,
  startNginx,
  startServer,
  stopAll,
  tail,
  waitReady,
} from "../lib/processes.mjs";
import { OUTCOME_LABELS, OUTCOMES, outcome } from "./analyze.mjs";
import { drain as drainFleet, FLEET, fleetStats, measureCapacity, startFleet } from "./fleet.mjs";
import { MAX_TOKENS, MODEL, newClient, openLoop, poissonTimes, streamOnce } from "./load.mjs";
import { commandStats, redisArgs, roundTrips, waitRedis } from "./redis.mjs";
import { pct, writeReport } from "./report.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    /** Seconds of arrivals per scenario (default 40; 10 with --quick). */
    duration: { type: "string" },
    seed: { type: "string", default: "1" },
    "skip-nginx": { type: "boolean", default: false },
    /** Only these scenarios, comma-separated (for trying changes; the report shows what ran). */
    scenarios: { type: "string" },
    "gateway-config-extra": { type: "string" },
    /** Another floodgate checkout, built, to run instead of this one (e.g. a clean clone of HEAD). */
    build: { type: "string" },
    /** Leave out floodgate×3 (three replicas sharing slots through Redis behind nginx). */
    "skip-replicas": { type: "boolean", default: false },
    /** The scenarios floodgate×3 runs, of those that run (default: all of them). */
    "replica-scenarios": { type: "string" },
  },
});
/** The floodgate checkout whose build runs the simulators and the gateway. */
const BUILD = args.build ? resolve(args.build) : ROOT;
const MAIN = join(BUILD, "dist/src/main.js");
/** As floodgate's `npm start` and Dockerfile run it (a 64 MB young generation). */
const NODE_FLAGS = ["--max-semi-space-size=64"];

const PLAN = {
  arrivalSeconds: Number(args.duration ?? (args.quick ? 10 : 40)),
  capacityWarmupS: args.quick ? 1 : 2,
  capacityWindowS: args.quick ? 8 : 20,
  // Long enough for a batch request sent last to wait its band's 30 s and stream its answer.
  stragglerSeconds: 40,
  pauseSeconds: 3,
  seed: Number(args.seed),
};

/** floodgate×3: this many replicas sharing the fleet's slots through one Redis. */
const REPLICAS = 3;
const REPLICA_TARGET = "floodgate×3";
/** How often each simulator's queue is read during a run, for its peak beyond the slots. */
const QUEUE_SAMPLE_MS = 20;

const TENANTS = {
  interactive: "interactive",
  batch: "batch",
  noisy: "interactive",
  quiet: "interactive",
};
const keyOf = (tenant) => `surge-${tenant}-key-0123456789abcdef`;

const SCENARIOS = [
  ...[1, 2, 3, 10].map((m) => ({ name: `${m}x`, streams: [{ tenant: "interactive", multiple: m }] })),
  {
    name: "priority",
    streams: [
      { tenant: "interactive", multiple: 0.5 },
      { tenant: "batch", multiple: 2.5 },
    ],
  },
  {
    name: "fairness",
    streams: [
      { tenant: "noisy", multiple: 3 },
      { tenant: "quiet", multiple: 0.3 },
    ],
  },
];

// ---------------------------------------------------------------------------------------------
// Child processes (bench/lib/processes.mjs: tracked and ended on exit, error, SIGINT and SIGTERM)
// and helpers.

/** The temp dir for the servers' logs and the gateways' configs (setUp makes it, in main). */
let tmp;
/** Set on SIGINT/SIGTERM, whose handlers (processes.mjs's) stop everything and exit. */
let interrupted = false;

const startedAt = new Date();
const log = (msg) => console.log(`[${((Date.now() - startedAt) / 1000).toFixed(0).padStart(4)}s] ${msg}`);

/** The newest modification time of a file under dir, in ms. */
function newestMtime(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) newest = Math.max(newest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  }
  return newest;
}

/** The build's commit, and whether its src/ differs from it. */
function gitDescription(dir) {
  const git = (a) => spawnSync("git", a, { cwd: dir, encoding: "utf8" }).stdout?.trim() ?? "";
  const head = git(["rev-parse", "--short", "HEAD"]);
  if (!head) return null;
  const dirty = git(["status", "--porcelain", "--", "src"]) !== "";
  return `${head}${dirty ? " + uncommitted changes in src/" : ""}`;
}

// ---------------------------------------------------------------------------------------------
// The fleet and the targets.

function isObject(x) {
  return x !== null && typeof x === "object" && !Array.isArray(x);
}

function deepMerge(base, extra) {
  const out = { ...base };
  for (const [k, v] of Object.entries(extra))
    out[k] = isObject(v) && isObject(out[k]) ? deepMerge(out[k], v) : v;
  return out;
}

/**
 * floodgate's config: one pool over the fleet, the four tenants' keys, quiet logging, no admin
 * listener. Everything else is left at floodgate's defaults (admission control included, once
 * it exists), unless --gateway-config-extra says otherwise. A replica of floodgate×3 adds its
 * `store` (Redis, slots shared) and an admin listener on loopback, read for its fleet gauges.
 */
function gatewayConfig(port, fleet, extra, { store, adminPort } = {}) {
  let pool = {
    models: [MODEL],
    backends: fleet.map((b) => ({ name: b.name, url: b.url, maxConcurrency: b.slots })),
  };
  let tenants = Object.fromEntries(Object.entries(TENANTS).map(([t, priority]) => [t, { priority }]));
  if (extra) {
    const { tenants: extraTenants, ...poolExtra } = extra;
    pool = deepMerge(pool, poolExtra);
    if (extraTenants) tenants = deepMerge(tenants, extraTenants);
  }
  return toYaml({
    listen: { host: "127.0.0.1", port },
    admin: adminPort ? { enabled: true, host: "127.0.0.1", port: adminPort } : { enabled: false },
    server: { shutdownGrace: "2s" },
    log: { level: "warn", accessLog: false },
    ...(store ? { store } : {}),
    auth: { keys: Object.keys(TENANTS).map((t) => ({ key: keyOf(t), tenant: t })) },
    tenants,
    pools: { surge: pool },
  });
}

async function startFloodgate(fleet, extra) {
  const port = await freePort();
  const yaml = gatewayConfig(port, fleet, extra);
  const file = join(tmp, "floodgate.yaml");
  writeFileSync(file, yaml);
  const proc = startServer("floodgate", process.execPath, [...NODE_FLAGS, MAIN, "--config", file], ROOT);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(proc, `${url}/healthz`);
  return { name: "floodgate", url, proc, yaml };
}

/** A redis-server for floodgate×3: no persistence, loopback, a free port. */
async function startRedis(binary) {
  const dir = join(tmp, "redis");
  mkdirSync(dir);
  const port = await freePort();
  const proc = startServer("redis", binary, redisArgs(port, dir), ROOT);
  await waitRedis(proc, port, tail);
  const version = /v=(\S+)/.exec(spawnSync(binary, ["--version"], { encoding: "utf8" }).stdout)?.[1] ?? null;
  return { port, proc, version };
}

/** The fleet gauges of one replica's /metrics, and its requests by status class. */
async function replicaMetrics(replica) {
  const res = await fetch(`${replica.adminUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const value = (name) =>
    Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text)?.[1] ?? Number.NaN);
  let requests = 0;
  for (const m of text.matchAll(/^floodgate_requests_total(?:\{[^}]*\})? (\S+)$/gm)) requests += Number(m[1]);
  return {
    replicas: value("floodgate_fleet_replicas"),
    storeDown: value("floodgate_fleet_store_down"),
    requests,
  };
}

/**
 * floodgate×3: REPLICAS floodgate processes with the one-replica target's pool and tenants on
 * `store: redis` (slots shared at the defaults: sync 100 ms, lease 3 s), and nginx round-robin
 * in front. Ready once every replica has seen all the others at a sync.
 */
async function startReplicas(nginxBinary, fleet, extra, redis) {
  const replicas = [];
  for (let i = 1; i <= REPLICAS; i++) {
    const port = await freePort();
    const adminPort = await freePort();
    const store = { type: "redis", url: `redis://127.0.0.1:${redis.port}`, replicas: REPLICAS };
    const yaml = gatewayConfig(port, fleet, extra, { store, adminPort });
    const file = join(tmp, `floodgate-r${i}.yaml`);
    writeFileSync(file, yaml);
    const name = `floodgate-r${i}`;
    const proc = startServer(name, process.execPath, [...NODE_FLAGS, MAIN, "--config", file], ROOT);
    replicas.push({
      name,
      port,
      url: `http://127.0.0.1:${port}`,
      adminUrl: `http://127.0.0.1:${adminPort}`,
      proc,
      yaml,
    });
  }
  for (const r of replicas) await waitReady(r.proc, `${r.url}/healthz`);
  const deadline = Date.now() + 15_000;
  for (;;) {
    const seen = await Promise.all(replicas.map((r) => replicaMetrics(r)));
    if (seen.every((m) => m.replicas === REPLICAS && m.storeDown === 0)) break;
    if (Date.now() > deadline)
      throw new Error(
        `${REPLICA_TARGET}: the replicas saw ${seen.map((m) => m.replicas).join(", ")} replicas after 15 s`,
      );
    await sleep(100);
  }
  const front = await startNginx(
    nginxBinary,
    replicas.map((r) => r.port),
    "",
    "nginx-replicas",
  );
  return {
    name: REPLICA_TARGET,
    url: front.url,
    proc: front.proc,
    procs: [front.proc, ...replicas.map((r) => r.proc), redis.proc],
    replicas,
    redis,
    yaml: replicas[0].yaml,
    conf: front.conf,
  };
}

/**
 * Reads every simulator's queue (requests waiting beyond its slots) every QUEUE_SAMPLE_MS until
 * the returned function is called; that returns the peak per simulator and the samples taken.
 */
function sampleQueues(fleet) {
  const peak = Object.fromEntries(fleet.map((b) => [b.name, 0]));
  let samples = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const all = await Promise.all(
        fleet.map((b) =>
          fetch(`${b.url}/sim/stats`, { signal: AbortSignal.timeout(2000) })
            .then((res) => res.json())
            .catch(() => null),
        ),
      );
      all.forEach((st, i) => {
        if (st) peak[fleet[i].name] = Math.max(peak[fleet[i].name], st.waiting);
      });
      samples++;
      await sleep(QUEUE_SAMPLE_MS);
    }
  })();
  return async () => {
    stopped = true;
    await loop;
    return { peak, samples, everyMs: QUEUE_SAMPLE_MS };
  };
}

/** One request per tenant through the target must be a complete 50-token stream. */
async function checkTarget(target, dispatcher) {
  const checks = Object.keys(TENANTS).map(async (tenant) => {
    const rec = await streamOnce(
      dispatcher,
      target.url,
      `Bearer ${keyOf(tenant)}`,
      AbortSignal.timeout(10_000),
      () => performance.now(),
    );
    return { tenant, rec };
  });
  for (const { tenant, rec } of await Promise.all(checks)) {
    if (rec.error || rec.tokens !== MAX_TOKENS) {
      throw new Error(
        `${target.name}: the check request for ${tenant} got status ${rec.status}, ${rec.tokens} tokens, error ${rec.error} ${rec.code ?? ""}`,
      );
    }
  }
}

/**
 * floodgate's warn and error lines (pino JSON on stdout), with a few distinct messages, and the
 * first 100 of them and of the info lines about the store (epoch ms, level, message), so that
 * the report can place them in the runs.
 */
function floodgateLog(path) {
  const lines = readFileSync(path, "utf8").split("\n");
  const warnings = lines.filter((l) => /"level":40/.test(l));
  const errors = lines.filter((l) => /"level":(50|60)/.test(l));
  const messages = new Set();
  const events = [];
  for (const l of lines) {
    const notable = /"level":(40|50|60)/.test(l);
    if (!notable && !/"level":30.*store/.test(l)) continue;
    let entry;
    try {
      entry = JSON.parse(l);
    } catch {
      entry = { msg: l.slice(0, 200) };
    }
    if (notable) messages.add(entry.msg);
    if (events.length < 100)
      events.push({ time: entry.time ?? null, level: entry.level ?? null, msg: entry.msg });
  }
  return { warnings: warnings.length, errors: errors.length, messages: [...messages].slice(0, 10), events };
}

// ---------------------------------------------------------------------------------------------
// The phases.

/** The arrivals of one scenario: each tenant's Poisson stream, merged in time order. */
function arrivalsFor(scenario) {
  return scenario.streams
    .flatMap((s) =>
      poissonTimes(s.rate, PLAN.arrivalSeconds, s.seed).map((at) => ({
        at,
        tenant: s.tenant,
        authorization: `Bearer ${keyOf(s.tenant)}`,
      })),
    )
    .sort((a, b) => a.at - b.at);
}

async function runScenario(target, scenario, fleet) {
  const arrivals = arrivalsFor(scenario);
  const before = await fleetStats(fleet);
  const redisBefore = target.redis ? await commandStats(target.redis.port) : undefined;
  const replicasBefore = target.replicas
    ? await Promise.all(target.replicas.map((r) => replicaMetrics(r)))
    : undefined;
  const started = Date.now();
  const queues = sampleQueues(fleet);
  const { records, arrivalsEnded, ended, aborted } = await openLoop({
    dispatcher: target.dispatcher,
    url: target.url,
    arrivals,
    stragglerMs: PLAN.stragglerSeconds * 1000,
  });
  const queue = await queues();
  // After the drain, so that the simulators' counters include the last answers.
  await drainFleet(fleet, PLAN.pauseSeconds);
  const after = await fleetStats(fleet);
  const wallSeconds = (Date.now() - started) / 1000;
  for (const proc of target.procs ?? [target.proc]) {
    if (proc.exited) throw new Error(`${proc.name} exited (${proc.exitCode}):\n${tail(proc.logPath)}`);
  }
  // Redis's calls from the send of the first arrival to the end of the drain: the replicas sync
  // all along, so this counts the idle syncs of the drain too.
  const redis = target.redis
    ? { seconds: wallSeconds, ...roundTrips(redisBefore, await commandStats(target.redis.port)) }
    : undefined;
  // Per replica: the fleet it saw at the end, whether Redis was down, the requests nginx gave it.
  const replicas = target.replicas
    ? await Promise.all(
        target.replicas.map(async (r, i) => {
          const m = await replicaMetrics(r);
          return { ...m, requests: m.requests - replicasBefore[i].requests };
        }),
      )
    : undefined;
  const simDelta = Object.fromEntries(
    ["received", "completed", "rejectedBusy", "aborted"].map((k) => [k, after[k] - before[k]]),
  );
  return {
    target: target.name,
    scenario: scenario.name,
    streams: scenario.streams,
    arrivalSeconds: PLAN.arrivalSeconds,
    maxTokens: MAX_TOKENS,
    planned: arrivals.length,
    arrivalsEnded,
    ended,
    aborted,
    wallSeconds,
    // Epoch ms, to place the gateways' log lines in the run.
    startedAtMs: started,
    endedAtMs: started + wallSeconds * 1000,
    simDelta,
    queue,
    redis,
    replicas,
    records,
  };
}

function oneLine(run) {
  const n = Object.fromEntries(OUTCOMES.map((o) => [o, 0]));
  for (const r of run.records) n[outcome(r)]++;
  return `${run.records.length} offered: ${OUTCOMES.map((o) => `${n[o]} ${OUTCOME_LABELS[o]}`).join(", ")} (${run.wallSeconds.toFixed(0)} s)`;
}

async function main() {
  if (!existsSync(MAIN)) throw new Error(`${relative(ROOT, MAIN)} is missing: run \`npm run build\` first`);
  if (!(PLAN.arrivalSeconds > 0)) throw new Error("--duration must be a positive number of seconds");
  const extraPath = args["gateway-config-extra"];
  const extra = extraPath ? parseYaml(readFileSync(extraPath, "utf8")) : undefined;
  if (extra !== undefined && !isObject(extra)) throw new Error(`${extraPath}: expected a YAML mapping`);
  const wanted = args.scenarios?.split(",").map((s) => s.trim());
  const scenarios = SCENARIOS.filter((s) => !wanted || wanted.includes(s.name));
  if (scenarios.length === 0)
    throw new Error(`--scenarios: none of ${SCENARIOS.map((s) => s.name).join(", ")}`);
  const nginxBinary = findBinary(["/usr/sbin/nginx", "nginx"]);
  const redisBinary = args["skip-replicas"]
    ? undefined
    : findBinary(["redis-server", "/usr/bin/redis-server"]);
  const wantedReplicas = args["replica-scenarios"]?.split(",").map((s) => s.trim());
  const replicaScenarios = scenarios.filter((s) => !wantedReplicas || wantedReplicas.includes(s.name));
  if (wantedReplicas && replicaScenarios.length === 0)
    throw new Error(`--replica-scenarios: none of ${scenarios.map((s) => s.name).join(", ")}`);
  let replicasSkipped = args["skip-replicas"] ? "--skip-replicas" : null;
  if (!replicasSkipped && !nginxBinary) replicasSkipped = "nginx not installed (it is the replicas' front)";
  if (!replicasSkipped && !redisBinary) replicasSkipped = "redis-server not installed";
  const warnings = [];
  if (newestMtime(join(BUILD, "src")) > statSync(MAIN).mtimeMs) {
    warnings.push("dist/ is older than src/: this run measured the last build, not the source.");
    log(`WARNING ${warnings.at(-1)}`);
  }
  tmp = setUp("floodgate-surge-");
  for (const signal of ["SIGINT", "SIGTERM"])
    process.on(signal, () => {
      interrupted = true;
    });

  const fleet = await startFleet(MAIN, ROOT);
  log(`fleet up: ${fleet.map((b) => `${b.name} ${b.slots} slots ${b.url}`).join(", ")}`);
  log(
    `capacity: closed loop at each simulator's slot count + 1, ${PLAN.capacityWarmupS}s + ${PLAN.capacityWindowS}s`,
  );
  const capacity = await measureCapacity(fleet, {
    warmupS: PLAN.capacityWarmupS,
    windowS: PLAN.capacityWindowS,
  });
  const C = capacity.perSecond;
  log(
    `  C = ${C.toFixed(2)} completions/s (${capacity.perSim.map((s) => `${s.name} ${s.perSecond}`).join(", ")})`,
  );
  if (capacity.perSim.some((s) => s.failed > 0)) warnings.push("some capacity-phase requests failed");
  await drainFleet(fleet, PLAN.pauseSeconds);

  const targets = [];
  if (nginxBinary && !args["skip-nginx"])
    targets.push(
      await startNginx(
        nginxBinary,
        fleet.map((b) => b.port),
        "least_conn;",
      ),
    );
  else log(`nginx skipped: ${args["skip-nginx"] ? "--skip-nginx" : "not installed"}`);
  targets.push(await startFloodgate(fleet, extra));
  if (!replicasSkipped) {
    const redis = await startRedis(redisBinary);
    targets.push(await startReplicas(nginxBinary, fleet, extra, redis));
  } else log(`${REPLICA_TARGET} skipped: ${replicasSkipped}`);
  for (const t of targets) {
    t.dispatcher = newClient();
    await checkTarget(t, t.dispatcher);
  }
  log(`targets up: ${targets.map((t) => `${t.name} ${t.url}`).join(", ")}`);

  // Rates and seeds are fixed per scenario, so both targets get the very same arrivals.
  for (const sc of scenarios) {
    sc.streams.forEach((s, j) => {
      s.rate = s.multiple * C;
      s.seed = PLAN.seed * 1000 + SCENARIOS.indexOf(sc) * 10 + j;
    });
  }
  await drainFleet(fleet, PLAN.pauseSeconds);
  const runs = [];
  for (const sc of scenarios) {
    for (const t of targets) {
      if (t.name === REPLICA_TARGET && !replicaScenarios.includes(sc)) continue;
      const rate = sc.streams.reduce((a, s) => a + s.rate, 0);
      log(`${sc.name} via ${t.name}: ${rate.toFixed(1)} req/s for ${PLAN.arrivalSeconds}s`);
      const run = await runScenario(t, sc, fleet);
      log(`  ${oneLine(run)}`);
      runs.push(run);
    }
  }

  const floodgate = targets.find((t) => t.name === "floodgate");
  const nginx = targets.find((t) => t.name === "nginx");
  const replicated = targets.find((t) => t.name === REPLICA_TARGET);
  // Read before the stop: Redis stops beside the replicas, and what they log then is no run's.
  const replicaLogs = replicated?.replicas.map((r) => ({ name: r.name, ...floodgateLog(r.proc.logPath) }));
  for (const t of targets) await t.dispatcher.close();
  await stopAll();
  const results = {
    meta: {
      date: startedAt.toISOString(),
      runtimeSeconds: (Date.now() - startedAt) / 1000,
      node: process.version,
      nproc: os.availableParallelism(),
      cpuModel:
        /model name\s*:\s*(.*)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? os.cpus()[0]?.model,
      kernel: `${os.type()} ${os.release()}`,
      git: gitDescription(BUILD),
      build: BUILD === ROOT ? null : BUILD,
      nginx: nginx?.version ?? null,
      nginxSkipped: nginx ? null : args["skip-nginx"] ? "--skip-nginx" : "nginx not installed",
      quick: args.quick,
      model: MODEL,
      maxTokens: MAX_TOKENS,
      plan: PLAN,
      fleet: FLEET,
      gatewayConfig: floodgate.yaml,
      gatewayConfigExtra: extraPath ?? null,
      nginxConf: nginx?.conf ?? null,
      floodgateLog: floodgateLog(floodgate.proc.logPath),
      replicas: replicated
        ? {
            target: REPLICA_TARGET,
            count: REPLICAS,
            scenarios: replicaScenarios.map((s) => s.name),
            redis: replicated.redis.version,
            gatewayConfig: replicated.yaml,
            nginxConf: replicated.conf,
            logs: replicaLogs,
          }
        : { skipped: replicasSkipped },
      queueSampleMs: QUEUE_SAMPLE_MS,
      warnings,
    },
    capacity,
    scenarios,
    runs,
  };

  const resultsDir = join(HERE, "results");
  mkdirSync(resultsDir, { recursive: true });
  const stamp = startedAt.toISOString().replace(/[:.]/g, "-");
  const json = `${JSON.stringify(results)}\n`;
  writeFileSync(join(resultsDir, `surge-${stamp}.json`), json);
  writeFileSync(join(resultsDir, "latest.json"), json);
  const summaries = writeReport(results);
  for (const s of summaries)
    log(`${s.scenario.padEnd(9)} ${s.target.padEnd(10)} goodput ${pct(s.total.goodput)}`);
  log(
    `done: bench/surge/REPORT.md, bench/surge/*.svg, ${relative(ROOT, join(resultsDir, `surge-${stamp}.json`))}`,
  );
}

main().then(
  () => process.exit(0),
  async (err) => {
    if (interrupted) return; // the signal handler cleans up and exits
    console.error(err instanceof Error ? err.message : err);
    for (const p of running()) console.error(`--- ${p.name} log ---\n${tail(p.logPath)}`);
    await stopAll();
    process.exit(1);
  },
);
