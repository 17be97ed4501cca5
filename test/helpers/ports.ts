/** Ports for servers a test starts outside Node (nginx, redis-server) or on a chosen address. */
import { createServer } from "node:net";

/**
 * A port the OS just handed out on `host` (or checks that `port` is free there), free again
 * once the probe closes.
 */
export function freePort(port = 0, host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen(port, host, () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === "object") resolve(address.port);
        else reject(new Error("no port"));
      });
    });
  });
}
