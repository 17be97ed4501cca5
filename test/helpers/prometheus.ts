/**
 * A real Prometheus (Debian's `prometheus` package) on a free port for a test: it scrapes the
 * given targets every second and evaluates rules every second, with its data in a temporary
 * directory removed on close. Tests that need it skip when PROMETHEUS_BIN is undefined.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { request } from "undici";
import { eventually } from "./eventually.js";
import { freePort } from "./ports.js";

export const PROMETHEUS_BIN = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].find((p) => existsSync(p));
export const PROMTOOL_BIN = ["/usr/bin/promtool", "/usr/local/bin/promtool"].find((p) => existsSync(p));

export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface RunningPrometheus {
  url: string;
  /** An instant query; throws with Prometheus' own message when the expression is refused. */
  query(promql: string): Promise<PromSample[]>;
  close(): Promise<void>;
}

export interface PrometheusOptions {
  /** host:port of each /metrics target, all in one job. */
  targets: string[];
  job?: string;
  /** Labels added to every target. */
  labels?: Record<string, string>;
  /** Absolute paths of rule files to load. */
  ruleFiles?: string[];
}

export async function startPrometheus(options: PrometheusOptions): Promise<RunningPrometheus> {
  if (!PROMETHEUS_BIN) throw new Error("prometheus is not installed (apt-get install prometheus)");
  const dir = mkdtempSync(join(tmpdir(), "floodgate-prometheus-"));
  const config = {
    global: { scrape_interval: "1s", evaluation_interval: "1s" },
    rule_files: options.ruleFiles ?? [],
    scrape_configs: [
      {
        job_name: options.job ?? "floodgate",
        static_configs: [{ targets: options.targets, labels: options.labels ?? {} }],
      },
    ],
  };
  // JSON is YAML: no serialiser needed.
  writeFileSync(join(dir, "prometheus.yml"), JSON.stringify(config, null, 2));
  let child: ChildProcess | undefined;
  let url = "";
  // Prometheus cannot be asked for a free port: a probed one may be taken before it binds.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const started = spawn(
      PROMETHEUS_BIN,
      [
        `--config.file=${join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${join(dir, `data-${attempt}`)}`,
        `--web.listen-address=127.0.0.1:${port}`,
      ],
      { stdio: "ignore" },
    );
    child = started;
    url = `http://127.0.0.1:${port}`;
    const up = await eventually(
      async () => {
        if (started.exitCode !== null || started.signalCode !== null) return "exited";
        const res = await request(`${url}/-/ready`);
        const text = await res.body.text();
        return res.statusCode === 200 && /Prometheus/i.test(text) ? "ready" : undefined;
      },
      { timeout: 30_000, interval: 100, what: "Prometheus to be ready" },
    );
    if (up === "ready") break;
    if (attempt >= 5) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error("Prometheus did not start");
    }
  }
  const running = child;
  return {
    url,
    async query(promql) {
      const res = await request(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`);
      const json = (await res.body.json()) as {
        status: string;
        error?: string;
        data: { result: PromSample[] };
      };
      if (json.status !== "success") throw new Error(`${promql}: ${json.error}`);
      return json.data.result;
    },
    async close() {
      if (running.exitCode === null && running.signalCode === null) {
        const exited = new Promise((resolve) => running.once("exit", resolve));
        running.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
