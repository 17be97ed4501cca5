/**
 * DNS service discovery: a backend given as a DNS name stands for one backend per address the name
 * currently resolves to, re-resolved every refreshMs. This module only keeps the current target set
 * and reports what changed; the pool creates and drains backends (and keeps their state) from that.
 *
 * Resolution rules
 * - mode "dns": A and AAAA of the hostname, asked together; every address gets spec.port. A family
 *   with no records (ENODATA / ENOTFOUND) contributes nothing: most services are single-stack.
 * - mode "srv": SRV of the hostname; every target name is resolved to its addresses (A + AAAA) with the
 *   record's port. Only the records of the lowest priority value are used (RFC 2782: a client must use
 *   the lowest priority it can reach; higher values are fallbacks), and the next priority only when every
 *   target of the lower one authoritatively has no address. Weights are ignored: a target carries none,
 *   the pool balances with its own. A target "." means "no service here" (RFC 2782) and is skipped.
 * - An authoritative empty answer (NXDOMAIN, or NOERROR without records, for every query) empties the
 *   set: it is how DNS says a service was scaled to zero or removed (a headless service with no ready
 *   pod, a Consul service with no passing instance), and serving from addresses that are gone would only
 *   turn into connect errors.
 * - Any other failure (timeout, SERVFAIL, REFUSED, network error), of any query, makes the answer
 *   incomplete: an incomplete answer may add the targets it did see but never removes one, so a DNS
 *   hiccup never drains a pool. It is logged.
 * - Sets are compared by targetKey, in any order; onChange is called only when the set changed, with
 *   lists sorted (IPv4 before IPv6, then address, then port) so logs and reports are stable.
 */
import { Resolver } from "node:dns/promises";
import { isIP, isIPv4 } from "node:net";

export interface DnsTarget {
  /** IPv6 addresses without brackets. */
  address: string;
  port: number;
}

/** The part of node:dns/promises Resolver discovery uses, so tests can hand in a table-driven one. */
export interface DnsResolverLike {
  resolve4(hostname: string): Promise<string[]>;
  resolve6(hostname: string): Promise<string[]>;
  resolveSrv(hostname: string): Promise<{ name: string; port: number; priority: number; weight: number }[]>;
}

export interface DiscoverySpec {
  hostname: string;
  /** The port of every address in mode "dns"; SRV records carry their own. */
  port: number;
  mode: "dns" | "srv";
  refreshMs: number;
}

export interface DiscoveryChange {
  added: DnsTarget[];
  removed: DnsTarget[];
  current: DnsTarget[];
}

export type DiscoveryLog = (msg: string, err?: unknown) => void;

const DEFAULT_TIMEOUT_MS = 2000;

/**
 * Makes a node:dns/promises Resolver, with `servers` (["127.0.0.1:5353", "[::1]:53"]) when given
 * (undefined or empty: the system's resolv.conf), and a per-query timeout.
 *
 * c-ares' own timeout is not a deadline: it backs off between tries and adapts to measured latency
 * (a silent server took 2-4× the configured value in tests), so each query also races a timer that
 * rejects with code ETIMEOUT at timeoutMs. c-ares still gets a retry inside that budget, for a lost
 * UDP packet.
 */
export function createResolver(
  servers: string[] | undefined,
  timeoutMs: number = DEFAULT_TIMEOUT_MS,
): DnsResolverLike {
  if (!(timeoutMs > 0) || !Number.isFinite(timeoutMs)) throw new RangeError(`bad DNS timeout: ${timeoutMs}`);
  const resolver = new Resolver({ timeout: Math.max(1, Math.floor(timeoutMs / 3)), tries: 2 });
  if (servers !== undefined && servers.length > 0) resolver.setServers(servers);

  const withDeadline = <T>(query: string, pending: Promise<T>): Promise<T> => {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err: NodeJS.ErrnoException = new Error(`DNS query ${query} timed out after ${timeoutMs}ms`);
        err.code = "ETIMEOUT";
        reject(err);
      }, timeoutMs);
      // A query in flight must not keep a process that is otherwise done alive.
      timer.unref();
    });
    // The race subscribes to the losing query too, so its late rejection is never "unhandled".
    return Promise.race([pending, deadline]).finally(() => clearTimeout(timer));
  };

  return {
    resolve4: (hostname) => withDeadline(`A ${hostname}`, resolver.resolve4(hostname)),
    resolve6: (hostname) => withDeadline(`AAAA ${hostname}`, resolver.resolve6(hostname)),
    resolveSrv: (hostname) => withDeadline(`SRV ${hostname}`, resolver.resolveSrv(hostname)),
  };
}

export function targetKey(t: DnsTarget): string {
  return t.address.includes(":") ? `[${t.address}]:${t.port}` : `${t.address}:${t.port}`;
}

/** NXDOMAIN and NODATA: the server answered, and the answer is "nothing". */
const AUTHORITATIVE_EMPTY = new Set(["ENOTFOUND", "ENODATA"]);

function errorCode(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err && typeof err.code === "string") {
    return err.code;
  }
  return undefined;
}

function ipv4Number(address: string): number {
  return address.split(".").reduce((n, octet) => n * 256 + Number(octet), 0);
}

function compareTargets(a: DnsTarget, b: DnsTarget): number {
  const a4 = isIPv4(a.address);
  const b4 = isIPv4(b.address);
  if (a4 !== b4) return a4 ? -1 : 1;
  if (a.address !== b.address) {
    if (a4) return ipv4Number(a.address) - ipv4Number(b.address);
    return a.address < b.address ? -1 : 1;
  }
  return a.port - b.port;
}

function sorted(targets: Iterable<DnsTarget>): DnsTarget[] {
  return [...targets].sort(compareTargets);
}

interface QueryFailure {
  /** "A api.internal", "SRV _http._tcp.api.service.consul". */
  query: string;
  error: unknown;
}

/** What one resolution found; any failure makes it incomplete. */
interface Resolution {
  targets: DnsTarget[];
  failures: QueryFailure[];
}

interface Addresses {
  addresses: string[];
  failures: QueryFailure[];
}

export class DnsDiscovery {
  private current: readonly DnsTarget[] = Object.freeze([]);
  private currentKeys = new Set<string>();
  private started = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  /** The resolution running now, and the one queued behind it (shared by every caller who asks meanwhile). */
  private running: Promise<Resolution> | undefined;
  private queued: Promise<Resolution> | undefined;

  constructor(
    private readonly spec: DiscoverySpec,
    private readonly resolver: DnsResolverLike,
    private readonly onChange: (change: DiscoveryChange) => void,
    private readonly log: DiscoveryLog = () => {},
  ) {
    if (spec.hostname === "") throw new TypeError("discovery needs a hostname");
    if (!(spec.refreshMs > 0) || !Number.isFinite(spec.refreshMs)) {
      throw new RangeError(`bad refresh interval for ${spec.hostname}: ${spec.refreshMs}`);
    }
    if (spec.mode === "dns" && !(Number.isInteger(spec.port) && spec.port > 0 && spec.port < 65536)) {
      throw new RangeError(`bad port for ${spec.hostname}: ${spec.port}`);
    }
  }

  get targets(): readonly DnsTarget[] {
    return this.current;
  }

  /**
   * First resolution (reported through onChange like any other change); resolves after it. Rejects only
   * if it failed and found nothing, which leaves the refresh timer running so the pool fills in once DNS
   * answers: call stop() to give up instead.
   */
  async start(): Promise<void> {
    if (this.started) throw new Error(`discovery of ${this.spec.hostname} already started`);
    this.started = true;
    const first = await this.refreshOnce();
    this.schedule();
    if (first.failures.length > 0 && this.current.length === 0) {
      throw new Error(`DNS discovery of ${this.spec.hostname} failed: ${describeFailures(first.failures)}`, {
        cause: first.failures[0]?.error,
      });
    }
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Re-resolve now; resolves after the change (if any) was reported. Never rejects: failures are logged. */
  async refresh(): Promise<void> {
    if (this.stopped) return;
    await this.refreshOnce();
  }

  private refreshOnce(): Promise<Resolution> {
    // A resolution that started before the caller's reason to ask (a record just changed) may miss it,
    // so join the one queued after it rather than the running one; one queued run serves every asker.
    if (this.queued !== undefined) return this.queued;
    if (this.running !== undefined) {
      this.queued = this.running.then(() => {
        this.queued = undefined;
        return this.run();
      });
      return this.queued;
    }
    return this.run();
  }

  private run(): Promise<Resolution> {
    const running = this.resolveAndApply().finally(() => {
      if (this.running === running) this.running = undefined;
    });
    this.running = running;
    return running;
  }

  private schedule(): void {
    if (this.stopped) return;
    // ±10% jitter so that replicas started together do not query DNS in lockstep forever.
    const delay = this.spec.refreshMs * (0.9 + Math.random() * 0.2);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.refreshOnce().finally(() => this.schedule());
    }, delay);
    this.timer.unref();
  }

  private async resolveAndApply(): Promise<Resolution> {
    let resolution: Resolution;
    try {
      resolution = this.spec.mode === "srv" ? await this.resolveSrv() : await this.resolveHost();
    } catch (error) {
      // Only a bug gets here (lookups catch resolver errors), and it must not drain the pool either.
      resolution = { targets: [], failures: [{ query: this.spec.hostname, error }] };
    }
    if (this.stopped) return resolution; // the pool may be gone; report nothing more
    this.apply(resolution);
    return resolution;
  }

  private apply(resolution: Resolution): void {
    const incomplete = resolution.failures.length > 0;
    const next = new Map<string, DnsTarget>();
    if (incomplete) {
      for (const t of this.current) next.set(targetKey(t), t);
      this.log(
        `DNS discovery of ${this.spec.hostname} failed (${describeFailures(resolution.failures)}); ` +
          `keeping ${this.current.length} known target(s)`,
        resolution.failures[0]?.error,
      );
    }
    for (const t of resolution.targets) next.set(targetKey(t), Object.freeze({ ...t }));

    const added = [...next].filter(([key]) => !this.currentKeys.has(key)).map(([, t]) => t);
    const removed = this.current.filter((t) => !next.has(targetKey(t)));
    if (added.length === 0 && removed.length === 0) return;

    if (next.size === 0) {
      this.log(`DNS discovery of ${this.spec.hostname}: the name has no ${this.spec.mode} records any more`);
    }
    this.current = Object.freeze(sorted(next.values()));
    this.currentKeys = new Set(next.keys());
    try {
      this.onChange({ added: sorted(added), removed: sorted(removed), current: [...this.current] });
    } catch (err) {
      // A throwing listener must not stop the refresh loop; the set above stays the truth.
      this.log(`DNS discovery of ${this.spec.hostname}: change listener threw`, err);
    }
  }

  private async resolveHost(): Promise<Resolution> {
    const { addresses, failures } = await this.addressesOf(this.spec.hostname);
    return { targets: addresses.map((address) => ({ address, port: this.spec.port })), failures };
  }

  private async resolveSrv(): Promise<Resolution> {
    let records: { name: string; port: number; priority: number }[];
    try {
      records = await this.resolver.resolveSrv(this.spec.hostname);
    } catch (error) {
      if (AUTHORITATIVE_EMPTY.has(errorCode(error) ?? "")) return { targets: [], failures: [] };
      return { targets: [], failures: [{ query: `SRV ${this.spec.hostname}`, error }] };
    }
    const byPriority = new Map<number, { name: string; port: number }[]>();
    for (const r of records) {
      if (r.name === "" || r.name === ".") continue;
      const group = byPriority.get(r.priority) ?? [];
      group.push(r);
      byPriority.set(r.priority, group);
    }
    // Several records may name the same host (one per port); ask DNS about it once per resolution.
    const lookups = new Map<string, Promise<Addresses>>();
    for (const priority of [...byPriority.keys()].sort((a, b) => a - b)) {
      const group = byPriority.get(priority) ?? [];
      const results = await Promise.all(
        group.map(async (r) => {
          let lookup = lookups.get(r.name);
          if (lookup === undefined) {
            lookup = this.addressesOf(r.name);
            lookups.set(r.name, lookup);
          }
          const { addresses, failures } = await lookup;
          return { targets: addresses.map((address) => ({ address, port: r.port })), failures };
        }),
      );
      const targets = results.flatMap((r) => r.targets);
      const failures = [...new Set(results.flatMap((r) => r.failures))];
      // Fall back to the next priority only when this one is known to be empty, not when DNS failed us.
      if (targets.length > 0 || failures.length > 0) return { targets, failures };
    }
    return { targets: [], failures: [] };
  }

  private async addressesOf(hostname: string): Promise<Addresses> {
    // An address written where a name is expected (an SRV target, a literal hostname) needs no lookup.
    if (isIP(hostname) !== 0) return { addresses: [hostname], failures: [] };
    const [v4, v6] = await Promise.all([
      this.lookup(`A ${hostname}`, () => this.resolver.resolve4(hostname)),
      this.lookup(`AAAA ${hostname}`, () => this.resolver.resolve6(hostname)),
    ]);
    return { addresses: [...v4.addresses, ...v6.addresses], failures: [...v4.failures, ...v6.failures] };
  }

  private async lookup(query: string, ask: () => Promise<string[]>): Promise<Addresses> {
    try {
      return { addresses: await ask(), failures: [] };
    } catch (error) {
      if (AUTHORITATIVE_EMPTY.has(errorCode(error) ?? "")) return { addresses: [], failures: [] };
      return { addresses: [], failures: [{ query, error }] };
    }
  }
}

function describeFailures(failures: QueryFailure[]): string {
  return failures
    .map(
      (f) =>
        `${f.query}: ${errorCode(f.error) ?? (f.error instanceof Error ? f.error.message : String(f.error))}`,
    )
    .join(", ");
}
