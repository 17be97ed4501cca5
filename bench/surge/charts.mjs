/**
 * The report's charts, rendered server-side by ECharts to SVG strings (no browser, no canvas).
 * Each function takes the run summaries (analyze.mjs) and returns one SVG.
 */
import * as echarts from "echarts";
import { OUTCOME_LABELS, OUTCOMES } from "./analyze.mjs";

export const LOAD_SCENARIOS = ["1x", "2x", "3x", "10x"];
const TARGET_COLORS = { nginx: "#7f8c8d", floodgate: "#2f6fdf", "floodgate×3": "#8e44ad" };
/** Every scenario, in the order the run takes them. */
const ALL_SCENARIOS = [...LOAD_SCENARIOS, "priority", "fairness"];
const OUTCOME_COLORS = {
  withinSlo: "#2e9d5b",
  late: "#e6a23c",
  fastRefusal: "#8aa4c8",
  slowFailure: "#d64545",
};
const TEXT = { fontFamily: "sans-serif", fontSize: 12 };

/**
 * One chart as a static SVG file. Two changes to what ECharts emits: its <style> block holds
 * only hover rules (useless in an image, and a CDATA section the project's linter cannot parse),
 * so it goes; and a <title> names the chart for screen readers (the linter's a11y rule).
 */
export function render(option, width = 720, height = 400) {
  const chart = echarts.init(null, null, { renderer: "svg", ssr: true, width, height });
  chart.setOption({ animation: false, backgroundColor: "#ffffff", textStyle: TEXT, ...option });
  const svg = chart
    .renderToSVGString()
    .replace(/<style[^>]*><!\[CDATA\[[\s\S]*?\]\]>\s*<\/style>/g, "")
    .replace(/^(<svg[^>]*>)/, `$1<title>${escapeXml(option.title.text)}</title>`);
  chart.dispose();
  return `${svg}\n`;
}

function escapeXml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function targetsOf(summaries) {
  return [...new Set(summaries.map((s) => s.target))];
}

function find(summaries, target, scenario) {
  return summaries.find((s) => s.target === target && s.scenario === scenario);
}

/** 0 to 120%, or further when a value is higher (goodput may pass 100%: see the report). */
const GOODPUT_AXIS = {
  type: "value",
  min: 0,
  max: (extent) => Math.max(120, Math.ceil(extent.max / 20) * 20),
  interval: 20,
  name: "goodput %",
  axisLabel: { formatter: "{value}%" },
};

const pct = (x) => (x === null || x === undefined ? null : Math.round(x * 1000) / 10);

/** (a) Total goodput at 1x, 2x, 3x and 10x of the measured capacity, one line per target. */
export function goodputChart(summaries) {
  const targets = targetsOf(summaries);
  return render({
    title: {
      text: "Goodput vs offered load",
      subtext: "served within SLO / min(offered, C × D)",
      left: "center",
    },
    legend: { bottom: 0, itemGap: 28 },
    grid: { left: 60, right: 30, top: 70, bottom: 60 },
    xAxis: {
      type: "category",
      data: LOAD_SCENARIOS,
      name: "offered load (× C)",
      nameLocation: "middle",
      nameGap: 28,
    },
    yAxis: GOODPUT_AXIS,
    series: targets.map((t, i) => ({
      name: t,
      type: "line",
      symbolSize: 8,
      color: TARGET_COLORS[t],
      // The first target's labels below its points, the others' above and apart sideways: the
      // floodgates' values are close.
      label: {
        show: true,
        formatter: "{c}%",
        position: i === 0 ? "bottom" : "top",
        offset: i === 0 ? [0, 0] : [i === 1 ? -24 : 24, 0],
      },
      data: LOAD_SCENARIOS.map((sc) => pct(find(summaries, t, sc)?.total.goodput)),
    })),
  });
}

/** (b) TTFT p50 and p99 of the served requests vs load, log scale (ms to tens of seconds). */
export function ttftChart(summaries) {
  const targets = targetsOf(summaries);
  const series = [];
  for (const t of targets) {
    for (const [p, key, dash] of [
      ["p50", "ttftP50", "solid"],
      ["p99", "ttftP99", "dashed"],
    ]) {
      series.push({
        name: `${t} ${p}`,
        type: "line",
        symbolSize: 7,
        color: TARGET_COLORS[t],
        lineStyle: { type: dash },
        // The interactive SLO as a line, drawn once.
        markLine:
          series.length === 0
            ? {
                silent: true,
                symbol: "none",
                lineStyle: { color: "#d64545", type: "dotted" },
                label: { formatter: "SLO 2 s", position: "insideEndTop" },
                data: [{ yAxis: 2000 }],
              }
            : undefined,
        data: LOAD_SCENARIOS.map((sc) => {
          const v = find(summaries, t, sc)?.total[key];
          return v === null || v === undefined ? null : Math.max(1, Math.round(v));
        }),
      });
    }
  }
  // Two lines per target: with three targets the legend wraps, so it gets a taller chart.
  const tall = targets.length > 2;
  return render(
    {
      title: { text: "Time to first token of served requests", subtext: "ms, log scale", left: "center" },
      legend: { bottom: 0, itemGap: 28 },
      grid: { left: 70, right: 30, top: 70, bottom: tall ? 110 : 60 },
      xAxis: {
        type: "category",
        data: LOAD_SCENARIOS,
        name: "offered load (× C)",
        nameLocation: "middle",
        nameGap: 28,
      },
      yAxis: { type: "log", name: "TTFT ms", min: 10 },
      series,
    },
    720,
    tall ? 440 : 400,
  );
}

/** (c) Every request's outcome, as shares of the offered requests, per target and scenario. */
export function outcomesChart(summaries) {
  // Top to bottom in the scenarios' order (a category y-axis draws its first entry at the bottom).
  const rows = [...summaries].reverse();
  const labels = rows.map((s) => `${s.target} · ${s.scenario}`);
  return render(
    {
      title: { text: "Outcomes per target and scenario", subtext: "% of offered requests", left: "center" },
      legend: { bottom: 0, itemGap: 28 },
      grid: { left: 140, right: 30, top: 70, bottom: 50 },
      xAxis: { type: "value", min: 0, max: 100, axisLabel: { formatter: "{value}%" } },
      yAxis: { type: "category", data: labels },
      series: OUTCOMES.map((o) => ({
        name: OUTCOME_LABELS[o],
        type: "bar",
        stack: "all",
        color: OUTCOME_COLORS[o],
        barWidth: "65%",
        data: rows.map((s) => (s.total.offered ? pct(s.total[o] / s.total.offered) : 0)),
      })),
    },
    760,
    Math.max(320, 130 + rows.length * 30),
  );
}

/** (d) Each tenant's goodput (and the total) in the priority and fairness mixes, per target. */
export function mixChart(summaries) {
  const targets = targetsOf(summaries);
  const groups = [];
  for (const scenario of ["priority", "fairness"]) {
    const any = summaries.find((s) => s.scenario === scenario);
    if (!any) continue;
    for (const tenant of Object.keys(any.tenants)) groups.push({ scenario, tenant });
    groups.push({ scenario, tenant: null });
  }
  return render({
    title: {
      text: "Goodput per tenant in the mixes",
      subtext: "served within SLO / min(offered, C × D)",
      left: "center",
    },
    legend: { bottom: 0, itemGap: 28 },
    grid: { left: 60, right: 30, top: 70, bottom: 80 },
    xAxis: {
      type: "category",
      data: groups.map((g) => `${g.scenario}\n${g.tenant ?? "total"}`),
      axisLabel: { interval: 0 },
    },
    yAxis: GOODPUT_AXIS,
    series: targets.map((t) => ({
      name: t,
      type: "bar",
      color: TARGET_COLORS[t],
      label: { show: true, position: "top", formatter: "{c}%", fontSize: 10 },
      data: groups.map((g) => {
        const s = find(summaries, t, g.scenario);
        return pct(g.tenant ? s?.tenants[g.tenant]?.goodput : s?.total.goodput);
      }),
    })),
  });
}

/**
 * (e) The deepest queue any simulator held beyond its slots during each run (sampled), per
 * target: what a gateway let pile up at the GPUs instead of in front of them.
 */
export function queueChart(summaries) {
  const targets = targetsOf(summaries);
  const scenarios = ALL_SCENARIOS.filter((sc) => summaries.some((s) => s.scenario === sc));
  return render({
    title: {
      text: "Peak backend queue beyond its slots",
      subtext: "requests waiting at the busiest simulator, sampled during the run",
      left: "center",
    },
    legend: { bottom: 0, itemGap: 28 },
    grid: { left: 60, right: 30, top: 70, bottom: 60 },
    xAxis: { type: "category", data: scenarios, axisLabel: { interval: 0 } },
    yAxis: { type: "value", name: "requests waiting", min: 0 },
    series: targets.map((t, i) => ({
      name: t,
      type: "bar",
      color: TARGET_COLORS[t],
      label: { show: true, position: "top", fontSize: 10 },
      // The three-replica target's bound (2), drawn once.
      markLine:
        i === 0
          ? {
              silent: true,
              symbol: "none",
              lineStyle: { color: "#d64545", type: "dotted" },
              label: { formatter: "2", position: "insideEndTop" },
              data: [{ yAxis: 2 }],
            }
          : undefined,
      data: scenarios.map((sc) => {
        const peak = find(summaries, t, sc)?.peakQueue;
        return peak ? Math.max(...Object.values(peak)) : null;
      }),
    })),
  });
}

/** All five, by file name (written next to REPORT.md). */
export function allCharts(summaries) {
  return {
    "goodput.svg": goodputChart(summaries),
    "ttft.svg": ttftChart(summaries),
    "outcomes.svg": outcomesChart(summaries),
    "mixes.svg": mixChart(summaries),
    "queue.svg": queueChart(summaries),
  };
}
