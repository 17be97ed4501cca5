import closeWithGrace from "close-with-grace";
import type { Gateway } from "./app.js";

/**
 * SIGTERM/SIGINT: /readyz turns 503 and new requests are refused, in-flight requests and
 * streams run to their end within server.shutdownGrace, then the process exits. A second
 * signal, or the grace running out, exits at once. SIGHUP reloads the config instead
 * (src/reload.ts); its report goes to the log.
 */
export function shutdownOnSignal(gateway: Gateway, alsoClose: () => Promise<void> = async () => {}): void {
  closeWithGrace(
    { delay: gateway.config.server.shutdownGrace, skip: ["SIGHUP"] },
    async ({ signal, err }) => {
      if (err) gateway.app.log.error({ err }, "fatal error, shutting down");
      else gateway.app.log.info({ signal }, "shutting down: draining in-flight requests");
      await gateway.close();
      await alsoClose();
    },
  );
  process.on("SIGHUP", () => void gateway.reload("SIGHUP"));
}
