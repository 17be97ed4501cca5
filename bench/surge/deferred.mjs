#!/usr/bin/env node
/**
 * The surge benchmark's deferred-work scenario: interactive traffic at half the fleet's measured
 * capacity C, and at the same moment a batch of 2,000 chat completions submitted through the
 * OpenAI Batch API (one JSONL file, one batch). What it shows: the interactive tenant keeps its
 * SLO (first token within 2 s) as if the batch were not there, the batch completes, and the
 * fleet, half idle under the interactive load alone, is kept busy by the batch until it is done.
 *
 * Two phases on the same fleet and the same floodgate, with the same interactive arrivals:
 *   alone   interactive at 0.5x C, nothing else (the baseline of the same run)
 *   batch   interactive at 0.5x C, the batch submitted at the first arrival
 * Every 250 ms the simulators' running sequences are read (the fleet's utilisation: running ÷
 * slots) and, in the batch phase, the batch's request_counts. The batch phase ends when the
 * batch does (or after --batch-timeout seconds).
 *
 * usage: node bench/surge/deferred.mjs [--quick] [--lines N] [--duration SECONDS] [--seed N]
 *                                      [--batch-timeout SECONDS]
 * (`npm run bench:deferred` builds first and runs this.) Writes bench/surge/DEFERRED.md and
 * bench/surge/deferred.svg; raw results go to bench/surge/results/ (git-ignored).
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { stringify as toYaml } from "yaml";
import { freePort, running, setUp, sleep, startServer, stopAll, tail, waitReady } from "../lib/processes.mjs";
import { OUTCOMES, outcome, percentile, round } from "./analyze.mjs";
import { render } from "./charts.mjs";
import { drain, FLEET, fleetStats, measureCapacity, startFleet } from "./fleet.mjs";
import { MAX_TOKENS, MODEL, newClient, openLoop, poissonTimes } from "./load.mjs";
import { pct, table } from "./report.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const MAIN = join(ROOT, "dist/src/main.js");
const NODE_FLAGS = ["--max-semi-space-size=64"];

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    lines: { type: "string" },
    duration: { type: "string" },
    seed: { type: "string", default: "1" },
    "batch-timeout": { type: "string" },
  },
});
const PLAN = {
  lines: Number(args.lines ?? (args.quick ? 300 : 2000)),
  /** Seconds of interactive arrivals per phase. */
  arrivalSeconds: Number(args.duration ?? (args.quick ? 15 : 60)),
  interactiveMultiple: 0.5,
  capacityWarmupS: args.quick ? 1 : 2,
  capacityWindowS: args.quick ? 8 : 20,
  stragglerSeconds: 20,
  pauseSeconds: 3,
  batchTimeoutSeconds: Number(args["batch-timeout"] ?? 900),
  sampleMs: 250,
  seed: Number(args.seed),
};
/** The targets of this scenario (the issue's): interactive within SLO, and the batch done. */
const GOALS = { interactiveWithinSlo: 0.99 };

const TENANTS = { interactive: "interactive", batch: "batch" };
const keyOf = (tenant) => `deferred-${tenant}-key-0123456789abcdef`;
const SLOTS = FLEET.reduce((a, b) => a + b.slots, 0);

const startedAt = new Date();
const log = (msg) => console.log(`[${((Date.now() - startedAt) / 1000).toFixed(0).padStart(4)}s] ${msg}`);

function gatewayConfig(port, adminPort, fleet) {
  return toYaml({
    listen: { host: "127.0.0.1", port },
    admin: { enabled: true, host: "127.0.0.1", port: adminPort },
    server: { shutdownGrace: "2s" },
    log: { level: "warn", accessLog: false },
    auth: { keys: Object.keys(TENANTS).map((t) => ({ key: keyOf(t), tenant: t })) },
    tenants: Object.fromEntries(Object.entries(TENANTS).map(([t, priority]) => [t, { priority }])),
    pools: {
      surge: {
        models: [MODEL],
        backends: fleet.map((b) => ({ name: b.name, url: b.url, maxConcurrency: b.slots })),
      },
    },
  });
}

/** The batch's input: `lines` chat completions of the same length as the interactive ones. */
function batchFile(lines) {
  const out = [];
  for (let i = 0; i < lines; i++) {
    out.push(
      JSON.stringify({
        custom_id: `line-${i}`,
        method: "POST",
        url: "/v1/chat/completions",
        body: {
          model: MODEL,
          max_tokens: MAX_TOKENS,
          messages: [{ role: "user", content: `Summarise report number ${i}.` }],
        },
      }),
    );
  }
  return `${out.join("\n")}\n`;
}

async function api(url, path, init = {}) {
  const res = await fetch(`${url}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${keyOf("batch")}`, ...(init.headers ?? {}) },
    signal: AbortSignal.timeout(60_000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${init.method ?? "GET"} ${path}: ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text);
}

/** Uploads the file and creates the batch; returns the batch and when each step answered. */
async function submitBatch(url, lines, clock) {
  const form = new FormData();
  form.append("purpose", "batch");
  form.append("file", new Blob([batchFile(lines)], { type: "application/jsonl" }), "deferred.jsonl");
  const file = await api(url, "/v1/files", { method: "POST", body: form });
  const uploadedAt = clock();
  const batch = await api(url, "/v1/batches", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      input_file_id: file.id,
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    }),
  });
  return { file, batch, uploadedAt, createdAt: clock() };
}

const DONE = new Set(["completed", "failed", "expired", "cancelled"]);

/**
 * Samples the fleet's running sequences every sampleMs, and the batch's counts once `batch.id`
 * is known (one poll at a time), until stop() is called. Samples: { t (ms), running,
 * completed, failed, status } (the batch's fields null before it exists).
 */
function sampler(fleet, clock, batch) {
  const samples = [];
  let stopped = false;
  let polling = false;
  const loop = (async () => {
    while (!stopped) {
      const t = clock();
      const stats = await fleetStats(fleet).catch(() => null);
      if (batch.id !== undefined && !polling) {
        polling = true;
        api(batch.url, `/v1/batches/${batch.id}`)
          .then((b) => {
            batch.last = b;
          })
          .catch(() => {})
          .finally(() => {
            polling = false;
          });
      }
      if (stats)
        samples.push({
          t,
          running: stats.running,
          completed: batch.last?.request_counts?.completed ?? null,
          failed: batch.last?.request_counts?.failed ?? null,
          status: batch.last?.status ?? null,
        });
      await sleep(PLAN.sampleMs);
    }
  })();
  return async () => {
    stopped = true;
    await loop;
    return samples;
  };
}

async function phase(name, target, fleet, arrivals, withBatch) {
  const t0 = performance.now();
  const clock = () => Math.round((performance.now() - t0) * 10) / 10;
  const before = await fleetStats(fleet);
  const batch = { url: target.url, id: undefined, last: undefined };
  const stopSampling = sampler(fleet, clock, batch);
  const loop = openLoop({
    dispatcher: target.dispatcher,
    url: target.url,
    arrivals,
    stragglerMs: PLAN.stragglerSeconds * 1000,
  });
  let submitted;
  if (withBatch) {
    submitted = await submitBatch(target.url, PLAN.lines, clock);
    batch.id = submitted.batch.id;
    const deadline = Date.now() + PLAN.batchTimeoutSeconds * 1000;
    while (!DONE.has(batch.last?.status) && Date.now() < deadline) await sleep(1000);
  }
  const { records } = await loop;
  const samples = await stopSampling();
  const finalBatch = withBatch ? await api(target.url, `/v1/batches/${batch.id}`) : undefined;
  await drain(fleet, PLAN.pauseSeconds);
  const after = await fleetStats(fleet);
  if (target.proc.exited)
    throw new Error(`floodgate exited (${target.proc.exitCode}):\n${tail(target.proc.logPath)}`);
  return {
    name,
    records,
    samples,
    batch: finalBatch
      ? {
          id: finalBatch.id,
          status: finalBatch.status,
          counts: finalBatch.request_counts,
          uploadedAt: submitted.uploadedAt,
          createdAt: submitted.createdAt,
          endedAt: lastChange(samples) ?? clock(),
          output: await outputFile(target.url, finalBatch.output_file_id),
        }
      : null,
    simDelta: { received: after.received - before.received, completed: after.completed - before.completed },
  };
}

/** The output file's lines: how many, distinct custom_ids, answered 200. */
async function outputFile(url, id) {
  if (!id) return null;
  const res = await fetch(`${url}/v1/files/${id}/content`, {
    headers: { authorization: `Bearer ${keyOf("batch")}` },
    signal: AbortSignal.timeout(60_000),
  });
  const lines = (await res.text())
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));
  return {
    lines: lines.length,
    distinctIds: new Set(lines.map((l) => l.custom_id)).size,
    status200: lines.filter((l) => l.response?.status_code === 200).length,
  };
}

/** The sample time at which the batch's counts last changed: when its last line ended. */
function lastChange(samples) {
  let at;
  let prev;
  for (const s of samples) {
    const n = (s.completed ?? 0) + (s.failed ?? 0);
    if (prev !== undefined && n !== prev) at = s.t;
    prev = n;
  }
  return at;
}

function utilisation(samples, from, to) {
  const inside = samples.filter((s) => s.t >= from && s.t <= to);
  if (inside.length === 0) return { mean: null, busy90: null };
  const mean = inside.reduce((a, s) => a + s.running, 0) / inside.length / SLOTS;
  const busy90 = inside.filter((s) => s.running >= 0.9 * SLOTS).length / inside.length;
  return { mean, busy90 };
}

function summarizePhase(p) {
  const ttft = p.records
    .filter((r) => outcome(r) !== "slowFailure" && r.firstToken !== null)
    .map((r) => r.firstToken - r.at);
  const windowEnd = PLAN.arrivalSeconds * 1000;
  return {
    name: p.name,
    offered: p.records.length,
    outcomes: Object.fromEntries(OUTCOMES.map((o) => [o, p.records.filter((r) => outcome(r) === o).length])),
    ttftP50: percentile(ttft, 50),
    ttftP99: percentile(ttft, 99),
    utilArrivals: utilisation(p.samples, 0, windowEnd),
    utilBatch: p.batch ? utilisation(p.samples, 0, p.batch.endedAt) : null,
    batch: p.batch,
  };
}

function chart(phases) {
  const series = [];
  for (const p of phases) {
    series.push({
      name: `fleet utilisation, ${p.name}`,
      type: "line",
      showSymbol: false,
      lineStyle: { width: p.name === "batch" ? 2 : 1 },
      data: p.samples.map((s) => [round(s.t / 1000, 2), round((100 * s.running) / SLOTS, 1)]),
    });
  }
  const withBatch = phases.find((p) => p.batch);
  if (withBatch) {
    series.push({
      name: "batch lines done (right axis)",
      type: "line",
      yAxisIndex: 1,
      showSymbol: false,
      lineStyle: { type: "dashed" },
      data: withBatch.samples
        .filter((s) => s.completed !== null)
        .map((s) => [round(s.t / 1000, 2), (s.completed ?? 0) + (s.failed ?? 0)]),
    });
  }
  return render(
    {
      title: {
        text: "Fleet utilisation: interactive at 0.5x alone, and with a batch beside it",
        left: "center",
        textStyle: { fontSize: 14 },
      },
      legend: { top: 30 },
      grid: { top: 80, left: 60, right: 70, bottom: 50 },
      xAxis: { type: "value", name: "seconds", nameLocation: "middle", nameGap: 28 },
      yAxis: [
        { type: "value", min: 0, max: 100, name: "running ÷ slots %" },
        { type: "value", min: 0, name: "lines done" },
      ],
      series,
    },
    820,
    420,
  );
}

function report(results) {
  const [alone, batch] = results.summaries;
  const b = batch.batch;
  const met = (ok) => (ok ? "met" : "**not met**");
  const within = (s) => s.outcomes.withinSlo / s.offered;
  const batchSeconds = b ? (b.endedAt - (b.createdAt ?? 0)) / 1000 : null;
  const lines = [
    "# Surge benchmark: deferred work beside interactive traffic",
    "",
    `Written by \`npm run bench:deferred\` (bench/surge/deferred.mjs) on ${results.meta.date.slice(0, 10)} (Node ${results.meta.node}, ${results.meta.nproc} cores); do not edit by hand.${results.meta.quick ? " This was a `--quick` run: numbers for trying changes only." : ""}`,
    "",
    "## The scenario",
    "",
    `The surge fleet (three simulators, ${FLEET.map((f) => f.slots).join(", ")} slots, ${SLOTS} in all) behind one floodgate with its defaults (admission control, jobs at the \`batch\` band). Its capacity C was measured first in the same run: ${results.capacity.perSecond.toFixed(2)} completions/s of ${MAX_TOKENS}-token streams. Tenant \`interactive\` (priority interactive) streams chat completions as Poisson arrivals at ${PLAN.interactiveMultiple}x C for ${PLAN.arrivalSeconds} s; its SLO is the first token within 2 s of the scheduled send. In the second phase, at the first arrival, tenant \`batch\` (priority batch) uploads a JSONL file of ${PLAN.lines.toLocaleString("en-US")} chat completions of the same length and creates one batch on it through the OpenAI Batch API. Utilisation is the simulators' running sequences ÷ their slots, read every ${PLAN.sampleMs} ms.`,
    "",
    "## The targets",
    "",
    table(
      ["target", "wanted", "measured", ""],
      [
        [
          "interactive within SLO, with the batch",
          `≥ ${pct(GOALS.interactiveWithinSlo)}`,
          `${pct(within(batch))} (alone: ${pct(within(alone))})`,
          met(within(batch) >= GOALS.interactiveWithinSlo),
        ],
        [
          "the batch completes",
          `${PLAN.lines.toLocaleString("en-US")} lines, status completed`,
          b
            ? `${b.status}, ${b.counts?.completed ?? 0} completed, ${b.counts?.failed ?? 0} failed`
            : "no batch",
          met(b?.status === "completed" && b.counts?.completed === PLAN.lines),
        ],
      ],
    ),
    "",
    "## The phases",
    "",
    table(
      [
        "phase",
        "interactive offered",
        "within SLO",
        "late",
        "refused",
        "failed",
        "first token p50 ms",
        "p99 ms",
        "utilisation while arrivals last",
        "utilisation until the batch ended",
      ],
      results.summaries.map((s) => [
        s.name,
        s.offered,
        `${s.outcomes.withinSlo} (${pct(within(s))})`,
        s.outcomes.late,
        s.outcomes.fastRefusal,
        s.outcomes.slowFailure,
        s.ttftP50 === null ? "–" : Math.round(s.ttftP50),
        s.ttftP99 === null ? "–" : Math.round(s.ttftP99),
        pct(s.utilArrivals.mean),
        s.utilBatch ? `${pct(s.utilBatch.mean)} (≥ 90% busy ${pct(s.utilBatch.busy90)} of the time)` : "–",
      ]),
    ),
    "",
  ];
  if (b) {
    lines.push(
      `The batch: file uploaded ${(b.uploadedAt / 1000).toFixed(1)} s and batch created ${(b.createdAt / 1000).toFixed(1)} s after the first arrival; its last line ended at ${(b.endedAt / 1000).toFixed(1)} s, ${batchSeconds.toFixed(1)} s after creation (${(PLAN.lines / batchSeconds).toFixed(1)} lines/s, against C − 0.5x C = ${(results.capacity.perSecond * (1 - PLAN.interactiveMultiple)).toFixed(1)}/s left by the interactive load while it lasts). Output file: ${b.output ? `${b.output.lines} lines, ${b.output.distinctIds} distinct custom_ids, ${b.output.status200} with status 200` : "none"}.`,
      "",
    );
  }
  lines.push(
    "![Fleet utilisation over time](deferred.svg)",
    "",
    "## The config",
    "",
    "```yaml",
    results.meta.gatewayConfig.trim(),
    "```",
    "",
  );
  return lines.join("\n");
}

async function main() {
  if (!existsSync(MAIN)) throw new Error("dist/src/main.js is missing: run `npm run build` first");
  const tmp = setUp("floodgate-deferred-");
  const fleet = await startFleet(MAIN, ROOT);
  log(`fleet up: ${fleet.map((b) => `${b.name} ${b.slots} slots`).join(", ")}`);
  const capacity = await measureCapacity(fleet, {
    warmupS: PLAN.capacityWarmupS,
    windowS: PLAN.capacityWindowS,
  });
  const C = capacity.perSecond;
  log(`C = ${C.toFixed(2)} completions/s`);
  await drain(fleet, PLAN.pauseSeconds);

  const port = await freePort();
  const adminPort = await freePort();
  const yaml = gatewayConfig(port, adminPort, fleet);
  const file = join(tmp, "floodgate.yaml");
  writeFileSync(file, yaml);
  const proc = startServer("floodgate", process.execPath, [...NODE_FLAGS, MAIN, "--config", file], ROOT);
  const url = `http://127.0.0.1:${port}`;
  await waitReady(proc, `${url}/healthz`);
  const target = { url, proc, dispatcher: newClient() };

  const arrivals = poissonTimes(PLAN.interactiveMultiple * C, PLAN.arrivalSeconds, PLAN.seed * 1000 + 7).map(
    (at) => ({ at, tenant: "interactive", authorization: `Bearer ${keyOf("interactive")}` }),
  );
  const phases = [];
  for (const [name, withBatch] of [
    ["alone", false],
    ["batch", true],
  ]) {
    log(
      `${name}: interactive ${(PLAN.interactiveMultiple * C).toFixed(1)} req/s for ${PLAN.arrivalSeconds} s${withBatch ? `, a batch of ${PLAN.lines} lines at the start` : ""}`,
    );
    const p = await phase(name, target, fleet, arrivals, withBatch);
    const within = p.records.filter((r) => outcome(r) === "withinSlo").length;
    log(
      `  interactive ${within}/${p.records.length} within SLO${p.batch ? `; batch ${p.batch.status} ${JSON.stringify(p.batch.counts)}` : ""}`,
    );
    phases.push(p);
  }
  await target.dispatcher.close();
  await stopAll();

  const results = {
    meta: {
      date: startedAt.toISOString(),
      node: process.version,
      nproc: os.availableParallelism(),
      quick: args.quick,
      plan: PLAN,
      gatewayConfig: yaml,
    },
    capacity,
    phases,
  };
  results.summaries = phases.map((p) => summarizePhase(p));
  const resultsDir = join(HERE, "results");
  mkdirSync(resultsDir, { recursive: true });
  writeFileSync(join(resultsDir, "deferred-latest.json"), `${JSON.stringify(results)}\n`);
  writeFileSync(join(HERE, "deferred.svg"), chart(phases));
  const reportPath = join(HERE, "DEFERRED.md");
  writeFileSync(reportPath, report(results));
  const biome = join(ROOT, "node_modules/.bin/biome");
  if (existsSync(biome)) spawnSync(biome, ["format", "--write", reportPath], { cwd: ROOT, stdio: "ignore" });
  log("done: bench/surge/DEFERRED.md, bench/surge/deferred.svg");
}

main().then(
  () => process.exit(0),
  async (err) => {
    console.error(err instanceof Error ? err.stack : err);
    for (const p of running()) console.error(`--- ${p.name} log ---\n${tail(p.logPath)}`);
    await stopAll();
    process.exit(1);
  },
);
