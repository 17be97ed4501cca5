/**
 * A port another process holds is an operator's mistake, not a crash: one line that names the
 * address, the setting that chose it and the fix, instead of a stack.
 */
import type { Gateway } from "./app.js";

/** Where each listener's port is set, as the operator would look for it. */
export interface PortSettings {
  /** e.g. "listen.port" in a config file, or the "--port" flag. */
  main: string;
  admin: string;
  /** The config file that sets them, when there is one. */
  file?: string;
}

/** The message for a listen that failed because the address is taken; undefined for any other failure. */
export function addressInUseMessage(
  err: unknown,
  gateway: Gateway,
  settings: PortSettings,
): string | undefined {
  const e = err as { code?: unknown; address?: unknown; port?: unknown } | null;
  if (e === null || typeof e !== "object" || e.code !== "EADDRINUSE") return undefined;
  const { listen, admin } = gateway.config;
  // The admin port cannot equal the main one (a config error), so the port tells which it was.
  const isAdmin = admin.enabled && e.port === admin.port && e.port !== listen.port;
  const host = typeof e.address === "string" ? e.address : isAdmin ? admin.host : listen.host;
  const port = typeof e.port === "number" ? e.port : isAdmin ? admin.port : listen.port;
  const setting = isAdmin ? settings.admin : settings.main;
  const where = settings.file === undefined ? setting : `${setting} in ${settings.file}`;
  return (
    `floodgate: cannot listen on ${host}:${port} (${where}): another process holds that port; ` +
    `set another ${setting}, or stop the process that holds it`
  );
}

/** gateway.listen(), exiting with 1 and one line when a port is taken. */
export async function listenOrExit(
  gateway: Gateway,
  settings: PortSettings,
): Promise<{ url: string; adminUrl: string | undefined }> {
  try {
    return await gateway.listen();
  } catch (err) {
    const message = addressInUseMessage(err, gateway, settings);
    if (message === undefined) throw err;
    console.error(message);
    process.exit(1);
  }
}
