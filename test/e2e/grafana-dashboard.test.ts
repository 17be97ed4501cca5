/**
 * deploy/grafana: the dashboard's structure (unique ids, a data source, targets, a place on the
 * grid and a unit for every panel; the pool filter on every selector of a metric with a pool
 * label) and its provisioning files; then every panel's query on a real Prometheus scraping a
 * real gateway and its simulators through a surge: served streams and buffered answers, a
 * one-slot pool shedding 503 queue_full behind a one-place queue, a model behind a rate limit
 * (429), cache hits, a backend whose breaker opens, one ejected for refusing connections, and
 * the engines' vLLM metrics read by load signals. Each query, with Grafana's macros replaced
 * by what Grafana would send, must succeed and return at least one series with a number.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { type SimServer, startSim } from "../../src/sim/index.js";
import { eventually, sleep } from "../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../helpers/gateway.js";
import { freePort } from "../helpers/ports.js";
import { PROMETHEUS_BIN, type RunningPrometheus, startPrometheus } from "../helpers/prometheus.js";
import { postStream } from "../helpers/sse.js";

const DIR = resolve("deploy/grafana");

interface Target {
  refId: string;
  expr: string;
  datasource?: { type?: string; uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos?: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
  fieldConfig?: { defaults?: { unit?: string } };
}
interface Variable {
  name: string;
  type: string;
  query: unknown;
  definition?: string;
  datasource?: { type?: string; uid?: string };
  current?: { value?: unknown };
  includeAll?: boolean;
  allValue?: string;
}
interface Dashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: Panel[];
  templating: { list: Variable[] };
}

const dashboard = JSON.parse(readFileSync(resolve(DIR, "floodgate.json"), "utf8")) as Dashboard;
const datasources = parse(readFileSync(resolve(DIR, "provisioning/datasources/prometheus.yml"), "utf8")) as {
  datasources: { name: string; uid: string; type: string; url: string; isDefault?: boolean }[];
};
const providers = parse(readFileSync(resolve(DIR, "provisioning/dashboards/floodgate.yml"), "utf8")) as {
  providers: { type: string; options: { path: string } }[];
};

/** Every panel, rows' panels included. */
function walk(list: Panel[]): Panel[] {
  return list.flatMap((p) => [p, ...walk(p.panels ?? [])]);
}
const all = walk(dashboard.panels);
const graphs = all.filter((p) => p.type !== "row");
const targets = graphs.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, ...t })));

/** The window $__rate_interval stands for: ten 1 s scrapes, as Grafana's 4 × scrape interval at least. */
const WINDOW = "10s";

/** A target's expression as Grafana sends it, for the pool variable set to All. */
function substitute(expr: string): string {
  return expr
    .replace(/\$\{?__rate_interval\}?/g, WINDOW)
    .replace(/\$\{?__interval\}?/g, "1s")
    .replace(/\$\{?__range\}?/g, "1m")
    .replace(/\$\{pool(?::\w+)?\}|\$pool\b/g, ".*");
}

/** Metrics whose series carry a pool label (the README's catalogue). */
const POOLED =
  /^floodgate_(requests_total|request_duration|time_to_first_token|time_per_output_token|tokens_total|overhead|upstream_|retry_budget|backend_|outlier_|breaker_|admission_|cache_requests)/;

describe("the dashboard JSON", () => {
  it("is the floodgate dashboard, with a data source and a pool variable", () => {
    expect(dashboard.uid).toBe("floodgate");
    expect(dashboard.title).toBe("floodgate");
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(39);
    const vars = new Map(dashboard.templating.list.map((v) => [v.name, v]));
    expect(vars.get("datasource")).toMatchObject({ type: "datasource", query: "prometheus" });
    const pool = vars.get("pool");
    expect(pool).toMatchObject({
      type: "query",
      definition: "label_values(floodgate_backend_slots, pool)",
      datasource: { type: "prometheus", uid: "${datasource}" },
      includeAll: true,
      allValue: ".*",
    });
    expect(JSON.stringify(pool?.query)).toContain("label_values(floodgate_backend_slots, pool)");
  });

  it("gives every panel a unique id, a place, and every graph a data source, targets and a unit", () => {
    const ids = all.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(graphs.length).toBeGreaterThan(20);
    const problems: string[] = [];
    for (const p of all) {
      const g = p.gridPos;
      if (!g || ![g.x, g.y, g.w, g.h].every(Number.isInteger) || g.w < 1 || g.h < 1 || g.x + g.w > 24) {
        problems.push(`${p.title}: gridPos ${JSON.stringify(g)}`);
      }
      if (p.type === "row") continue;
      if (!["timeseries", "stat", "gauge"].includes(p.type)) problems.push(`${p.title}: type ${p.type}`);
      if (p.datasource?.type !== "prometheus" || p.datasource.uid !== "${datasource}") {
        problems.push(`${p.title}: datasource ${JSON.stringify(p.datasource)}`);
      }
      if ((p.targets ?? []).length === 0) problems.push(`${p.title}: no targets`);
      const refIds = (p.targets ?? []).map((t) => t.refId);
      if (new Set(refIds).size !== refIds.length) problems.push(`${p.title}: refIds ${refIds}`);
      for (const t of p.targets ?? []) {
        if (!t.expr) problems.push(`${p.title} [${t.refId}]: no expr`);
        if (t.datasource?.uid !== "${datasource}") problems.push(`${p.title} [${t.refId}]: datasource`);
      }
      if (!p.fieldConfig?.defaults?.unit) problems.push(`${p.title}: no unit`);
    }
    expect(problems).toEqual([]);
  });

  it("lays the panels out without overlaps", () => {
    const placed = dashboard.panels.map((p) => ({
      title: p.title,
      ...(p.gridPos ?? { x: 0, y: 0, w: 0, h: 0 }),
    }));
    const overlaps: string[] = [];
    placed.forEach((a, i) => {
      for (const b of placed.slice(i + 1)) {
        if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h) {
          overlaps.push(`${a.title} / ${b.title}`);
        }
      }
    });
    expect(overlaps).toEqual([]);
  });

  it("filters every selector of a metric with a pool label by $pool, and uses $__rate_interval", () => {
    const unfiltered: string[] = [];
    for (const t of targets) {
      for (const m of t.expr.matchAll(/(?<![\w:])(floodgate_[a-z0-9_]+)(?![\w:])(\{[^}]*\})?/g)) {
        if (POOLED.test(m[1] as string) && !(m[2] ?? "").includes('pool=~"$pool"')) {
          unfiltered.push(`${t.panel} [${t.refId}]: ${m[0]}`);
        }
      }
      if (/\[\d+[smh]\]/.test(t.expr)) unfiltered.push(`${t.panel} [${t.refId}]: fixed window`);
    }
    expect(unfiltered).toEqual([]);
    // What the brief asks to see, by metric.
    const exprs = targets.map((t) => t.expr).join("\n");
    for (const name of [
      "floodgate_requests_total",
      "floodgate_time_to_first_token_seconds_bucket",
      "floodgate_time_per_output_token_seconds_bucket",
      "floodgate_request_duration_seconds_bucket",
      "floodgate_tokens_total",
      "floodgate_backend_in_flight",
      "floodgate_backend_slots",
      "floodgate_backend_engine_waiting",
      "floodgate_backend_engine_kv_cache_usage_ratio",
      "floodgate_admission_queue_depth",
      "floodgate_admission_wait_seconds_bucket",
      "floodgate_admission_decisions_total",
      "floodgate_cache_requests_total",
      "floodgate_ratelimit_decisions_total",
      "floodgate_store_degraded",
      'floodgate_breaker_state{pool=~"$pool", state="open"}',
      "floodgate_outlier_ejections_total",
      "floodgate_overhead_seconds_bucket",
    ]) {
      expect(exprs, name).toContain(name);
    }
  });

  it("is provisioned: the data source the variable defaults to, and the folder compose mounts", () => {
    const current = dashboard.templating.list.find((v) => v.name === "datasource")?.current?.value;
    const ds = datasources.datasources.find((d) => d.uid === current);
    expect(ds).toMatchObject({ type: "prometheus", url: "http://prometheus:9090", isDefault: true });
    expect(providers.providers).toEqual([
      expect.objectContaining({
        type: "file",
        options: expect.objectContaining({ path: "/var/lib/grafana/dashboards" }),
      }),
    ]);
  });
});

/**
 * A gateway with two pools: `main` (one backend of one slot, a queue of one, a cache, load
 * signals), and `flaky` (a good backend, one failing every request whose breaker opens, one
 * refusing connections that outlier detection ejects), with a rate-limited model. Traffic runs
 * in rounds until the end, so every counter grows between scrapes.
 */
describe.skipIf(!PROMETHEUS_BIN)("every panel on a real Prometheus scraping a surge", () => {
  let sims: SimServer[] = [];
  let gw: RunningGateway | undefined;
  let prometheus: RunningPrometheus | undefined;
  let stopped = false;
  let traffic: Promise<void> = Promise.resolve();
  const statuses = new Map<string, number>();

  beforeAll(async () => {
    const models = ["m", "m-flaky", "m-limited"];
    const timing = { prefillMsPerToken: 0, decodeMsPerSeq: 0, decodeStepMs: 15 };
    sims = await Promise.all([
      startSim({ models, ...timing }),
      startSim({ models, ...timing }),
      startSim({ models, ...timing, faults: { errorRate: 1, errorStatus: 503 } }),
    ]);
    const [a, good, bad] = sims as [SimServer, SimServer, SimServer];
    const deadPort = await freePort();
    gw = await startGateway(`rateLimits:
  - { name: limited-model, by: global, models: [m-limited], rate: 1, per: 1h }
pools:
  main:
    models: [m]
    backends: [{ url: "${a.url}", name: a, engine: vllm, maxConcurrency: 1 }]
    admission: { bands: { interactive: { maxQueue: 1 } } }
    cache: { enabled: true }
    loadSignals: { interval: 200ms }
  flaky:
    models: [m-flaky, m-limited]
    backends:
      - { url: "${good.url}", name: good, engine: vllm }
      - { url: "${bad.url}", name: bad, engine: vllm }
      - { url: "http://127.0.0.1:${deadPort}", name: dead }
    circuitBreaker: { volumeThreshold: 3, resetTimeout: 5m }
    outlierDetection: { consecutive5xx: 1000, consecutiveGatewayFailure: 1000, maxEjectionPercent: 100, baseEjectionTime: 5m }
    loadSignals: { interval: 200ms }
`);
    const g = gw;
    const count = (key: string) => statuses.set(key, (statuses.get(key) ?? 0) + 1);
    const body = (model: string, extra: Record<string, unknown> = {}) => ({
      model,
      messages: [{ role: "user", content: "How is the surge?" }],
      max_tokens: 8,
      ...extra,
    });
    const post = async (model: string, extra: Record<string, unknown> = {}) => {
      const res = await request(`${g.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body(model, extra)),
      });
      await res.body.dump();
      count(`${model} ${res.statusCode}${res.headers["x-floodgate-cache"] === "HIT" ? " hit" : ""}`);
    };
    const stream = async () => {
      const res = await postStream(
        `${g.url}/v1/chat/completions`,
        body("m", { stream: true, temperature: 0.7 }),
      );
      count(`m stream ${res.status}`);
    };
    // The answer later rounds get from the cache, stored while main's slot is free.
    await post("m", { temperature: 0 });
    // Each round: three streams and a buffered answer for main's one slot and one queue place
    // (one served, one after a wait, the rest shed), a cache hit, two for flaky (retried off
    // the failing backends), one for the limited model.
    const round = () =>
      Promise.all([
        stream(),
        stream(),
        stream(),
        post("m", { temperature: 0.7 }),
        post("m", { temperature: 0 }),
        post("m-flaky"),
        post("m-flaky"),
        post("m-limited"),
      ]);
    traffic = (async () => {
      while (!stopped) {
        await round().catch(() => undefined);
        await sleep(50);
      }
    })();
    prometheus = await startPrometheus({
      targets: [new URL(g.adminUrl).host, ...sims.map((s) => new URL(s.url).host)],
    });
  }, 30_000);

  afterAll(async () => {
    stopped = true;
    await traffic;
    await prometheus?.close();
    await gw?.close();
    await Promise.all(sims.map((s) => s.close()));
  });

  it("answers every panel's query with series, once two scrapes are in", async () => {
    const prom = prometheus as RunningPrometheus;
    await eventually(
      async () => {
        const up = await prom.query("min(count_over_time(up[1m]))");
        return Number(up[0]?.value[1]) >= 2;
      },
      { timeout: 30_000, interval: 500, what: "two scrapes of every target" },
    );
    // The surge was what the panels are about.
    await eventually(() => (statuses.get("m 503") ?? 0) + (statuses.get("m stream 503") ?? 0) > 0, {
      timeout: 20_000,
      what: "main to shed",
    });
    expect(statuses.get("m-limited 429")).toBeGreaterThan(0);
    expect(statuses.get("m 200 hit")).toBeGreaterThan(0);
    expect(statuses.get("m stream 200")).toBeGreaterThan(0);

    let failures: string[] = [];
    await eventually(
      async () => {
        failures = [];
        for (const t of targets) {
          const expr = substitute(t.expr);
          try {
            const result = await prom.query(expr);
            if (result.length === 0) failures.push(`${t.panel} [${t.refId}]: no series for ${expr}`);
            else if (!result.some((s) => Number.isFinite(Number(s.value[1])))) {
              failures.push(`${t.panel} [${t.refId}]: only NaN for ${expr}`);
            }
          } catch (error) {
            failures.push(`${t.panel} [${t.refId}]: ${(error as Error).message}`);
          }
        }
        expect(failures, `panels without data:\n${failures.join("\n")}`).toEqual([]);
        return true;
      },
      { timeout: 40_000, interval: 1000, what: "every panel to have data" },
    );
    expect(targets.length).toBeGreaterThan(30);
  }, 60_000);

  it("shows the faults: an open breaker, an ejection, shedding and the limit in their panels", async () => {
    const prom = prometheus as RunningPrometheus;
    const open = await prom.query('floodgate_breaker_state{state="open"} == 1');
    // The failing backend's; the refusing one's may open too, from its connects before ejection.
    const opened = open.map((s) => `${s.metric.pool}/${s.metric.backend}`);
    expect(opened).toContain("flaky/bad");
    expect(opened.filter((b) => !b.startsWith("flaky/"))).toEqual([]);
    const ejected = await prom.query("floodgate_outlier_ejections_total");
    expect(ejected.map((s) => `${s.metric.pool}/${s.metric.backend}`)).toEqual(["flaky/dead"]);
    const shed = await prom.query(
      `sum(increase(floodgate_requests_total{code="503", error=~"queue_.*|no_backend_available"}[1m]))`,
    );
    expect(Number(shed[0]?.value[1])).toBeGreaterThan(0);
    const limited = await prom.query('floodgate_ratelimit_decisions_total{decision="limited"}');
    expect(limited.map((s) => s.metric.limit)).toEqual(["limited-model"]);
    const decisions = await prom.query("sum by (outcome) (floodgate_admission_decisions_total)");
    expect(decisions.map((s) => s.metric.outcome)).toEqual(
      expect.arrayContaining(["immediate", "queue_full"]),
    );
  });

  it("fills the pool variable: label_values(floodgate_backend_slots, pool)", async () => {
    const prom = prometheus as RunningPrometheus;
    const pools = await prom.query("count by (pool) (floodgate_backend_slots)");
    expect(pools.map((s) => s.metric.pool).sort()).toEqual(["flaky", "main"]);
    // The call Grafana makes for label_values(metric, label).
    const res = await request(
      `${prom.url}/api/v1/label/pool/values?${new URLSearchParams({ "match[]": "floodgate_backend_slots" })}`,
    );
    const json = (await res.body.json()) as { status: string; data: string[] };
    expect(json).toEqual({ status: "success", data: ["flaky", "main"] });
    // A pool picked in the variable narrows the panels to it.
    const main = await prom.query(
      substitute(targets.find((t) => t.panel === "In flight vs slots per backend")?.expr ?? "").replace(
        'pool=~".*"',
        'pool=~"main"',
      ),
    );
    expect(main.map((s) => s.metric.backend)).toEqual(["a"]);
  });
});
