/**
 * `floodgate demo` (what `npm start` runs): three simulated GPU backends of different sizes
 * behind a gateway with the memory store, so a newcomer sees floodgate work with nothing else
 * installed.
 */
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { buildGateway } from "./app.js";
import { parseConfig } from "./config/index.js";
import { shutdownOnSignal } from "./lifecycle.js";
import { listenOrExit } from "./listen-error.js";
import { type SimServer, startSim } from "./sim/index.js";

const MODEL = "llama-3.1-8b";

const BACKENDS = [
  { name: "gpu-large", slots: 32, decodeStepMs: 12, weight: 4 },
  { name: "gpu-medium", slots: 16, decodeStepMs: 18, weight: 2 },
  { name: "gpu-small", slots: 8, decodeStepMs: 25, weight: 1 },
];

export const DEMO_USAGE = `usage: floodgate demo [--port N] [--admin-port N]

Three simulated GPU backends (32, 16 and 8 batch slots) behind a gateway on 127.0.0.1 with the
memory store and a fresh admin token; prints curl lines to try. Ctrl-C stops it.
  --port N         the gateway's port (default 8080; 0 for any free one)
  --admin-port N   the admin listener's port: /metrics and /admin/* (default 9090; 0 for any free one)
  -h, --help       show this help`;

/** A flag the user got wrong; the message names it. */
class DemoUsageError extends Error {}

function parseDemoArgs(args: string[]): { help: true } | { help: false; port: number; adminPort: number } {
  let values: { port: string; "admin-port": string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        port: { type: "string", default: "8080" },
        "admin-port": { type: "string", default: "9090" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (err) {
    throw new DemoUsageError(err instanceof Error ? err.message : String(err));
  }
  if (values.help) return { help: true };
  const port = (flag: string, text: string) => {
    const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
    if (!(n >= 0 && n <= 65535))
      throw new DemoUsageError(`--${flag} expects a port from 0 to 65535, got "${text}"`);
    return n;
  };
  return {
    help: false,
    port: port("port", values.port),
    adminPort: port("admin-port", values["admin-port"]),
  };
}

/** Exits by itself for --help (0) and bad flags (2, one line and the usage). */
export async function runDemo(args: string[]): Promise<void> {
  let parsed: ReturnType<typeof parseDemoArgs>;
  try {
    parsed = parseDemoArgs(args);
  } catch (err) {
    if (!(err instanceof DemoUsageError)) throw err;
    console.error(`floodgate demo: ${err.message}\n${DEMO_USAGE}`);
    process.exit(2);
  }
  if (parsed.help) {
    console.log(DEMO_USAGE);
    process.exit(0);
  }
  const sims: SimServer[] = [];
  for (const b of BACKENDS) {
    sims.push(
      await startSim({
        models: [MODEL],
        slots: b.slots,
        decodeStepMs: b.decodeStepMs,
        maxQueue: b.slots * 4,
      }),
    );
  }
  const adminToken = randomBytes(16).toString("hex");
  const backends = BACKENDS.map(
    (b, i) =>
      `      - { name: ${b.name}, url: "${sims[i]?.url}", weight: ${b.weight}, maxConcurrency: ${b.slots * 2}, engine: vllm }`,
  ).join("\n");
  const config = parseConfig(
    `listen: { host: 127.0.0.1, port: ${parsed.port} }
admin: { host: 127.0.0.1, port: ${parsed.adminPort}, token: ${adminToken} }
pools:
  demo:
    models: [${MODEL}]
    backends:
${backends}
`,
    "demo config",
  );
  const gateway = buildGateway(config);
  const { url, adminUrl } = await listenOrExit(gateway, { main: "--port", admin: "--admin-port" });
  shutdownOnSignal(gateway, async () => {
    await Promise.all(sims.map((s) => s.close()));
  });

  const body = JSON.stringify({
    model: MODEL,
    messages: [{ role: "user", content: "Why do GPUs batch requests?" }],
  });
  const streamBody = JSON.stringify({
    model: MODEL,
    stream: true,
    messages: [{ role: "user", content: "Count to ten." }],
  });
  console.log(`
floodgate demo: gateway on ${url}, in front of three simulated GPU backends
${BACKENDS.map((b, i) => `  ${b.name.padEnd(10)} ${sims[i]?.url}  ${b.slots} batch slots, weight ${b.weight}`).join("\n")}
admin: ${adminUrl}/metrics, and ${adminUrl}/admin/status with 'authorization: Bearer ${adminToken}'

try:
  curl -s ${url}/v1/chat/completions -H 'content-type: application/json' -d '${body}'
  curl -sN ${url}/v1/chat/completions -H 'content-type: application/json' -d '${streamBody}'
  curl -s ${url}/v1/models
Ctrl-C stops it (in-flight requests finish first).
`);
}
