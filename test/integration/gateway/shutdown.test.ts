/**
 * Closing the gateway does not wait on a connection that never sent a byte (a client's spare
 * keep-alive socket, a load balancer's pre-opened connection): Node counts such a socket as
 * awaiting its request head, so closeIdleConnections() leaves it to headersTimeout.
 */
import { connect, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { startSim } from "../../../src/sim/index.js";
import { poolYaml, type RunningGateway, startGateway } from "../../helpers/gateway.js";

describe("shutdown", () => {
  let gw: RunningGateway | undefined;
  let stop: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await gw?.close().catch(() => {});
    await stop?.();
    gw = undefined;
  });

  it("closes at once with a silent connection and an idle keep-alive one open", async () => {
    const sim = await startSim({ models: ["sim-model"] });
    stop = () => sim.close();
    // headersTimeout far beyond the test's own timeout: waiting on it would fail the test.
    gw = await startGateway(
      `server: { headersTimeout: 10m, requestTimeout: 10m }\n${poolYaml([sim.url], { model: "sim-model" })}`,
    );
    const { port } = new URL(gw.url);
    const open = (): Promise<Socket> =>
      new Promise((resolve, reject) => {
        const s = connect(Number(port), "127.0.0.1", () => resolve(s));
        s.once("error", reject);
      });
    const closed = (s: Socket) => new Promise<void>((resolve) => s.once("close", () => resolve()));

    const silent = await open();
    const idle = await open();
    // One answered request on `idle`, which then sits in keep-alive.
    const answered = new Promise<string>((resolve) => {
      let text = "";
      idle.on("data", (chunk: Buffer) => {
        text += chunk.toString();
        if (text.includes("\r\n\r\n")) resolve(text);
      });
    });
    idle.write(`GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect((await answered).split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
    const bothClosed = Promise.all([closed(silent), closed(idle)]);

    const order: string[] = [];
    await Promise.race([
      gw.gateway.close().then(() => order.push("gateway closed")),
      new Promise((resolve) => setTimeout(resolve, 20_000)).then(() => order.push("20 s passed")),
    ]);
    await bothClosed;
    order.push("sockets closed");
    expect(order).toEqual(["gateway closed", "sockets closed"]);
  });
});
