/**
 * deploy/prometheus: the alert rules pass `promtool check rules` and their unit tests
 * (`promtool test rules`), the compose Prometheus config passes `promtool check config`, every
 * alert has a unit test where it fires and one where it must not, and the rules run on a real
 * Prometheus scraping a real gateway: every selector they use matches real series, every rule
 * evaluates without error, and the faults the gateway is put through (a full pool, a pool whose
 * backend fails health checks, one answering 502, one ejected by its breaker, Redis unreachable,
 * a replica that is not there) make the matching alerts pending with the right labels.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { type SimServer, startSim } from "../../src/sim/index.js";
import { eventually } from "../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../helpers/gateway.js";
import { freePort } from "../helpers/ports.js";
import {
  PROMETHEUS_BIN,
  PROMTOOL_BIN,
  type RunningPrometheus,
  startPrometheus,
} from "../helpers/prometheus.js";
import { postStream } from "../helpers/sse.js";

const DIR = resolve("deploy/prometheus");
const ALERTS = resolve(DIR, "alerts.yml");
const ALERTS_TEST = resolve(DIR, "alerts.test.yml");
const CONFIG = resolve(DIR, "prometheus.yml");

interface Rule {
  record?: string;
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface ExpectedAlert {
  exp_labels?: Record<string, string>;
  exp_annotations?: Record<string, string>;
}
interface AlertCase {
  eval_time: string;
  alertname: string;
  exp_alerts?: ExpectedAlert[];
}
interface UnitTest {
  name: string;
  alert_rule_test?: AlertCase[];
}

const groups = (parse(readFileSync(ALERTS, "utf8")) as { groups: { name: string; rules: Rule[] }[] }).groups;
const rules = groups.flatMap((g) => g.rules);
const alerts = rules.filter((r) => r.alert !== undefined);
const unitTests = (parse(readFileSync(ALERTS_TEST, "utf8")) as { rule_files: string[]; tests: UnitTest[] })
  .tests;

function promtool(...args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((done) => {
    execFile(PROMTOOL_BIN as string, args, { cwd: DIR }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      done({ code, output: `${stdout}${stderr}` });
    });
  });
}

/**
 * The series selectors of a PromQL expression: `name` or `name{matchers}` for the raw metrics
 * (floodgate_* and up), recording rules' names (with a colon) left out.
 */
function selectors(expr: string): string[] {
  const found = expr.matchAll(/(?<![\w:])(floodgate_[a-z0-9_]+|up)(?![\w:])(\{[^}]*\})?/g);
  return [...new Set([...found].map((m) => `${m[1]}${m[2] ?? ""}`))];
}

describe("alerts.yml", () => {
  it("holds one group, floodgate, whose alerts each have a for, a severity and operator annotations", () => {
    expect(groups.map((g) => g.name)).toEqual(["floodgate"]);
    expect(alerts.map((a) => a.alert)).toEqual([
      "FloodgateShedding",
      "FloodgateTimeToFirstTokenSLO",
      "FloodgateErrorRatio",
      "FloodgatePoolDown",
      "FloodgateBreakerOpen",
      "FloodgateStoreDegraded",
      "FloodgateReplicaDown",
      "FloodgateAllReplicasDown",
    ]);
    for (const a of alerts) {
      expect(a.for, a.alert).toMatch(/^\d+[smh]$/);
      expect(["page", "ticket"], a.alert).toContain(a.labels?.severity);
      expect(Object.keys(a.annotations ?? {}).sort(), a.alert).toEqual(["description", "runbook", "summary"]);
    }
    // Recording rules come before the alerts that read them (a group evaluates in order).
    const recorded = rules.flatMap((r, i) => (r.record ? [[r.record, i] as const] : []));
    rules.forEach((r, i) => {
      for (const [name, at] of recorded) if (r.expr.includes(name)) expect(at, name).toBeLessThan(i);
    });
  });

  it("has a unit test where each alert fires and one where it does not, for alerts that exist", () => {
    const names = new Set(alerts.map((a) => a.alert));
    const cases = unitTests.flatMap((t) => (t.alert_rule_test ?? []).map((c) => ({ test: t.name, ...c })));
    for (const c of cases) expect(names, `${c.test}: ${c.alertname}`).toContain(c.alertname);
    for (const a of alerts) {
      const mine = cases.filter((c) => c.alertname === a.alert);
      const firing = mine.filter((c) => (c.exp_alerts ?? []).length > 0);
      expect(firing.length, `${a.alert} fires in some case`).toBeGreaterThan(0);
      expect(
        mine.filter((c) => (c.exp_alerts ?? []).length === 0).length,
        `${a.alert} stays quiet in some case`,
      ).toBeGreaterThan(0);
      // A firing case checks the severity and every annotation (promtool compares them whole).
      for (const e of firing.flatMap((c) => c.exp_alerts ?? [])) {
        expect(e.exp_labels?.severity, a.alert).toBe(a.labels?.severity);
        expect(Object.keys(e.exp_annotations ?? {}).sort(), a.alert).toEqual(
          Object.keys(a.annotations ?? {}).sort(),
        );
      }
    }
  });
});

describe.skipIf(!PROMTOOL_BIN)("promtool", () => {
  it("checks the rules", async () => {
    const { code, output } = await promtool("check", "rules", ALERTS);
    expect(output).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(code).toBe(0);
  });

  it("checks the compose Prometheus config, and the rule files it names", async () => {
    const { code, output } = await promtool("check", "config", CONFIG);
    expect(output).toContain("is valid prometheus config file syntax");
    expect(output).toContain(`SUCCESS: ${rules.length} rules found`);
    expect(code).toBe(0);
  });

  it("passes the rules' unit tests", async () => {
    const { code, output } = await promtool("test", "rules", ALERTS_TEST);
    expect(output).toContain("SUCCESS");
    expect(output).not.toContain("FAILED");
    expect(code).toBe(0);
  });
});

interface RulesApi {
  data: {
    groups: {
      name: string;
      rules: {
        name: string;
        type: "alerting" | "recording";
        health: string;
        lastError?: string;
        lastEvaluation: string;
        alerts?: { labels: Record<string, string>; state: string }[];
      }[];
    }[];
  };
}

/**
 * One gateway with four pools and a shared store it cannot reach, behind a real Prometheus that
 * scrapes it and a port where no replica listens, with alerts.yml loaded. Traffic runs in a loop
 * until the end: rates need counters that grow between scrapes.
 */
describe.skipIf(!PROMETHEUS_BIN)("the rules on a real Prometheus scraping a real gateway", () => {
  let sim: SimServer;
  let gw: RunningGateway;
  let prometheus: RunningPrometheus | undefined;
  let missingReplica = "";
  let stopped = false;
  let traffic: Promise<void> = Promise.resolve();
  const statuses = new Map<string, number>();

  beforeAll(async () => {
    sim = await startSim({ models: ["m"], decodeStepMs: 10, decodeMsPerSeq: 0, prefillMsPerToken: 0 });
    // Ports nothing listens on: backends that refuse connections, a Redis that is not there.
    const [downPort, flakyPort, brokenPort, redisPort, replicaPort] = await Promise.all(
      [1, 2, 3, 4, 5].map(() => freePort()),
    );
    missingReplica = `127.0.0.1:${replicaPort}`;
    const off = "healthCheck: { enabled: false }";
    gw = await startGateway(`store:
  type: redis
  url: redis://127.0.0.1:${redisPort}
  connectTimeout: 200ms
  commandTimeout: 50ms
  breaker: { failures: 2, resetTimeout: 300ms }
  slots: { sync: 100ms, lease: 1s }
rateLimits:
  - { name: everyone, by: global, rate: 100000, per: 1s, onStoreError: local }
pools:
  main:
    models: [m]
    backends: [{ url: "${sim.url}", name: sim-0, maxConcurrency: 1 }]
    admission: { bands: { interactive: { maxQueue: 0 } } }
    loadSignals: { enabled: false }
    ${off}
  down:
    models: [m-down]
    backends: [{ url: "http://127.0.0.1:${downPort}", name: dead-0 }]
    healthCheck: { enabled: true, interval: 200ms, timeout: 100ms, unhealthyThreshold: 1 }
  flaky:
    models: [m-flaky]
    backends: [{ url: "http://127.0.0.1:${flakyPort}", name: dead-1 }]
    outlierDetection: { enabled: false }
    circuitBreaker: { enabled: false }
    retry: { attempts: 0 }
    ${off}
  broken:
    models: [m-broken]
    backends: [{ url: "http://127.0.0.1:${brokenPort}", name: dead-2 }]
    outlierDetection: { consecutiveConnectFailure: 1, baseEjectionTime: 5m, maxEjectionTime: 10m }
    retry: { attempts: 0 }
    ${off}
`);
    const post = async (model: string) => {
      const res = await request(`${gw.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 4 }),
      });
      await res.body.dump();
      const key = `${model} ${res.statusCode}`;
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
    };
    // Each round: a stream holds main's one slot while two more requests find it taken (503
    // queue_full); a 502 from flaky; a refused connect on broken, then its breaker's refusals.
    const round = async () => {
      let release: () => void = () => {};
      const holding = new Promise<void>((r) => {
        release = r;
      });
      const holder = postStream(
        `${gw.url}/v1/chat/completions`,
        { model: "m", messages: [{ role: "user", content: "hi" }], max_tokens: 40, stream: true },
        { onEvent: () => release() },
      );
      await Promise.race([holding, holder]);
      await Promise.all([post("m"), post("m"), post("m-flaky"), post("m-broken")]);
      const held = await holder;
      statuses.set(`m stream ${held.status}`, (statuses.get(`m stream ${held.status}`) ?? 0) + 1);
    };
    traffic = (async () => {
      while (!stopped) await round().catch(() => undefined);
    })();
    prometheus = await startPrometheus({
      targets: [new URL(gw.adminUrl).host, missingReplica],
      ruleFiles: [ALERTS],
    });
  }, 60_000);

  afterAll(async () => {
    stopped = true;
    await traffic;
    await prometheus?.close();
    await gw?.close();
    await sim?.close();
  });

  async function rulesApi(): Promise<RulesApi["data"]["groups"][number]["rules"]> {
    const res = await request(`${prometheus?.url}/api/v1/rules`);
    const body = (await res.body.json()) as RulesApi;
    return body.data.groups.flatMap((g) => g.rules);
  }

  it("finds real series for every selector the rules use", async () => {
    const all = [...new Set(rules.flatMap((r) => selectors(r.expr)))];
    // Metric names, label names and label values: each selector matches something.
    expect(all).toContain('floodgate_requests_total{code="503", error=~"queue_.*|no_backend_available"}');
    expect(all).toContain('up{job="floodgate"}');
    await eventually(
      async () => {
        const empty: string[] = [];
        for (const s of all) {
          if ((await prometheus?.query(`count(${s})`))?.length !== 1) empty.push(s);
        }
        expect(empty).toEqual([]);
        return true;
      },
      { timeout: 30_000, interval: 500, what: "every selector of alerts.yml to match a series" },
    );
    // The faults were what the alerts are about.
    expect(statuses.get("m 503")).toBeGreaterThan(0);
    expect(statuses.get("m-flaky 502")).toBeGreaterThan(0);
  }, 40_000);

  it("evaluates every rule without error, and the faults make their alerts pending", async () => {
    const active = (list: Awaited<ReturnType<typeof rulesApi>>, name: string) =>
      (list.find((r) => r.name === name)?.alerts ?? []).map((a) => a.labels);
    await eventually(
      async () => {
        const list = await rulesApi();
        expect(list.map((r) => r.name).sort()).toEqual(rules.map((r) => r.record ?? r.alert).sort());
        for (const r of list)
          expect({ rule: r.name, health: r.health, error: r.lastError ?? "" }).toEqual({
            rule: r.name,
            health: "ok",
            error: "",
          });
        const pools = (name: string) =>
          active(list, name)
            .map((l) => l.pool)
            .sort();
        expect(pools("FloodgateShedding")).toContain("main");
        expect(pools("FloodgateErrorRatio")).toContain("flaky");
        expect(pools("FloodgatePoolDown")).toEqual(["broken", "down"]);
        expect(active(list, "FloodgateBreakerOpen")).toEqual([
          { alertname: "FloodgateBreakerOpen", pool: "broken", backend: "dead-2", severity: "ticket" },
        ]);
        expect(
          active(list, "FloodgateStoreDegraded")
            .map((l) => l.affects)
            .sort(),
        ).toEqual(["rate limits", "shared backend slots"]);
        expect(active(list, "FloodgateReplicaDown").map((l) => l.instance)).toEqual([missingReplica]);
        expect(active(list, "FloodgateAllReplicasDown")).toEqual([]);
        return true;
      },
      { timeout: 40_000, interval: 500, what: "the rules to evaluate and the faults' alerts to be pending" },
    );
    // Served streams are fast and few: time to first token recorded, no alert.
    const p99 = await prometheus?.query('pool:floodgate_time_to_first_token_seconds:p99_rate5m{pool="main"}');
    expect(p99?.length).toBe(1);
    expect(Number(p99?.[0]?.value[1])).toBeLessThan(2);
    expect(active(await rulesApi(), "FloodgateTimeToFirstTokenSLO")).toEqual([]);
  }, 50_000);
});
