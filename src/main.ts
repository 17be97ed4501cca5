#!/usr/bin/env node
/**
 * floodgate [--config FILE]   run the gateway (default config/gateway.yaml)
 * floodgate check FILE        validate a config and print what it would run
 * floodgate sim [flags]       run one simulated GPU inference backend
 * floodgate demo [flags]      three simulated backends behind a gateway on :8080
 * floodgate --version         the package's version
 */
import { parseArgs } from "node:util";
import pino from "pino";
import { buildGateway } from "./app.js";
import { describe } from "./config/describe.js";
import {
  ConfigError,
  configWarnings,
  formatWarning,
  type GatewayConfig,
  loadConfigFile,
} from "./config/index.js";
import { runDemo } from "./demo.js";
import { shutdownOnSignal } from "./lifecycle.js";
import { listenOrExit } from "./listen-error.js";
import { createLogger } from "./logging.js";
import { runSimCli } from "./sim/cli.js";
import { packageVersion } from "./version.js";

const USAGE = `usage:
  floodgate [--config FILE]   run the gateway (default: config/gateway.yaml)
  floodgate check FILE        validate a config and print what it would run
  floodgate sim [flags]       run a simulated GPU backend (floodgate sim --help)
  floodgate demo [flags]      three simulated backends behind a gateway on :8080 (floodgate demo --help)
  floodgate --version         print the version`;

const CHECK_USAGE = `usage: floodgate check FILE

Validates a gateway config and prints what it would run: listeners, store, tenants, limits,
pools (with their cache, admission queue and fallback chain) and routes.
Exit codes: 0 valid, 2 invalid or bad usage.
  -h, --help   show this help`;

/** Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad config. */
async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case "sim":
      await runSimCli(rest);
      return;
    case "demo":
      await runDemo(rest);
      return;
    case "check":
      check(rest);
      return;
    case "-h":
    case "--help":
    case "help":
      console.log(USAGE);
      return;
    case "-v":
    case "--version":
      console.log(packageVersion());
      return;
    default:
      await serve(argv);
  }
}

function check(args: string[]): void {
  let parsed: { values: { help?: boolean }; positionals: string[] };
  try {
    parsed = parseArgs({ args, options: { help: { type: "boolean", short: "h" } }, allowPositionals: true });
  } catch (err) {
    fail(`floodgate check: ${err instanceof Error ? err.message : String(err)}\n${CHECK_USAGE}`);
  }
  if (parsed.values.help) {
    console.log(CHECK_USAGE);
    return;
  }
  const [file, ...extra] = parsed.positionals;
  if (!file) fail(`floodgate check needs a config file\n${CHECK_USAGE}`);
  if (extra.length > 0)
    fail(`floodgate check takes one config file, got ${parsed.positionals.length}\n${CHECK_USAGE}`);
  const config = loadOrExit(file);
  console.log(`${file}: valid`);
  for (const warning of configWarnings(config)) console.log(`warning: ${formatWarning(warning)}`);
  console.log(describe(config));
}

async function serve(args: string[]): Promise<void> {
  let values: { config?: string };
  try {
    ({ values } = parseArgs({ args, options: { config: { type: "string", short: "c" } }, strict: true }));
  } catch (err) {
    fail(`${err instanceof Error ? err.message : String(err)}\n${USAGE}`);
  }
  const file = values.config ?? "config/gateway.yaml";
  const config = loadOrExit(file);
  const gateway = buildGateway(config, { configFile: file });
  for (const warning of configWarnings(config)) gateway.app.log.warn(`config: ${formatWarning(warning)}`);
  const { url, adminUrl } = await listenOrExit(gateway, { main: "listen.port", admin: "admin.port", file });
  gateway.app.log.info({ url, adminUrl, config: file }, "floodgate listening");
  shutdownOnSignal(gateway);
}

function loadOrExit(file: string): GatewayConfig {
  try {
    return loadConfigFile(file);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

function fail(message: string): never {
  console.error(message);
  process.exit(2);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  // Written synchronously: the process exits on the next line.
  const logger = createLogger({ level: "info", accessLog: false }, pino.destination({ dest: 2, sync: true }));
  logger.fatal({ err }, "floodgate failed to start");
  process.exit(1);
});
