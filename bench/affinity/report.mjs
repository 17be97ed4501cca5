/**
 * bench/affinity's report: per target the prefix-cache hit rate, first-token times, goodput and
 * the servers' queues beyond their slots; the issue's targets judged on affinity against
 * least_request in the same round; two charts rendered by ECharts to SVG.
 *
 * usage (re-render saved results): node bench/affinity/report.mjs bench/affinity/results/FILE.json
 */
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { percentile, round } from "../surge/analyze.mjs";
import { render } from "../surge/charts.mjs";
import { table } from "../surge/report.mjs";
import {
  APPS,
  BLOCK_CHARS,
  CACHE_PROMPTS,
  MAX_TOKENS,
  PREFILL_TOKENS_PER_SECOND,
  SYSTEM_CHARS,
  ZIPF_EXPONENT,
} from "./workload.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const COLORS = {
  least_request: "#7f8c8d",
  affinity: "#2f6fdf",
  "affinity (loadFactor 1.25)": "#2e9d5b",
  "affinity (ring only)": "#e69f00",
  "nginx least_conn": "#c0392b",
};
/** The target the issue's targets are judged on; the other affinity targets are shown beside it. */
const JUDGED = "affinity";

/** The issue's targets, affinity against least_request in the same round. */
const TARGETS = {
  hitRate: 0.85,
  meanTtftRatio: 0.3,
  goodputRatio: 1.15,
};

export function summarizeRun(run, plan) {
  const counted = run.records.filter((r) => r.tenant !== "warmup");
  const served = counted.filter((r) => r.status === 200 && r.done && !r.error && r.firstToken !== null);
  const ttfts = served.map((r) => r.firstToken - r.at);
  const within = ttfts.filter((t) => t <= plan.sloMs).length;
  const hits = run.servers.reduce((a, s) => a + s.hits, 0);
  const queries = run.servers.reduce((a, s) => a + s.queries, 0);
  const refused = counted.filter((r) => r.status === 429 || r.status === 503).length;
  return {
    target: run.target,
    offered: counted.length,
    served: served.length,
    refused,
    failed: counted.length - served.length - refused,
    withinSlo: within,
    goodput: within / plan.seconds,
    withinShare: counted.length > 0 ? within / counted.length : null,
    ttftMean: ttfts.length ? ttfts.reduce((a, b) => a + b, 0) / ttfts.length : null,
    ttftP50: percentile(ttfts, 50),
    ttftP99: percentile(ttfts, 99),
    ttfts,
    hitRate: queries > 0 ? hits / queries : null,
    servers: run.servers.map((s) => ({ ...s, hitRate: s.queries > 0 ? s.hits / s.queries : null })),
    maxQueued: Math.max(...run.servers.map((s) => s.peakQueued)),
    decisions: run.decisions,
  };
}

/**
 * An affinity target against least_request in the same round. The goodput ceiling is the most
 * the ratio can be: every offered request within the SLO, over least_request's within it.
 */
function judge(round, name = JUDGED) {
  const aff = round.summaries.find((s) => s.target === name);
  const lr = round.summaries.find((s) => s.target === "least_request");
  if (!aff || !lr) return null;
  return {
    hitRate: aff.hitRate,
    meanTtftRatio: aff.ttftMean / lr.ttftMean,
    goodputRatio: aff.goodput / lr.goodput,
    goodputCeiling: lr.withinSlo > 0 ? lr.offered / lr.withinSlo : null,
    lrWithinShare: lr.withinShare,
    maxQueued: aff.maxQueued,
  };
}

/** The middle value; of an even count, the mean of the two middle ones. */
function median(xs) {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);
const ms = (x) => (x === null || x === undefined ? "–" : `${Math.round(x)}`);
const x2 = (x) => (x === null || x === undefined ? "–" : `${x.toFixed(2)}x`);

function spread(values, format) {
  if (values.length < 2) return format(values[0]);
  return `${format(median(values))} (${format(Math.min(...values))} – ${format(Math.max(...values))})`;
}

function cacheChart(rounds) {
  const last = rounds.at(-1).summaries;
  const targets = last.map((s) => s.target);
  return render({
    title: { text: "Prefix-cache hit rate and answers within SLO", left: "center", top: 4 },
    legend: { top: 36 },
    grid: { top: 70, left: 60, right: 20, bottom: 40 },
    xAxis: { type: "category", data: targets },
    yAxis: { type: "value", min: 0, max: 100, name: "%", axisLabel: { formatter: "{value}%" } },
    series: [
      {
        name: "prefix-cache hit rate",
        type: "bar",
        data: last.map((s) => round((s.hitRate ?? 0) * 100, 1)),
        itemStyle: { color: "#2e9d5b" },
        label: { show: true, position: "top", formatter: "{c}%" },
      },
      {
        name: "first token within 2 s",
        type: "bar",
        data: last.map((s) => round((s.withinShare ?? 0) * 100, 1)),
        itemStyle: { color: "#2f6fdf" },
        label: { show: true, position: "top", formatter: "{c}%" },
      },
    ],
  });
}

/** Time to first token, as the share of requests served by then (log time axis). */
function ttftChart(rounds) {
  const last = rounds.at(-1).summaries;
  const series = last.map((s) => {
    const sorted = [...s.ttfts].sort((a, b) => a - b);
    const step = Math.max(1, Math.floor(sorted.length / 200));
    const points = [];
    for (let i = 0; i < sorted.length; i += step)
      points.push([round(sorted[i], 1), round(((i + 1) / s.offered) * 100, 2)]);
    if (sorted.length > 0)
      points.push([round(sorted.at(-1), 1), round((sorted.length / s.offered) * 100, 2)]);
    return {
      name: s.target,
      type: "line",
      showSymbol: false,
      data: points,
      lineStyle: { width: 2 },
      itemStyle: { color: COLORS[s.target] },
    };
  });
  return render({
    title: { text: "Time to first token: share of requests served by then", left: "center", top: 4 },
    legend: { top: 36 },
    grid: { top: 70, left: 60, right: 30, bottom: 50 },
    xAxis: { type: "log", name: "ms after the scheduled send", nameLocation: "middle", nameGap: 30, min: 10 },
    yAxis: { type: "value", min: 0, max: 100, name: "%", axisLabel: { formatter: "{value}%" } },
    series,
  });
}

export function renderReport(results) {
  const plan = results.plan;
  const rounds = results.rounds.map((r) => {
    const summaries = r.runs.map((run) => summarizeRun(run, plan));
    return { ...r, summaries, verdict: judge({ summaries }) };
  });
  const verdicts = rounds.map((r) => r.verdict).filter(Boolean);
  const hit = verdicts.map((v) => v.hitRate);
  const ttft = verdicts.map((v) => v.meanTtftRatio);
  const good = verdicts.map((v) => v.goodputRatio);
  const ceiling = verdicts.map((v) => v.goodputCeiling);
  const lrWithin = verdicts.map((v) => v.lrWithinShare);
  const queued = verdicts.map((v) => v.maxQueued);
  const met = (ok) => (ok ? "met" : "**not met**");
  // The other affinity targets, judged the same way, for comparison.
  const others = [...new Set(rounds.flatMap((r) => r.summaries.map((s) => s.target)))].filter(
    (t) => t.startsWith("affinity") && t !== JUDGED,
  );
  const otherVerdicts = others.map((name) => rounds.map((r) => judge(r, name)).filter(Boolean));
  const otherColumn = (pick, format, ok) =>
    otherVerdicts.map((vs) => {
      const values = vs.map(pick);
      return `${spread(values, format)}, ${met(ok(values)).replace(/\*/g, "")}`;
    });
  const last = rounds.at(-1);
  const lines = [
    "# Prefix affinity benchmark",
    "",
    `Generated by \`npm run bench:affinity\` on ${results.startedAt.slice(0, 10)} (Node ${results.node}), ` +
      `${rounds.length} round${rounds.length === 1 ? "" : "s"}.`,
    "",
    "## The workload",
    "",
    `${APPS} applications, each with its own ${SYSTEM_CHARS.toLocaleString("en")}-character system prompt, chosen by Zipf ` +
      `popularity (exponent ${ZIPF_EXPONENT}); each request adds a user part of about 40 characters and streams a ` +
      `${MAX_TOKENS}-token answer. Three simulators (${plan.fleet.map((b) => `${b.slots}`).join(", ")} slots, weights ` +
      `${plan.fleet.map((b) => b.weight).join(", ")}) cache prompt prefixes in ${BLOCK_CHARS}-character blocks, ` +
      `${plan.cacheBlocks} blocks each (about ${CACHE_PROMPTS} prompts), and prefill at ` +
      `${PREFILL_TOKENS_PER_SECOND.toLocaleString("en")} tokens/s (4 characters a token): an uncached prompt costs ` +
      `${(SYSTEM_CHARS / 4 / PREFILL_TOKENS_PER_SECOND) * 1000} ms of prefill, during which its server's batch makes no other progress. ` +
      `Poisson arrivals at ${plan.load}x the fleet's uncached capacity, measured in the same round ` +
      `(closed loops straight to the servers with prompts nobody shares). Each target starts on a fresh fleet ` +
      `(cold caches); the first ${plan.warmupSeconds} s of arrivals fill the caches and are not counted, the next ` +
      `${plan.seconds} s are. Goodput: answers whose first token came within ${plan.sloMs / 1000} s of the scheduled send, per second. ` +
      "Hit rate: prompt tokens found cached ÷ prompt tokens looked up, from the simulators' counters " +
      "(`vllm:prefix_cache_hits` / `queries`).",
    "",
    "Targets: `least_request` is floodgate with its default balancer. `affinity` adds `affinity: { by: prefix, " +
      `cacheTokens: ${(plan.cacheBlocks * BLOCK_CHARS) / 4}, prefillTokensPerSecond: ${PREFILL_TOKENS_PER_SECOND}, ` +
      "loadFactor: 2 }`: the gateway models each server's prefix cache (what it sent where, as many blocks as a " +
      "server caches) and sends a prompt to the server holding its longest prefix within the load bound, places a " +
      "prompt nobody holds on the least loaded server, and lets a request whose servers are busy wait for them as " +
      "long as recomputing its prefix would take (here about 400 ms). `affinity (loadFactor 1.25)` is the same at " +
      "the default bound; `affinity (ring only)` is `affinity: { by: prefix }` alone (consistent hashing with " +
      "bounded loads, loadFactor 1.25, grace 100ms). All with prefixChars 2048, successors 1, maxConcurrency 8, 8, 4 " +
      "and admission control at its defaults. `nginx least_conn` has the same weights and no slot limit.",
    "",
    "## The targets (affinity against least_request, same round)",
    "",
    table(
      [
        "target",
        "wanted",
        `${JUDGED}${rounds.length > 1 ? " (median, min – max)" : ""}`,
        "",
        ...others.map((o) => `${o}, for comparison`),
      ],
      [
        [
          "prefix-cache hit rate",
          `≥ ${pct(TARGETS.hitRate)}`,
          spread(hit, pct),
          met(median(hit) >= TARGETS.hitRate),
          ...otherColumn(
            (v) => v.hitRate,
            pct,
            (xs) => median(xs) >= TARGETS.hitRate,
          ),
        ],
        [
          "mean first token vs least_request",
          `≤ ${x2(TARGETS.meanTtftRatio)}`,
          spread(ttft, x2),
          met(median(ttft) <= TARGETS.meanTtftRatio),
          ...otherColumn(
            (v) => v.meanTtftRatio,
            x2,
            (xs) => median(xs) <= TARGETS.meanTtftRatio,
          ),
        ],
        [
          "goodput vs least_request",
          `≥ ${x2(TARGETS.goodputRatio)}`,
          spread(good, x2),
          met(median(good) >= TARGETS.goodputRatio),
          ...otherColumn(
            (v) => v.goodputRatio,
            x2,
            (xs) => median(xs) >= TARGETS.goodputRatio,
          ),
        ],
        [
          "requests queued inside a server beyond its slots (peak)",
          "0",
          spread(queued, (x) => String(x)),
          met(Math.max(...queued) === 0),
          ...otherColumn(
            (v) => v.maxQueued,
            (x) => String(x),
            (xs) => Math.max(...xs) === 0,
          ),
        ],
      ],
    ),
    "",
    `The goodput ratio cannot exceed the offered requests over least_request's answers within the SLO: ` +
      `least_request answered ${spread(lrWithin, pct)} within ${plan.sloMs / 1000} s, so the ceiling was ` +
      `${spread(ceiling, x2)}${ceiling.every((c) => c !== null && c < TARGETS.goodputRatio) ? `, below the ${x2(TARGETS.goodputRatio)} target in every round` : ""}.`,
    "",
    "Requests sent away from the server holding their prefix because it was at its load bound (`spilled`, " +
      "share of the affinity decisions, warm-up included): " +
      [JUDGED, ...others]
        .map((name) => {
          const shares = rounds
            .map((r) => r.summaries.find((s) => s.target === name)?.decisions)
            .filter(Boolean)
            .map((d) => (d.spilled ?? 0) / Object.values(d).reduce((a, b) => a + b, 0));
          return `${pct(median(shares))} for \`${name}\``;
        })
        .join(", ") +
      ". At this load (about 8 of the fleet's 20 slots in flight) the default bound, " +
      "ceil(1.25 × (in flight + 1) × weight / total weight), lets the 4-slot server take a request only below 2 or 3 " +
      "in flight and the others below 4 or 5, so a popular prompt leaves the server that holds it while that server " +
      "has free slots, and is cached once more elsewhere.",
    "",
  ];
  rounds.forEach((r, i) => {
    lines.push(
      `## Round ${i + 1}: uncached capacity ${r.capacity.toFixed(2)} requests/s, offered ${r.rate.toFixed(2)}/s`,
      "",
      table(
        [
          "target",
          "offered",
          "within SLO",
          "goodput /s",
          "refused",
          "failed",
          "hit rate",
          "first token mean ms",
          "p50",
          "p99",
          "peak queued beyond slots",
        ],
        r.summaries.map((s) => [
          s.target,
          s.offered,
          `${s.withinSlo} (${pct(s.withinShare)})`,
          s.goodput.toFixed(2),
          s.refused,
          s.failed,
          pct(s.hitRate),
          ms(s.ttftMean),
          ms(s.ttftP50),
          ms(s.ttftP99),
          s.servers.map((x) => x.peakQueued).join(" / "),
        ]),
      ),
      "",
      "Per server (requests counted, hit rate):",
      "",
      table(
        [
          "target",
          ...plan.fleet.map((b) => `${b.name} (${b.slots} slots)`),
          "affinity decisions (warm-up included)",
        ],
        r.summaries.map((s) => [
          s.target,
          ...s.servers.map((x) => `${x.received}, ${pct(x.hitRate)}`),
          s.decisions
            ? Object.entries(s.decisions)
                .map(([k, v]) => `${k} ${v}`)
                .join(", ")
            : "–",
        ]),
      ),
      "",
    );
  });
  lines.push(
    "![hit rate and answers within SLO](cache.svg)",
    "",
    "![time to first token](ttft.svg)",
    "",
    "## The configs",
    "",
    ...last.runs.flatMap((run) => [`\`${run.target}\`:`, "", "```", run.config.trim(), "```", ""]),
  );
  return {
    markdown: `${lines.join("\n")}\n`,
    charts: { "cache.svg": cacheChart(rounds), "ttft.svg": ttftChart(rounds) },
  };
}

export function writeReport(results, reportPath = join(HERE, "REPORT.md")) {
  const { markdown, charts } = renderReport(results);
  writeFileSync(reportPath, markdown);
  for (const [name, svg] of Object.entries(charts)) writeFileSync(join(dirname(reportPath), name), svg);
  return reportPath;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: node bench/affinity/report.mjs RESULTS.json");
    process.exit(2);
  }
  console.log(writeReport(JSON.parse(readFileSync(file, "utf8"))));
}
