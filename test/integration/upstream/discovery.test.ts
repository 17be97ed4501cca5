/** Discovery through node:dns (c-ares) against a real DNS server on UDP, whose records change at run time. */
import { createSocket } from "node:dgram";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  createResolver,
  type DiscoveryChange,
  type DiscoverySpec,
  DnsDiscovery,
  type DnsResolverLike,
  targetKey,
} from "../../../src/upstream/discovery.js";
import { QTYPE, startDnsServer, type TestDnsServer } from "../../helpers/dns-server.js";
import { eventually } from "../../helpers/eventually.js";

/** For the silent server only: there the timeout is the one way out, whatever the machine's speed. */
const TIMEOUT_MS = 200;
/** Timer lag allowed past it on a busy machine. */
const LAG = 1000;

let dns: TestDnsServer;
/** A generous timeout: the stub server shares the test's event loop, and a stall delays it. */
let resolver: DnsResolverLike;
let short: DnsResolverLike;
const live: DnsDiscovery[] = [];

beforeAll(async () => {
  dns = await startDnsServer();
  resolver = createResolver([dns.address], 5000);
  short = createResolver([dns.address], TIMEOUT_MS);
});

afterAll(async () => {
  await dns.close();
});

afterEach(() => {
  for (const d of live.splice(0)) d.stop();
  dns.mode("answer");
});

function discover(spec: Partial<DiscoverySpec> & { hostname: string }, through = resolver) {
  const changes: DiscoveryChange[] = [];
  const logs: { msg: string; err?: unknown }[] = [];
  const discovery = new DnsDiscovery(
    { port: 8000, mode: "dns", refreshMs: 60_000, ...spec },
    through,
    (c) => changes.push(c),
    (msg, err) => logs.push({ msg, err }),
  );
  live.push(discovery);
  return { discovery, changes, logs };
}

const keys = (targets: readonly { address: string; port: number }[]) => targets.map(targetKey);

describe("createResolver against the stub DNS server", () => {
  it("answers A, AAAA and SRV, and NXDOMAIN / NODATA with the node:dns codes", async () => {
    dns.set("plain.test", { a: ["10.0.0.1"], aaaa: ["fd00::1"] });
    dns.set("_x._tcp.plain.test", { srv: [{ priority: 1, weight: 2, port: 8443, target: "plain.test" }] });
    expect(await resolver.resolve4("plain.test")).toEqual(["10.0.0.1"]);
    expect(await resolver.resolve6("plain.test")).toEqual(["fd00::1"]);
    expect(await resolver.resolveSrv("_x._tcp.plain.test")).toEqual([
      { name: "plain.test", port: 8443, priority: 1, weight: 2 },
    ]);
    await expect(resolver.resolve4("missing.test")).rejects.toMatchObject({ code: "ENOTFOUND" });
    await expect(resolver.resolve4("_x._tcp.plain.test")).rejects.toMatchObject({ code: "ENODATA" });
  });

  it("gives up on a silent server at the timeout, with ETIMEOUT", async () => {
    dns.mode("silent");
    const started = Date.now();
    await expect(short.resolve4("plain.test")).rejects.toMatchObject({ code: "ETIMEOUT" });
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(TIMEOUT_MS - 20);
    expect(elapsed).toBeLessThan(TIMEOUT_MS + LAG);
  });

  it("reports SERVFAIL as ESERVFAIL", async () => {
    dns.mode("servfail");
    await expect(resolver.resolve4("plain.test")).rejects.toMatchObject({ code: "ESERVFAIL" });
  });
});

describe("the stub DNS server", () => {
  function ask(packet: Buffer): Promise<Buffer | undefined> {
    const socket = createSocket("udp4");
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        socket.close();
        resolve(undefined);
      }, 300);
      socket.once("message", (msg) => {
        clearTimeout(timer);
        socket.close();
        resolve(msg);
      });
      socket.send(packet, dns.port, "127.0.0.1");
    });
  }
  const header = (id: number, qdcount: number) =>
    Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, qdcount, 0, 0, 0, 0, 0, 0]);

  it("answers FORMERR to a name whose pointer loops, drops runts, and keeps serving", async () => {
    const looping = Buffer.concat([header(0x1234, 1), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
    const reply = await ask(looping);
    expect(reply?.readUInt16BE(0)).toBe(0x1234);
    expect((reply?.readUInt16BE(2) ?? 0) & 0x0f).toBe(1);
    expect(await ask(Buffer.from([1, 2, 3]))).toBeUndefined();
    dns.set("still.test", { a: ["10.9.0.1"] });
    expect(await resolver.resolve4("still.test")).toEqual(["10.9.0.1"]);
  });
});

describe("DnsDiscovery over real DNS", () => {
  it("reports A records added and removed at run time", async () => {
    dns.set("a.test", { a: ["10.0.0.1"] });
    const { discovery, changes } = discover({ hostname: "a.test" });
    await discovery.start();
    expect(keys(discovery.targets)).toEqual(["10.0.0.1:8000"]);

    dns.set("a.test", { a: ["10.0.0.1", "10.0.0.2", "10.0.0.3"] });
    await discovery.refresh();
    expect(keys(changes.at(-1)!.added)).toEqual(["10.0.0.2:8000", "10.0.0.3:8000"]);

    dns.set("a.test", { a: ["10.0.0.3"] });
    await discovery.refresh();
    expect(keys(changes.at(-1)!.removed)).toEqual(["10.0.0.1:8000", "10.0.0.2:8000"]);
    expect(keys(discovery.targets)).toEqual(["10.0.0.3:8000"]);

    await discovery.refresh();
    expect(changes).toHaveLength(3);
  });

  it("reports AAAA records, IPv6 without brackets", async () => {
    dns.set("v6.test", { aaaa: ["fd00::2", "::1"], a: ["127.0.0.1"] });
    const { discovery, changes } = discover({ hostname: "v6.test", port: 9000 });
    await discovery.start();
    expect(changes[0]!.current).toEqual([
      { address: "127.0.0.1", port: 9000 },
      { address: "::1", port: 9000 },
      { address: "fd00::2", port: 9000 },
    ]);
  });

  it("expands SRV records into their targets' addresses and ports", async () => {
    dns.set("_http._tcp.svc.test", {
      srv: [
        { priority: 10, weight: 5, port: 8001, target: "node-1.svc.test" },
        { priority: 10, weight: 5, port: 8002, target: "node-2.svc.test" },
        { priority: 20, weight: 5, port: 9999, target: "spare.svc.test" },
      ],
    });
    dns.set("node-1.svc.test", { a: ["10.1.0.1"], aaaa: ["fd01::1"] });
    dns.set("node-2.svc.test", { a: ["10.1.0.2"] });
    dns.set("spare.svc.test", { a: ["10.1.0.9"] });
    const { discovery, changes } = discover({ hostname: "_http._tcp.svc.test", mode: "srv" });
    await discovery.start();
    expect(keys(discovery.targets)).toEqual(["10.1.0.1:8001", "10.1.0.2:8002", "[fd01::1]:8001"]);

    // A port change in the SRV record (a redeploy on another port) is a remove plus an add.
    dns.set("_http._tcp.svc.test", {
      srv: [{ priority: 10, weight: 5, port: 8003, target: "node-2.svc.test" }],
    });
    await discovery.refresh();
    expect(keys(changes.at(-1)!.added)).toEqual(["10.1.0.2:8003"]);
    expect(keys(changes.at(-1)!.removed)).toEqual(["10.1.0.1:8001", "10.1.0.2:8002", "[fd01::1]:8001"]);
  });

  it("keeps the set while the server is silent (timeouts), then follows it again", async () => {
    dns.set("quiet.test", { a: ["10.2.0.1", "10.2.0.2"] });
    const { discovery, changes, logs } = discover({ hostname: "quiet.test" }, short);
    // An answer may miss the short timeout on a busy machine: ask again until it arrives.
    await discovery.start().catch(() => undefined);
    await eventually(async () => {
      if (discovery.targets.length < 2) await discovery.refresh();
      return discovery.targets.length === 2;
    });

    dns.mode("silent");
    dns.set("quiet.test", { a: ["10.2.0.3"] });
    const started = Date.now();
    await discovery.refresh();
    expect(Date.now() - started).toBeLessThan(TIMEOUT_MS + LAG);
    expect(keys(discovery.targets)).toEqual(["10.2.0.1:8000", "10.2.0.2:8000"]);
    expect(changes).toHaveLength(1);
    expect(logs.at(-1)!.msg).toContain("ETIMEOUT");

    dns.mode("answer");
    await eventually(async () => {
      await discovery.refresh();
      return keys(discovery.targets).join() === "10.2.0.3:8000";
    });
  });

  it("keeps the set on SERVFAIL", async () => {
    dns.set("_http._tcp.flaky.test", { srv: [{ priority: 0, weight: 1, port: 7000, target: "flaky.test" }] });
    dns.set("flaky.test", { a: ["10.3.0.1"] });
    const { discovery, changes, logs } = discover({ hostname: "_http._tcp.flaky.test", mode: "srv" });
    await discovery.start();

    dns.mode("servfail");
    dns.remove("_http._tcp.flaky.test");
    await discovery.refresh();
    expect(keys(discovery.targets)).toEqual(["10.3.0.1:7000"]);
    expect(changes).toHaveLength(1);
    expect(logs.at(-1)!.msg).toContain("ESERVFAIL");
  });

  it("empties the set on NXDOMAIN", async () => {
    dns.set("gone.test", { a: ["10.4.0.1"] });
    const { discovery, changes } = discover({ hostname: "gone.test" });
    await discovery.start();
    dns.remove("gone.test");
    await discovery.refresh();
    expect(discovery.targets).toEqual([]);
    expect(keys(changes.at(-1)!.removed)).toEqual(["10.4.0.1:8000"]);
  });

  it("start() rejects when DNS never answers, and refreshes on its timer", async () => {
    dns.set("late.test", { a: ["10.5.0.1"] });
    dns.mode("silent");
    const { discovery, changes } = discover({ hostname: "late.test", refreshMs: 100 });
    await expect(discovery.start()).rejects.toThrow(/late\.test.*ETIMEOUT/);
    dns.mode("answer");
    await expect.poll(() => changes.length, { timeout: 2000, interval: 20 }).toBe(1);
    expect(keys(discovery.targets)).toEqual(["10.5.0.1:8000"]);
    const asked = dns.queries.filter((q) => q.name === "late.test" && q.type === QTYPE.A).length;
    expect(asked).toBeGreaterThanOrEqual(2);
  });
});
