/**
 * deploy/k8s: every YAML document is checked against the Kubernetes schemas (kubernetes-models)
 * and for fields those schemas do not know (a typo there is silently ignored by the schemas but
 * refused by `kubectl apply`), the gateway config inside the ConfigMap is parsed by floodgate's
 * own parser, and the invariants an operator relies on hold between the files: probes, ports,
 * shutdown timing, secrets, autoscaler targets, discovery. The prometheus-adapter queries that
 * drive the vLLM autoscaler are run on a real Prometheus scraping two real gateways.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { IDeployment } from "kubernetes-models/apps/v1";
import type { IHorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import type { IPodDisruptionBudget } from "kubernetes-models/policy/v1";
import type { IConfigMap, IContainer, IPodSpec, ISecret, IService } from "kubernetes-models/v1";
import ts from "typescript";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { ConfigError, configWarnings, type GatewayConfig, parseConfig } from "../../src/config/index.js";
import { type SimServer, startSim } from "../../src/sim/index.js";
import { eventually } from "../helpers/eventually.js";
import { type RunningGateway, startGateway } from "../helpers/gateway.js";
import { PROMETHEUS_BIN, type RunningPrometheus, startPrometheus } from "../helpers/prometheus.js";

const DIR = "deploy/k8s";

/**
 * Kinds kubernetes-models does not model, each checked by hand below. Anything else it does not
 * know fails the test: a CRD added here needs its own checks.
 */
const NON_CORE_KINDS = new Set(["kustomize.config.k8s.io/v1beta1/Kustomization"]);

/** Files kustomization.yaml leaves out on purpose (each says why in its header). */
const NOT_IN_KUSTOMIZATION = new Set(["secret.example.yaml", "prometheus-adapter-rules.yaml"]);

interface Manifest {
  file: string;
  index: number;
  apiVersion: string;
  kind: string;
  name: string;
  value: Record<string, unknown>;
}

function loadManifests(): Manifest[] {
  const out: Manifest[] = [];
  for (const file of readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f))) {
    const docs = parseAllDocuments(readFileSync(join(DIR, file), "utf8"), { uniqueKeys: true });
    for (const [index, doc] of docs.entries()) {
      if (doc.errors.length > 0) throw new Error(`${file} document ${index}: ${doc.errors[0]?.message}`);
      const value: unknown = doc.toJS();
      if (value === null || value === undefined) continue;
      if (typeof value !== "object" || Array.isArray(value)) throw new Error(`${file}: not a mapping`);
      const v = value as Record<string, unknown>;
      const metadata = (v.metadata ?? {}) as { name?: unknown };
      out.push({
        file,
        index,
        apiVersion: String(v.apiVersion),
        kind: String(v.kind),
        name: typeof metadata.name === "string" ? metadata.name : "",
        value: v,
      });
    }
  }
  return out;
}

type ModelClass = new (
  data: unknown,
) => { validate(): void; toJSON(): { apiVersion?: string; kind?: string } };

/** kubernetes-models' class for apiVersion + kind, or undefined when it has none. */
async function modelClass(apiVersion: string, kind: string): Promise<ModelClass | undefined> {
  if (!/^[a-z0-9.]*\/?v\d+(alpha\d+|beta\d+)?$/.test(apiVersion) || !/^[A-Z][A-Za-z]+$/.test(kind)) return;
  let module: Record<string, unknown>;
  try {
    const specifier = `kubernetes-models/${apiVersion}`;
    module = (await import(/* @vite-ignore */ specifier)) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const candidate = module[kind];
  if (typeof candidate !== "function") return undefined;
  const cls = candidate as ModelClass;
  // The modules also export the types inside resources (Probe, Container): only a resource
  // stamps its own apiVersion and kind.
  const stamp = new cls({}).toJSON();
  return stamp.apiVersion === apiVersion && stamp.kind === kind ? cls : undefined;
}

/** Schema errors of one document, as the thrown message; undefined when it is valid. */
async function schemaError(apiVersion: string, kind: string, value: unknown): Promise<string | undefined> {
  const cls = await modelClass(apiVersion, kind);
  if (!cls) return `kubernetes-models has no ${apiVersion} ${kind}`;
  try {
    new cls(value).validate();
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/**
 * Fields the resource's type does not declare, found by walking the document along the
 * TypeScript interfaces kubernetes-models ships (its JSON schemas allow unknown fields).
 */
class UnknownFields {
  private readonly checker: ts.TypeChecker;
  private readonly types = new Map<string, ts.Type>();

  constructor(kinds: { apiVersion: string; kind: string }[]) {
    const unique = [...new Map(kinds.map((k) => [`${k.apiVersion}/${k.kind}`, k])).values()];
    const entry = join(process.cwd(), "__k8s_resource_types__.ts");
    const source = unique
      .map(
        (k, i) =>
          `export declare const t${i}: import("kubernetes-models/${k.apiVersion}/${k.kind}").I${k.kind};`,
      )
      .join("\n");
    const options: ts.CompilerOptions = {
      module: ts.ModuleKind.CommonJS,
      moduleResolution: ts.ModuleResolutionKind.Node10,
      target: ts.ScriptTarget.ES2022,
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: [],
    };
    const host = ts.createCompilerHost(options);
    const getSourceFile = host.getSourceFile.bind(host);
    host.getSourceFile = (name, languageVersion, ...rest) =>
      name === entry
        ? ts.createSourceFile(name, source, languageVersion)
        : getSourceFile(name, languageVersion, ...rest);
    const fileExists = host.fileExists.bind(host);
    host.fileExists = (name) => name === entry || fileExists(name);
    const program = ts.createProgram([entry], options, host);
    const problems = ts
      .getPreEmitDiagnostics(program)
      .map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n"));
    if (problems.length > 0) throw new Error(`resource types did not resolve: ${problems.join("; ")}`);
    this.checker = program.getTypeChecker();
    const file = program.getSourceFile(entry);
    if (!file) throw new Error("no entry file");
    const declarations = file.statements
      .filter(ts.isVariableStatement)
      .flatMap((s) => s.declarationList.declarations);
    unique.forEach((k, i) => {
      const declaration = declarations[i];
      if (!declaration) throw new Error(`no type for ${k.kind}`);
      this.types.set(`${k.apiVersion}/${k.kind}`, this.checker.getTypeAtLocation(declaration.name));
    });
  }

  of(apiVersion: string, kind: string, value: unknown): string[] {
    const type = this.types.get(`${apiVersion}/${kind}`);
    if (!type) throw new Error(`no type loaded for ${apiVersion} ${kind}`);
    const out: string[] = [];
    this.walk(value, type, "", out);
    return out;
  }

  private walk(value: unknown, declared: ts.Type, path: string, out: string[]): void {
    if (value === null || typeof value !== "object") return;
    let type = this.checker.getNonNullableType(declared);
    if (type.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return;
    if (type.isUnion()) {
      // IntOrString, Quantity: scalars. A union of several object shapes is not walked.
      const objects = type.types.filter((t) => t.flags & ts.TypeFlags.Object);
      if (objects.length !== 1 || !objects[0]) return;
      type = objects[0];
    }
    if (Array.isArray(value)) {
      const element = this.checker.getIndexTypeOfType(type, ts.IndexKind.Number);
      if (element)
        value.forEach((item, i) => {
          this.walk(item, element, `${path}[${i}]`, out);
        });
      return;
    }
    const index = this.checker.getIndexTypeOfType(type, ts.IndexKind.String);
    for (const [key, item] of Object.entries(value)) {
      const property = this.checker.getPropertyOfType(type, key);
      const where = path === "" ? key : `${path}.${key}`;
      if (property) this.walk(item, this.checker.getTypeOfSymbol(property), where, out);
      else if (index) this.walk(item, index, where, out);
      else out.push(where);
    }
  }
}

const manifests = loadManifests();
const byKind = (kind: string) => manifests.filter((m) => m.kind === kind);
function one<T>(kind: string, name: string): T {
  const found = manifests.filter((m) => m.kind === kind && m.name === name);
  if (found.length !== 1) throw new Error(`expected one ${kind} ${name}, found ${found.length}`);
  return found[0]?.value as T;
}

const deployment = one<IDeployment>("Deployment", "floodgate");
const podSpec = deployment.spec?.template.spec as IPodSpec;
const container = podSpec.containers.find((c) => c.name === "floodgate") as IContainer;
const configMap = one<IConfigMap>("ConfigMap", "floodgate-config");
const gatewayYaml = configMap.data?.["gateway.yaml"] ?? "";
const gatewayHpa = one<IHorizontalPodAutoscaler>("HorizontalPodAutoscaler", "floodgate");
const secretExample = one<ISecret>("Secret", "floodgate-secrets");

/** The environment variables the container takes from Secrets: name → { secret, key }. */
const secretEnv = new Map(
  (container.env ?? []).flatMap((e) =>
    e.valueFrom?.secretKeyRef ? [[e.name, e.valueFrom.secretKeyRef] as const] : [],
  ),
);

/** The gateway config as the pod would parse it, with every variable it reads set. */
function parseGatewayConfig(overrides: Record<string, string> = {}): {
  config: GatewayConfig;
  read: Set<string>;
} {
  const read = new Set<string>();
  const values: Record<string, string> = {};
  for (const name of secretEnv.keys()) values[name] = randomBytes(24).toString("hex");
  Object.assign(values, overrides);
  const env = new Proxy(values, {
    get(target, key) {
      if (typeof key === "string") read.add(key);
      return typeof key === "string" ? target[key] : undefined;
    },
  });
  return { config: parseConfig(gatewayYaml, `${DIR}/configmap.yaml gateway.yaml`, env), read };
}

function containerPort(c: IContainer, port: string | number | undefined): number | undefined {
  if (typeof port === "number") return port;
  return c.ports?.find((p) => p.name === port)?.containerPort;
}

function preStopSeconds(c: IContainer): number {
  const preStop = c.lifecycle?.preStop;
  if (preStop?.sleep) return Number(preStop.sleep.seconds);
  const command = preStop?.exec?.command ?? [];
  if (command[0] === "sleep" && command.length === 2) return Number(command[1]);
  throw new Error(`no preStop sleep on ${c.name}`);
}

const labelsMatch = (
  selector: Record<string, string> | undefined,
  labels: Record<string, string> | undefined,
) =>
  selector !== undefined &&
  Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);

describe("deploy/k8s against the Kubernetes schemas", () => {
  let unknown: UnknownFields;

  beforeAll(() => {
    const core = manifests.filter((m) => !NON_CORE_KINDS.has(`${m.apiVersion}/${m.kind}`));
    unknown = new UnknownFields([
      ...core,
      { apiVersion: "apps/v1", kind: "Deployment" }, // for the broken examples below
    ]);
  }, 60_000);

  it("has the manifests the kit documents", () => {
    const kinds = manifests.map((m) => `${m.kind}/${m.name}`).sort();
    expect(kinds).toEqual(
      expect.arrayContaining([
        "ConfigMap/floodgate-config",
        "ConfigMap/prometheus-adapter",
        "Deployment/floodgate",
        "Deployment/vllm",
        "HorizontalPodAutoscaler/floodgate",
        "HorizontalPodAutoscaler/vllm",
        "Kustomization/",
        "Namespace/floodgate",
        "PodDisruptionBudget/floodgate",
        "Secret/floodgate-secrets",
        "Service/floodgate",
        "Service/floodgate-metrics",
        "Service/vllm",
      ]),
    );
  });

  it("every document is valid for its apiVersion and kind, with no field the kind lacks", async () => {
    const problems: string[] = [];
    for (const m of manifests) {
      const where = `${m.file}#${m.index} ${m.kind} ${m.name}`;
      if (NON_CORE_KINDS.has(`${m.apiVersion}/${m.kind}`)) continue;
      const error = await schemaError(m.apiVersion, m.kind, m.value);
      if (error) {
        problems.push(`${where}: ${error}`);
        continue;
      }
      for (const field of unknown.of(m.apiVersion, m.kind, m.value))
        problems.push(`${where}: unknown field ${field}`);
      if (m.name === "") problems.push(`${where}: no metadata.name`);
    }
    expect(problems).toEqual([]);
  });

  it("rejects a broken manifest, an unknown kind and a misspelt field, so the checks are real", async () => {
    const base = {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "x" },
      spec: {
        selector: { matchLabels: { a: "b" } },
        template: { metadata: { labels: { a: "b" } }, spec: { containers: [{ name: "c", image: "i" }] } },
      },
    };
    expect(await schemaError("apps/v1", "Deployment", base)).toBeUndefined();
    expect(unknown.of("apps/v1", "Deployment", base)).toEqual([]);

    const broken = structuredClone(base) as { spec: { template: { spec: { containers: unknown } } } };
    broken.spec.template.spec.containers = "x";
    expect(await schemaError("apps/v1", "Deployment", broken)).toMatch(/containers must be array/);

    const badPort = structuredClone(base);
    Object.assign(badPort.spec.template.spec.containers[0] ?? {}, { ports: [{ containerPort: "http" }] });
    expect(await schemaError("apps/v1", "Deployment", badPort)).toMatch(/containerPort must be integer/);

    expect(await schemaError("apps/v1", "Deploymnet", base)).toMatch(/has no apps\/v1 Deploymnet/);
    expect(await schemaError("apps/v2", "Deployment", base)).toMatch(/has no/);
    expect(await schemaError("v1", "Probe", {})).toMatch(/has no v1 Probe/);

    const typo = structuredClone(base);
    Object.assign(typo.spec.template.spec.containers[0] ?? {}, {
      readinesProbe: { httpGet: { path: "/readyz", port: 8080 } },
      securityContext: { readOnlyRootFileSystem: true },
    });
    expect(await schemaError("apps/v1", "Deployment", typo)).toBeUndefined(); // what the schemas miss
    expect(unknown.of("apps/v1", "Deployment", typo)).toEqual([
      "spec.template.spec.containers[0].readinesProbe",
      "spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem",
    ]);
  });

  it("the only kinds kubernetes-models lacks are the documented non-core ones", async () => {
    for (const m of manifests) {
      const known = (await modelClass(m.apiVersion, m.kind)) !== undefined;
      expect(known || NON_CORE_KINDS.has(`${m.apiVersion}/${m.kind}`), `${m.file}: ${m.kind}`).toBe(true);
    }
  });
});

describe("the gateway config in configmap.yaml", () => {
  it("parses with floodgate's own parser, with no warning, given the variables the Deployment sets", () => {
    const { config, read } = parseGatewayConfig();
    expect(configWarnings(config)).toEqual([]);
    // Exactly the variables the container gets from Secrets: none missing, none unused.
    expect([...read].sort()).toEqual([...secretEnv.keys()].sort());
  });

  it("refuses the placeholder admin token of secret.example.yaml", () => {
    const placeholder = secretExample.stringData?.["admin-token"] ?? "";
    expect(placeholder).toMatch(/REPLACE_ME/);
    const adminVar = [...secretEnv].find(([, ref]) => ref.key === "admin-token")?.[0] ?? "";
    expect(() => parseGatewayConfig({ [adminVar]: placeholder })).toThrow(ConfigError);
    expect(() => parseGatewayConfig({ [adminVar]: "0123456789abcdef" })).toThrow(/fewer than 32/);
  });

  it("has the admin listener on all addresses, with a token, and hot reload on", () => {
    const { config } = parseGatewayConfig();
    expect(config.admin.enabled).toBe(true);
    expect(config.admin.host).toBe("0.0.0.0");
    expect(config.admin.token?.length).toBeGreaterThanOrEqual(32);
    expect(config.reload.watch).toBe(true);
  });

  it("shares state through Redis when the autoscaler runs more than one replica", () => {
    const { config } = parseGatewayConfig();
    const min = gatewayHpa.spec?.minReplicas ?? 1;
    expect(min).toBeGreaterThan(1);
    expect(config.store.type).toBe("redis");
    expect(config.store.url).toMatch(/^redis:\/\/[a-z0-9.-]+\.svc\.cluster\.local:6379$/);
    expect(config.store.slots.shared).toBe(true);
    expect(config.store.replicas).toBe(min);
  });

  it("discovers the vLLM pods through the headless Service, which selects the vLLM Deployment", () => {
    const { config } = parseGatewayConfig();
    const vllm = one<IDeployment>("Deployment", "vllm");
    const vllmService = one<IService>("Service", "vllm");
    expect(vllmService.spec?.clusterIP).toBe("None");
    expect(labelsMatch(vllmService.spec?.selector, vllm.spec?.template.metadata?.labels)).toBe(true);
    const vllmContainer = vllm.spec?.template.spec?.containers[0] as IContainer;
    const servicePort = vllmService.spec?.ports?.[0];
    expect(containerPort(vllmContainer, servicePort?.targetPort)).toBe(servicePort?.port);

    const namespace = one<{ metadata: { name: string } }>("Namespace", "floodgate").metadata.name;
    const discovered = Object.entries(config.pools).flatMap(([pool, p]) =>
      p.backends.filter((b) => b.discovery === "dns").map((b) => ({ pool, models: p.models, backend: b })),
    );
    expect(discovered).toHaveLength(1);
    const { models, backend } = discovered[0]!;
    const url = new URL(backend.url);
    expect(url.hostname).toBe(`${vllmService.metadata?.name}.${namespace}.svc.cluster.local`);
    expect(Number(url.port)).toBe(servicePort?.port);
    expect(backend.engine).toBe("vllm");

    // The pool's model is the one vLLM serves, and its slots are vLLM's batch size.
    const args = [...(vllmContainer.command ?? []), ...(vllmContainer.args ?? [])];
    const flag = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
    expect(models).toEqual([flag("served-model-name")]);
    expect(backend.maxConcurrency).toBe(Number(flag("max-num-seqs")));
    expect(vllmContainer.readinessProbe?.httpGet?.path).toBe("/health");
  });
});

describe("the floodgate Deployment", () => {
  it("probes /readyz and /healthz on the listen port", () => {
    const { config } = parseGatewayConfig();
    expect(container.readinessProbe?.httpGet?.path).toBe("/readyz");
    expect(container.livenessProbe?.httpGet?.path).toBe("/healthz");
    expect(containerPort(container, container.readinessProbe?.httpGet?.port)).toBe(config.listen.port);
    expect(containerPort(container, container.livenessProbe?.httpGet?.port)).toBe(config.listen.port);
    expect(config.listen.port).toBe(8080);
  });

  it("exposes the admin port for scraping, as its annotations say", () => {
    const { config } = parseGatewayConfig();
    expect(containerPort(container, "admin")).toBe(config.admin.port);
    expect(config.admin.port).toBe(9090);
    const annotations = deployment.spec?.template.metadata?.annotations ?? {};
    expect(annotations["prometheus.io/scrape"]).toBe("true");
    expect(annotations["prometheus.io/port"]).toBe(String(config.admin.port));
    expect(annotations["prometheus.io/path"]).toBe("/metrics");
  });

  it("gives a stopping pod more time than the preStop sleep and the shutdown grace together", () => {
    const { config } = parseGatewayConfig();
    const preStop = preStopSeconds(container);
    expect(preStop).toBeGreaterThan(0);
    const grace = podSpec.terminationGracePeriodSeconds ?? 30;
    expect(grace).toBeGreaterThan(config.server.shutdownGrace / 1000 + preStop);
  });

  it("runs as a non-root user with a read-only root, no privilege escalation and no capabilities", () => {
    expect(podSpec.securityContext?.runAsNonRoot).toBe(true);
    expect(podSpec.securityContext?.runAsUser).toBe(1000);
    expect(podSpec.securityContext?.seccompProfile?.type).toBe("RuntimeDefault");
    const sc = container.securityContext;
    expect(sc?.allowPrivilegeEscalation).toBe(false);
    expect(sc?.readOnlyRootFilesystem).toBe(true);
    expect(sc?.capabilities?.drop).toContain("ALL");
    expect(sc?.capabilities?.add ?? []).toEqual([]);
    expect(sc?.privileged ?? false).toBe(false);
    expect(podSpec.automountServiceAccountToken).toBe(false);
  });

  it("sets CPU and memory requests and limits", () => {
    for (const key of ["requests", "limits"] as const) {
      expect(container.resources?.[key]?.cpu, key).toBeDefined();
      expect(container.resources?.[key]?.memory, key).toBeDefined();
    }
  });

  it("mounts the ConfigMap as a directory holding the file it is started with", () => {
    const volume = podSpec.volumes?.find((v) => v.configMap?.name === configMap.metadata?.name);
    expect(volume).toBeDefined();
    const mount = container.volumeMounts?.find((m) => m.name === volume?.name);
    expect(mount?.subPath).toBeUndefined(); // a subPath mount never sees ConfigMap updates
    const args = container.args ?? [];
    const file = args[args.indexOf("--config") + 1] ?? "";
    expect(file).toBe(`${mount?.mountPath}/gateway.yaml`);
    // The read-only root leaves /tmp to an emptyDir.
    const tmp = container.volumeMounts?.find((m) => m.mountPath === "/tmp");
    expect(podSpec.volumes?.find((v) => v.name === tmp?.name)?.emptyDir).toBeDefined();
  });

  it("takes every secret from keys the example Secret has, and no secret as a literal", () => {
    expect(secretEnv.size).toBeGreaterThan(0);
    for (const [name, ref] of secretEnv) {
      expect(ref.name, name).toBe(secretExample.metadata?.name);
      expect(Object.keys(secretExample.stringData ?? {}), name).toContain(ref.key);
      expect(gatewayYaml, name).toContain(`\${${name}}`);
    }
    expect((container.env ?? []).filter((e) => e.value !== undefined)).toEqual([]);
  });

  it("is selected by its Services, its disruption budget and its autoscaler", () => {
    const labels = deployment.spec?.template.metadata?.labels;
    expect(labelsMatch(deployment.spec?.selector.matchLabels, labels)).toBe(true);
    const http = one<IService>("Service", "floodgate");
    expect(http.spec?.type ?? "ClusterIP").toBe("ClusterIP");
    expect(labelsMatch(http.spec?.selector, labels)).toBe(true);
    expect(http.spec?.ports?.map((p) => containerPort(container, p.targetPort))).toEqual([8080]);
    const metrics = one<IService>("Service", "floodgate-metrics");
    expect(labelsMatch(metrics.spec?.selector, labels)).toBe(true);
    expect(metrics.spec?.ports?.map((p) => containerPort(container, p.targetPort))).toEqual([9090]);

    const pdb = one<IPodDisruptionBudget>("PodDisruptionBudget", "floodgate");
    expect(labelsMatch(pdb.spec?.selector?.matchLabels, labels)).toBe(true);
    const min = gatewayHpa.spec?.minReplicas ?? 1;
    if (pdb.spec?.maxUnavailable !== undefined) expect(pdb.spec.maxUnavailable).toBe(1);
    else expect(Number(pdb.spec?.minAvailable)).toBeLessThan(min);

    // No replica count beside an autoscaler: each apply would reset the autoscaler's choice.
    expect(deployment.spec?.replicas).toBeUndefined();
  });
});

describe("the autoscalers", () => {
  const deployments = byKind("Deployment").map((m) => m.name);

  it("each targets a Deployment of the kit by name", () => {
    const hpas = byKind("HorizontalPodAutoscaler");
    expect(hpas.length).toBe(2);
    for (const m of hpas) {
      const ref = (m.value as unknown as IHorizontalPodAutoscaler).spec?.scaleTargetRef;
      expect(ref?.apiVersion).toBe("apps/v1");
      expect(ref?.kind).toBe("Deployment");
      expect(deployments).toContain(ref?.name);
      expect(ref?.name).toBe(m.name);
    }
  });

  it("the gateway scales on CPU only", () => {
    const metrics = gatewayHpa.spec?.metrics ?? [];
    expect(metrics.map((m) => `${m.type}/${m.resource?.name}`)).toEqual(["Resource/cpu"]);
    expect(metrics[0]?.resource?.target.type).toBe("Utilization");
  });

  it("vLLM scales on External metrics that the adapter rules define, for a pool the config has", () => {
    const { config } = parseGatewayConfig();
    const hpa = one<IHorizontalPodAutoscaler>("HorizontalPodAutoscaler", "vllm");
    const external = (hpa.spec?.metrics ?? []).map((m) => m.external);
    expect(external.map((e) => e?.metric.name)).toContain("floodgate_queue_per_slot");
    const served = adapterRules().map((r) => r.name.as);
    for (const e of external) {
      expect(served).toContain(e?.metric.name);
      const pool = e?.metric.selector?.matchLabels?.pool ?? "";
      expect(Object.keys(config.pools)).toContain(pool);
    }
  });
});

interface ExternalRule {
  seriesQuery: string;
  resources: { overrides?: Record<string, { resource: string }>; namespaced?: boolean };
  name: { matches: string; as: string };
  metricsQuery: string;
}

function adapterRules(): ExternalRule[] {
  const cm = one<IConfigMap>("ConfigMap", "prometheus-adapter");
  const parsed = parse(cm.data?.["config.yaml"] ?? "") as { externalRules?: ExternalRule[] };
  return parsed.externalRules ?? [];
}

describe("prometheus-adapter-rules.yaml", () => {
  it("holds external rules with every field prometheus-adapter needs", () => {
    const rules = adapterRules();
    expect(rules.map((r) => r.name.as).sort()).toEqual([
      "floodgate_queue_per_slot",
      "floodgate_slot_utilization",
    ]);
    for (const rule of rules) {
      expect(Object.keys(rule).sort()).toEqual(["metricsQuery", "name", "resources", "seriesQuery"]);
      const series = /^([a-z_:]+)\{/.exec(rule.seriesQuery)?.[1] ?? "";
      expect(new RegExp(rule.name.matches).test(series), rule.name.as).toBe(true);
      expect(rule.metricsQuery).toContain("<<.LabelMatchers>>");
      expect(rule.resources.overrides?.namespace?.resource).toBe("namespace");
    }
    const queue = rules.find((r) => r.name.as === "floodgate_queue_per_slot");
    expect(queue?.seriesQuery).toMatch(/^floodgate_admission_queue_depth\{/);
    expect(queue?.metricsQuery).toMatch(
      /^sum\(floodgate_admission_queue_depth\{<<\.LabelMatchers>>\}\) by \(pool\)/,
    );
    expect(queue?.metricsQuery).toContain("floodgate_backend_slots{<<.LabelMatchers>>}");
  });
});

describe("kustomization.yaml", () => {
  const kustomization = one<{ namespace: string; resources: string[] }>("Kustomization", "");

  it("lists every manifest but the ones it leaves out on purpose, and only files that exist", () => {
    const files = readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f) && f !== "kustomization.yaml");
    expect([...kustomization.resources].sort()).toEqual(
      files.filter((f) => !NOT_IN_KUSTOMIZATION.has(f)).sort(),
    );
    expect(kustomization.namespace).toBe("floodgate");
  });

  const KUBECTL = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"].find((p) => existsSync(p));
  it.skipIf(!KUBECTL)("renders with kustomize, every resource in the namespace", () => {
    const out = execFileSync(KUBECTL as string, ["kustomize", DIR], { encoding: "utf8", timeout: 60_000 });
    const rendered = parseAllDocuments(out).map(
      (d) => d.toJS() as { kind: string; metadata: { namespace?: string } },
    );
    expect(rendered.length).toBe(
      manifests.filter((m) => kustomization.resources.includes(m.file) && m.kind !== "Kustomization").length,
    );
    for (const r of rendered) {
      if (r.kind !== "Namespace") expect(r.metadata.namespace, r.kind).toBe("floodgate");
    }
  });
});

/**
 * The adapter's queries on real series: two gateway replicas in front of one backend of one
 * slot (as the fleet reports it: each replica reports every backend's slots), one request in
 * flight and one waiting on the first replica.
 */
describe.skipIf(!PROMETHEUS_BIN)("the adapter's queries on a real Prometheus", () => {
  let sim: SimServer;
  let busy: RunningGateway;
  let idle: RunningGateway;
  let prometheus: RunningPrometheus | undefined;
  const held = new AbortController();

  beforeAll(async () => {
    sim = await startSim({ models: ["m"], faults: { hang: true } });
    const pool = `pools:
  main:
    models: [m]
    backends: [{ url: "${sim.url}", name: gpu-0, maxConcurrency: 1 }]
    timeouts: { firstByte: 2m, total: 3m }
    admission: { bands: { interactive: { maxWait: 2m } } }
    loadSignals: { enabled: false }
`;
    busy = await startGateway(pool);
    idle = await startGateway(pool);
    const body = JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] });
    for (let i = 0; i < 2; i++) {
      request(`${busy.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
        signal: held.signal,
      }).catch(() => {});
    }
    prometheus = await startPrometheus({
      targets: [busy, idle].map((g) => new URL(g.adminUrl).host),
      labels: { namespace: "floodgate" },
    });
  }, 60_000);

  afterAll(async () => {
    held.abort();
    await prometheus?.close();
    await busy?.close();
    await idle?.close();
    await sim?.close();
  });

  async function query(promql: string): Promise<Map<string, number>> {
    const result = (await prometheus?.query(promql)) ?? [];
    return new Map(result.map((r) => [r.metric.pool ?? "", Number(r.value[1])]));
  }

  // What prometheus-adapter puts for <<.LabelMatchers>>: the HPA's namespace and selector.
  const render = (rule: ExternalRule) =>
    rule.metricsQuery.replaceAll("<<.LabelMatchers>>", 'namespace="floodgate",pool="main"');

  it("give one waiting request per slot and every slot busy, however many gateway replicas report", async () => {
    const rules = new Map(adapterRules().map((r) => [r.name.as, r]));
    const queuePerSlot = rules.get("floodgate_queue_per_slot") as ExternalRule;
    const utilization = rules.get("floodgate_slot_utilization") as ExternalRule;
    await eventually(
      async () => {
        expect(await query('count(up{job="floodgate"} == 1)')).toEqual(new Map([["", 2]]));
        expect(await query(render(queuePerSlot))).toEqual(new Map([["main", 1]]));
        expect(await query(render(utilization))).toEqual(new Map([["main", 1]]));
        return true;
      },
      { timeout: 30_000, interval: 250, what: "the adapter queries to see the held requests" },
    );
    // Summing the slots of both replicas would halve the signal: the reason for max by backend.
    const naive = await query(
      'sum(floodgate_admission_queue_depth{pool="main"}) by (pool) / sum(floodgate_backend_slots{pool="main"}) by (pool)',
    );
    expect(naive).toEqual(new Map([["main", 0.5]]));
  }, 60_000);
});
