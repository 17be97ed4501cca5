/** A listener whose port another process holds: which setting chose it, from a real failed listen. */
import { createServer, type Server } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildGateway } from "../../../src/app.js";
import { parseConfig } from "../../../src/config/index.js";
import { addressInUseMessage } from "../../../src/listen-error.js";

let holder: Server;
let busy: number;

beforeAll(async () => {
  holder = createServer();
  await new Promise<void>((resolve) => holder.listen(0, "127.0.0.1", resolve));
  busy = (holder.address() as { port: number }).port;
});
afterAll(() => {
  holder.close();
});

const POOL = `pools: { x: { models: [m], backends: [{ url: "http://127.0.0.1:1" }], healthCheck: { enabled: false }, loadSignals: { enabled: false } } }
log: { level: silent }
`;

async function failedListen(yaml: string) {
  const gateway = buildGateway(parseConfig(`${yaml}${POOL}`, "test config", {}), { processMetrics: false });
  try {
    const err = await gateway.listen().then(
      () => undefined,
      (e: unknown) => e,
    );
    return { err, message: addressInUseMessage(err, gateway, { main: "--port", admin: "--admin-port" }) };
  } finally {
    await gateway.close();
  }
}

describe("a port another process holds", () => {
  it("on the admin listener, names admin's address and setting", async () => {
    const { message } = await failedListen(
      `listen: { host: 127.0.0.1, port: 0 }\nadmin: { host: 127.0.0.1, port: ${busy} }\n`,
    );
    expect(message).toBe(
      `floodgate: cannot listen on 127.0.0.1:${busy} (--admin-port): another process holds that port; set another --admin-port, or stop the process that holds it`,
    );
  });

  it("on the main listener, names its setting; any other failure is left to the caller", async () => {
    const { message } = await failedListen(
      `listen: { host: 127.0.0.1, port: ${busy} }\nadmin: { port: 0 }\n`,
    );
    expect(message).toContain(`127.0.0.1:${busy} (--port)`);
    const gateway = buildGateway(parseConfig(`admin: { port: 0 }\n${POOL}`, "test config", {}));
    expect(addressInUseMessage(new Error("boom"), gateway, { main: "--port", admin: "--admin-port" })).toBe(
      undefined,
    );
    await gateway.close();
  });
});
