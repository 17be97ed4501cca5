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
import { type SimServer, startSim } from "./sim/index.js";

const MODEL = "llama-3.1-8b";

const BACKENDS = [
  { name: "gpu-large", slots: 32, decodeStepMs: 12, weight: 4 },
  { name: "gpu-medium", slots: 16, decodeStepMs: 18, weight: 2 },
  { name: "gpu-small", slots: 8, decodeStepMs: 25, weight: 1 },
];

export async function runDemo(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { port: { type: "string", default: "8080" }, "admin-port": { type: "string", default: "9090" } },
    strict: true,
  });
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
    `listen: { host: 127.0.0.1, port: ${Number(values.port)} }
admin: { host: 127.0.0.1, port: ${Number(values["admin-port"])}, token: ${adminToken} }
pools:
  demo:
    models: [${MODEL}]
    backends:
${backends}
`,
    "demo config",
  );
  const gateway = buildGateway(config);
  const { url, adminUrl } = await gateway.listen();
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
