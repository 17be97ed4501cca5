/** Start a real gateway on port 0 from YAML, with silent logs, for integration tests. */
import { buildGateway, type Gateway, type GatewayOptions } from "../../src/app.js";
import { parseConfig } from "../../src/config/index.js";

export interface RunningGateway {
  gateway: Gateway;
  url: string;
  adminUrl: string;
  close(): Promise<void>;
}

/** `yaml` holds everything but listen/admin/log, which are set for tests. */
export async function startGateway(
  yaml: string,
  env: NodeJS.ProcessEnv = {},
  options: GatewayOptions = {},
): Promise<RunningGateway> {
  const config = parseConfig(
    `listen: { host: 127.0.0.1, port: 0 }
admin: { host: 127.0.0.1, port: 0, token: test-admin-token-0123456789 }
log: { level: silent }
${yaml}`,
    "test config",
    env,
  );
  // Proxy tests count what their backends receive: probes would add to it. Health tests opt in.
  if (!yaml.includes("healthCheck")) {
    for (const pool of Object.values(config.pools)) pool.healthCheck.enabled = false;
  }
  const gateway = buildGateway(config, { processMetrics: false, ...options });
  const { url, adminUrl } = await gateway.listen();
  return { gateway, url, adminUrl: adminUrl ?? "", close: () => gateway.close() };
}

/** A one-pool config in front of the given backend URLs. */
export function poolYaml(
  urls: string[],
  opts: { model?: string; timeouts?: string; extra?: string } = {},
): string {
  const backends = urls.map((u) => `      - { url: "${u}" }`).join("\n");
  return `pools:
  main:
    models: [${opts.model ?? "test-model"}]
    backends:
${backends}
${opts.timeouts ? `    timeouts: ${opts.timeouts}\n` : ""}${opts.extra ?? ""}`;
}
