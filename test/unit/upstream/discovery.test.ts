import { afterEach, describe, expect, it, vi } from "vitest";
import {
  type DiscoveryChange,
  type DiscoverySpec,
  DnsDiscovery,
  type DnsResolverLike,
  targetKey,
} from "../../../src/upstream/discovery.js";

interface SrvAnswer {
  name: string;
  port: number;
  priority: number;
  weight: number;
}

interface Entry {
  a?: string[];
  aaaa?: string[];
  srv?: SrvAnswer[];
}

function dnsError(code: string): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(`query failed: ${code}`);
  err.code = code;
  return err;
}

/**
 * A resolver answering from a table with the error codes node:dns uses: ENOTFOUND for an unknown name
 * (NXDOMAIN), ENODATA for a known name without records of the type, or a code injected per query.
 */
class TableResolver implements DnsResolverLike {
  readonly names = new Map<string, Entry>();
  /** "A api.test" → the error code that query fails with. */
  readonly failures = new Map<string, string>();
  readonly calls: string[] = [];
  /** While set, every query waits for it, to hold a resolution in flight. */
  gate: Promise<void> | undefined;

  resolve4(hostname: string): Promise<string[]> {
    return this.answer("A", hostname, (e) => e.a);
  }
  resolve6(hostname: string): Promise<string[]> {
    return this.answer("AAAA", hostname, (e) => e.aaaa);
  }
  resolveSrv(hostname: string): Promise<SrvAnswer[]> {
    return this.answer("SRV", hostname, (e) => e.srv);
  }

  private async answer<T>(type: string, name: string, pick: (e: Entry) => T[] | undefined): Promise<T[]> {
    this.calls.push(`${type} ${name}`);
    // The answer is taken when asked, like a server would, even if it arrives only once the gate opens.
    const answer = this.lookupNow(type, name, pick);
    await this.gate;
    if (answer instanceof Error) throw answer;
    return answer;
  }

  private lookupNow<T>(type: string, name: string, pick: (e: Entry) => T[] | undefined): T[] | Error {
    const code = this.failures.get(`${type} ${name}`);
    if (code !== undefined) return dnsError(code);
    const entry = this.names.get(name);
    if (entry === undefined) return dnsError("ENOTFOUND");
    const values = pick(entry);
    if (values === undefined || values.length === 0) return dnsError("ENODATA");
    return [...values];
  }
}

const live: DnsDiscovery[] = [];

function setup(spec: Partial<DiscoverySpec> = {}) {
  const resolver = new TableResolver();
  const changes: DiscoveryChange[] = [];
  const logs: { msg: string; err?: unknown }[] = [];
  const discovery = new DnsDiscovery(
    // Far enough that no timer refresh runs in the middle of a test that did not ask for one.
    { hostname: "api.test", port: 8000, mode: "dns", refreshMs: 60_000, ...spec },
    resolver,
    (c) => changes.push(c),
    (msg, err) => logs.push({ msg, err }),
  );
  live.push(discovery);
  return { resolver, changes, logs, discovery };
}

const keys = (targets: readonly { address: string; port: number }[]) => targets.map(targetKey);

const srv = (name: string, port: number, priority = 0, weight = 1): SrvAnswer => ({
  name,
  port,
  priority,
  weight,
});

afterEach(() => {
  for (const d of live.splice(0)) d.stop();
  vi.useRealTimers();
});

describe("targetKey", () => {
  it("brackets IPv6 addresses only", () => {
    expect(targetKey({ address: "10.0.0.1", port: 8000 })).toBe("10.0.0.1:8000");
    expect(targetKey({ address: "::1", port: 8000 })).toBe("[::1]:8000");
    expect(targetKey({ address: "fd00::1:2", port: 443 })).toBe("[fd00::1:2]:443");
  });
});

describe("DnsDiscovery, A/AAAA", () => {
  it("reports the first resolution as additions, sorted: IPv4 numerically, then IPv6", async () => {
    const { resolver, changes, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.10", "10.0.0.2"], aaaa: ["fd00::2", "fd00::1"] });
    await discovery.start();
    const expected = ["10.0.0.2:8000", "10.0.0.10:8000", "[fd00::1]:8000", "[fd00::2]:8000"];
    expect(changes).toHaveLength(1);
    expect(keys(changes[0]!.added)).toEqual(expected);
    expect(changes[0]!.removed).toEqual([]);
    expect(keys(changes[0]!.current)).toEqual(expected);
    expect(keys(discovery.targets)).toEqual(expected);
    expect(resolver.calls.sort()).toEqual(["A api.test", "AAAA api.test"]);
  });

  it("accepts a single-stack name: no AAAA (ENODATA) is not a failure", async () => {
    const { resolver, changes, logs, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    await discovery.start();
    expect(keys(discovery.targets)).toEqual(["10.0.0.1:8000"]);
    expect(changes).toHaveLength(1);
    expect(logs).toEqual([]);
  });

  it("reports an added address, then a removed one, and nothing when only the order changed", async () => {
    const { resolver, changes, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    await discovery.start();

    resolver.names.set("api.test", { a: ["10.0.0.1", "10.0.0.2"] });
    await discovery.refresh();
    expect(changes).toHaveLength(2);
    expect(keys(changes[1]!.added)).toEqual(["10.0.0.2:8000"]);
    expect(changes[1]!.removed).toEqual([]);
    expect(keys(changes[1]!.current)).toEqual(["10.0.0.1:8000", "10.0.0.2:8000"]);

    resolver.names.set("api.test", { a: ["10.0.0.2", "10.0.0.1"] });
    await discovery.refresh();
    expect(changes).toHaveLength(2);

    resolver.names.set("api.test", { a: ["10.0.0.2"] });
    await discovery.refresh();
    expect(changes).toHaveLength(3);
    expect(changes[2]!.added).toEqual([]);
    expect(keys(changes[2]!.removed)).toEqual(["10.0.0.1:8000"]);
    expect(keys(discovery.targets)).toEqual(["10.0.0.2:8000"]);
  });

  it("reports an address replaced by another as one change with both sides", async () => {
    const { resolver, changes, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"], aaaa: ["::1"] });
    await discovery.start();
    resolver.names.set("api.test", { a: ["10.0.0.3"], aaaa: ["::1"] });
    await discovery.refresh();
    expect(changes[1]).toEqual({
      added: [{ address: "10.0.0.3", port: 8000 }],
      removed: [{ address: "10.0.0.1", port: 8000 }],
      current: [
        { address: "10.0.0.3", port: 8000 },
        { address: "::1", port: 8000 },
      ],
    });
  });

  it.each(["ETIMEOUT", "ESERVFAIL", "ECONNREFUSED", "EREFUSED"])(
    "keeps the previous set when both queries fail with %s, and logs",
    async (code) => {
      const { resolver, changes, logs, discovery } = setup();
      resolver.names.set("api.test", { a: ["10.0.0.1", "10.0.0.2"] });
      await discovery.start();
      resolver.failures.set("A api.test", code);
      resolver.failures.set("AAAA api.test", code);
      await discovery.refresh();
      expect(changes).toHaveLength(1);
      expect(keys(discovery.targets)).toEqual(["10.0.0.1:8000", "10.0.0.2:8000"]);
      expect(logs).toHaveLength(1);
      expect(logs[0]!.msg).toContain(code);
      expect(logs[0]!.msg).toContain("keeping 2");
      expect(logs[0]!.err).toMatchObject({ code });
    },
  );

  it("on a partial failure adds what it saw but removes nothing", async () => {
    const { resolver, changes, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"], aaaa: ["::1"] });
    await discovery.start();
    // A answers (10.0.0.1 gone, 10.0.0.2 new) but AAAA times out: nothing can be trusted to be gone.
    resolver.names.set("api.test", { a: ["10.0.0.2"] });
    resolver.failures.set("AAAA api.test", "ETIMEOUT");
    await discovery.refresh();
    expect(changes).toHaveLength(2);
    expect(keys(changes[1]!.added)).toEqual(["10.0.0.2:8000"]);
    expect(changes[1]!.removed).toEqual([]);

    // Once DNS answers fully again, the stale ones go.
    resolver.failures.clear();
    await discovery.refresh();
    expect(keys(changes[2]!.removed)).toEqual(["10.0.0.1:8000", "[::1]:8000"]);
    expect(keys(discovery.targets)).toEqual(["10.0.0.2:8000"]);
  });

  it("empties the set on NXDOMAIN (the service was removed) and fills it again when it comes back", async () => {
    const { resolver, changes, logs, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"], aaaa: ["::1"] });
    await discovery.start();
    resolver.names.delete("api.test");
    await discovery.refresh();
    expect(changes).toHaveLength(2);
    expect(keys(changes[1]!.removed)).toEqual(["10.0.0.1:8000", "[::1]:8000"]);
    expect(changes[1]!.current).toEqual([]);
    expect(discovery.targets).toEqual([]);
    expect(logs.map((l) => l.msg).join()).toContain("no dns records");

    resolver.names.set("api.test", { a: ["10.0.0.5"] });
    await discovery.refresh();
    expect(keys(changes[2]!.added)).toEqual(["10.0.0.5:8000"]);
  });

  it("empties the set when the name exists with no address records (NODATA: scaled to zero)", async () => {
    const { resolver, changes, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    await discovery.start();
    resolver.names.set("api.test", {});
    await discovery.refresh();
    expect(changes[1]!.current).toEqual([]);
  });

  it("start() rejects when the first resolution fails and finds nothing, and keeps trying", async () => {
    vi.useFakeTimers();
    const { resolver, changes, discovery } = setup({ refreshMs: 1000 });
    resolver.failures.set("A api.test", "ETIMEOUT");
    resolver.failures.set("AAAA api.test", "ESERVFAIL");
    await expect(discovery.start()).rejects.toThrow(/api\.test.*ETIMEOUT/);
    expect(discovery.targets).toEqual([]);

    resolver.failures.clear();
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    await vi.advanceTimersByTimeAsync(1100);
    expect(keys(discovery.targets)).toEqual(["10.0.0.1:8000"]);
    expect(changes).toHaveLength(1);
  });

  it("start() resolves with what a partly failed first resolution found", async () => {
    const { resolver, discovery, logs } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    resolver.failures.set("AAAA api.test", "ETIMEOUT");
    await discovery.start();
    expect(keys(discovery.targets)).toEqual(["10.0.0.1:8000"]);
    expect(logs).toHaveLength(1);
  });

  it("start() resolves with an empty set on NXDOMAIN, without a change", async () => {
    const { changes, discovery } = setup();
    await discovery.start();
    expect(discovery.targets).toEqual([]);
    expect(changes).toEqual([]);
  });

  it("takes an IP literal as its own single target without asking DNS", async () => {
    const { resolver, discovery } = setup({ hostname: "10.1.2.3" });
    await discovery.start();
    expect(keys(discovery.targets)).toEqual(["10.1.2.3:8000"]);
    expect(resolver.calls).toEqual([]);
  });

  it("rejects a bad spec at construction", () => {
    const resolver = new TableResolver();
    const make = (spec: Partial<DiscoverySpec>) => () =>
      new DnsDiscovery(
        { hostname: "a.test", port: 80, mode: "dns", refreshMs: 1000, ...spec },
        resolver,
        () => {},
      );
    expect(make({ hostname: "" })).toThrow(TypeError);
    expect(make({ refreshMs: 0 })).toThrow(RangeError);
    expect(make({ port: 0 })).toThrow(RangeError);
    expect(make({ port: 0, mode: "srv" })).not.toThrow();
  });
});

describe("DnsDiscovery, SRV", () => {
  const spec = { hostname: "_http._tcp.api.test", mode: "srv" } as const;

  it("expands each target to its A and AAAA addresses with the record's port", async () => {
    const { resolver, changes, discovery } = setup(spec);
    resolver.names.set("_http._tcp.api.test", {
      srv: [srv("node-b.test", 9001), srv("node-a.test", 9000), srv("node-a.test", 9002)],
    });
    resolver.names.set("node-a.test", { a: ["10.0.0.1"], aaaa: ["fd00::1"] });
    resolver.names.set("node-b.test", { a: ["10.0.0.2"] });
    await discovery.start();
    expect(keys(changes[0]!.current)).toEqual([
      "10.0.0.1:9000",
      "10.0.0.1:9002",
      "10.0.0.2:9001",
      "[fd00::1]:9000",
      "[fd00::1]:9002",
    ]);
    // node-a is named twice but asked about once.
    expect(resolver.calls.filter((c) => c.endsWith("node-a.test"))).toHaveLength(2);
  });

  it("uses only the lowest priority value, and skips '.' targets", async () => {
    const { resolver, discovery } = setup(spec);
    resolver.names.set("_http._tcp.api.test", {
      srv: [
        srv("backup.test", 9000, 10),
        srv("main-1.test", 8000, 1),
        srv("main-2.test", 8000, 1),
        srv("", 1, 0),
      ],
    });
    resolver.names.set("main-1.test", { a: ["10.0.0.1"] });
    resolver.names.set("main-2.test", { a: ["10.0.0.2"] });
    resolver.names.set("backup.test", { a: ["10.9.9.9"] });
    await discovery.start();
    expect(keys(discovery.targets)).toEqual(["10.0.0.1:8000", "10.0.0.2:8000"]);
    expect(resolver.calls).not.toContain("A backup.test");
  });

  it("falls back to the next priority only when the lower one has no address at all", async () => {
    const { resolver, discovery } = setup(spec);
    resolver.names.set("_http._tcp.api.test", {
      srv: [srv("gone.test", 8000, 0), srv("backup.test", 9000, 5)],
    });
    resolver.names.set("backup.test", { a: ["10.9.9.9"] });
    await discovery.start();
    expect(keys(discovery.targets)).toEqual(["10.9.9.9:9000"]);
  });

  it("does not fall back when the lower priority's lookups failed: keeps the previous set", async () => {
    const { resolver, changes, discovery } = setup(spec);
    resolver.names.set("_http._tcp.api.test", {
      srv: [srv("main.test", 8000, 0), srv("backup.test", 9000, 5)],
    });
    resolver.names.set("main.test", { a: ["10.0.0.1"] });
    resolver.names.set("backup.test", { a: ["10.9.9.9"] });
    await discovery.start();
    resolver.failures.set("A main.test", "ETIMEOUT");
    resolver.failures.set("AAAA main.test", "ETIMEOUT");
    await discovery.refresh();
    expect(changes).toHaveLength(1);
    expect(keys(discovery.targets)).toEqual(["10.0.0.1:8000"]);
  });

  it("keeps the previous set when the SRV query fails, empties it on NXDOMAIN", async () => {
    const { resolver, changes, discovery } = setup(spec);
    resolver.names.set("_http._tcp.api.test", { srv: [srv("main.test", 8000)] });
    resolver.names.set("main.test", { a: ["10.0.0.1"] });
    await discovery.start();

    resolver.failures.set("SRV _http._tcp.api.test", "ESERVFAIL");
    await discovery.refresh();
    expect(keys(discovery.targets)).toEqual(["10.0.0.1:8000"]);
    expect(changes).toHaveLength(1);

    resolver.failures.clear();
    resolver.names.delete("_http._tcp.api.test");
    await discovery.refresh();
    expect(discovery.targets).toEqual([]);
    expect(changes).toHaveLength(2);
  });

  it("follows a target moving to a new address and port", async () => {
    const { resolver, changes, discovery } = setup(spec);
    resolver.names.set("_http._tcp.api.test", { srv: [srv("main.test", 8000)] });
    resolver.names.set("main.test", { a: ["10.0.0.1"] });
    await discovery.start();
    resolver.names.set("_http._tcp.api.test", { srv: [srv("main.test", 8001)] });
    await discovery.refresh();
    expect(keys(changes[1]!.added)).toEqual(["10.0.0.1:8001"]);
    expect(keys(changes[1]!.removed)).toEqual(["10.0.0.1:8000"]);
  });
});

describe("DnsDiscovery, timing and concurrency", () => {
  it("refreshes every refreshMs within ±10% jitter, and not after stop()", async () => {
    vi.useFakeTimers();
    const { resolver, changes, discovery } = setup({ refreshMs: 1000 });
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    await discovery.start();

    resolver.names.set("api.test", { a: ["10.0.0.2"] });
    await vi.advanceTimersByTimeAsync(899);
    expect(changes).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(202);
    expect(changes).toHaveLength(2);

    resolver.names.set("api.test", { a: ["10.0.0.3"] });
    await vi.advanceTimersByTimeAsync(1101);
    expect(changes).toHaveLength(3);

    discovery.stop();
    const calls = resolver.calls.length;
    resolver.names.set("api.test", { a: ["10.0.0.4"] });
    await vi.advanceTimersByTimeAsync(5000);
    expect(changes).toHaveLength(3);
    expect(resolver.calls).toHaveLength(calls);
  });

  it("reports nothing from a resolution that finishes after stop()", async () => {
    const { resolver, changes, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    let open = () => {};
    resolver.gate = new Promise((resolve) => {
      open = resolve;
    });
    const starting = discovery.start();
    discovery.stop();
    open();
    await starting;
    expect(changes).toEqual([]);
  });

  it("a refresh asked during a running one runs after it, and callers asking meanwhile share it", async () => {
    const { resolver, changes, discovery } = setup();
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    await discovery.start();
    let open = () => {};
    resolver.gate = new Promise((resolve) => {
      open = resolve;
    });
    const first = discovery.refresh(); // in flight, holding the old table
    await Promise.resolve();
    resolver.names.set("api.test", { a: ["10.0.0.2"] });
    const second = discovery.refresh();
    const third = discovery.refresh();
    resolver.gate = undefined;
    open();
    await Promise.all([first, second, third]);
    // start + one running + one queued run shared by the second and third callers.
    expect(resolver.calls.filter((c) => c === "A api.test")).toHaveLength(3);
    // The running one saw the old table; the change was found by the queued one.
    expect(changes).toHaveLength(2);
    expect(keys(changes[1]!.current)).toEqual(["10.0.0.2:8000"]);
  });

  it("logs a throwing listener and keeps going", async () => {
    const resolver = new TableResolver();
    const logs: string[] = [];
    let calls = 0;
    const discovery = new DnsDiscovery(
      { hostname: "api.test", port: 80, mode: "dns", refreshMs: 60_000 },
      resolver,
      () => {
        calls++;
        throw new Error("listener bug");
      },
      (msg) => logs.push(msg),
    );
    resolver.names.set("api.test", { a: ["10.0.0.1"] });
    await discovery.start();
    resolver.names.set("api.test", { a: ["10.0.0.2"] });
    await discovery.refresh();
    expect(calls).toBe(2);
    expect(keys(discovery.targets)).toEqual(["10.0.0.2:80"]);
    expect(logs.filter((l) => l.includes("listener threw"))).toHaveLength(2);
  });
});
