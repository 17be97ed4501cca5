/**
 * The shared store on Redis (one server, Sentinel or Cluster), through ioredis 5.
 *
 * Buckets: one hash per bucket {tokens, ts}, updated by BUCKET_LUA (lua-scripts.ts), which runs
 * the arithmetic of bucket.ts on Redis TIME. Leases: one sorted set per key, member = lease id,
 * score = expiry (ms on Redis TIME). Every key is `${keyPrefix}{${logicalKey}}`: the logical
 * key is the hash tag, and each script touches one key, so Cluster never answers CROSSSLOT.
 * A bucket and a lease set share that namespace: give them different logical keys.
 *
 * Blobs (the response cache) are strings under `${keyPrefix}blob:{${logicalKey}}`, and locks
 * (SET NX PX, value = owner) under `${keyPrefix}lock:{${logicalKey}}`: the hash tag is still the
 * whole logical key, but each has its own namespace, so a lock may take the logical key of the
 * blob it guards (in one namespace SET NX would fail whenever the blob exists, and a blob
 * written over a held lock would be read back as an owner), and a purge of blobs by logical
 * prefix can never match a bucket, a lease set or a lock. Purge finds blobs with SCAN MATCH (see
 * scanUnlink: every master in Cluster, one key per UNLINK).
 *
 * A dead Redis must never hang a request. What ioredis 5.11 does (read in its source,
 * node_modules/ioredis/built, and exercised by test/integration/store):
 * - Offline queue off (`enableOfflineQueue: false`): Redis#sendCommand rejects at once
 *   ("Stream isn't writeable and enableOfflineQueue options is false") whenever the status is
 *   not "ready": while connecting, reconnecting, or after the connection closed. Cluster has its
 *   own offline queue (rejects "Cluster isn't ready..."); ioredis forces the queue ON for the
 *   per-node connections it creates (ConnectionPool: lazyConnect nodes queue the first command
 *   while they connect; `redisOptions` cannot even name the option), so a command to a node
 *   that is still connecting waits, bounded by connectTimeout (and the caller by its deadline).
 * - The store's `commandTimeout` is enforced by the store, never handed to ioredis: `call()`
 *   (redis-calls.ts, shared with the jobs queue) puts one deadline over the whole call (waiting for "ready", the NOSCRIPT fallback's second
 *   command and Cluster redirections included), and a purge one per round trip (`within()`).
 *   Every method answers or rejects within commandTimeout (+ timer lag). ioredis's own
 *   `commandTimeout` is armed by Redis#sendCommand on EVERY command of a connection, including
 *   the ones ioredis sends for itself: the INFO of the ready check, and in Cluster the CLUSTER
 *   SLOTS of a slots refresh (its refresher connection copies the node's options) and the
 *   CLUSTER INFO of the cluster's ready check. Those are not requests, they get their own
 *   bounds (connectTimeout, `slotsRefreshTimeout`, socketTimeout), and with the request budget
 *   (50 ms by default) a busy host misses it: a loaded 2-core machine took 90-135 ms for a
 *   fresh connection + CLUSTER SLOTS, every seed node failed with "Command timed out" long
 *   before slotsRefreshTimeout, and the Cluster gave up, closed and reconnected after a backoff,
 *   failing every call meanwhile ("Cluster isn't ready"): store errors at startup with Redis
 *   perfectly healthy.
 * - `maxRetriesPerRequest: 0`: when a connection closes, commands already written are rejected
 *   at once (MaxRetriesPerRequestError) instead of being kept for the reconnect. With 1 they
 *   would be re-sent after reconnecting, and a take whose reply was lost would be charged twice
 *   (the script is not idempotent); `autoResendUnfulfilledCommands: false` says the same.
 * - `retryStrategy` returns a number on every attempt: reconnect forever, backoff capped at 2 s.
 *   `clusterRetryStrategy` likewise for the whole cluster; ioredis gives node connections no
 *   retry strategy (a lost node is found again through a slots refresh).
 * - `socketTimeout`: a connection that got no byte back for that long after a write is
 *   destroyed and reconnected, so a silently dead peer (host gone, partition) is noticed by the
 *   client instead of every command timing out on it until TCP keepalive gives up.
 * - Scripts through `defineCommand` (ioredis Script): the first call on each socket sends EVAL
 *   (which loads the script), later ones EVALSHA; a NOSCRIPT reply (failover to a replica that
 *   never saw the script, SCRIPT FLUSH, restart) forgets the socket and resends once, as EVAL.
 *   In Cluster the resend goes through Cluster#sendCommand, so it reaches the slot's node.
 */
import { Cluster, type ClusterOptions, Redis, type RedisOptions, type Result } from "ioredis";
import type { GatewayConfig } from "../config/schema.js";
import { checkAmount, checkBucketSpec } from "./bucket.js";
import {
  BUCKET_LUA,
  FLEET_SYNC_LUA,
  LEASE_ACQUIRE_LUA,
  LEASE_RENEW_LUA,
  LOCK_RELEASE_LUA,
  TAKES_LUA,
} from "./lua-scripts.js";
import { type CallTally, RedisCalls, unavailable } from "./redis-calls.js";
import { ttlOf } from "./ttl.js";
import {
  type BucketResult,
  type BucketSpec,
  type BucketTake,
  type FleetReply,
  type FleetState,
  type LeaseResult,
  type Store,
  StoreUnavailableError,
  type TakeAllResult,
} from "./types.js";

export type StoreConfig = GatewayConfig["store"];

/** Raw replies of the scripts, before parsing. */
export type BucketReply = [number, string, string, string];
export type LeaseReply = [number, number];

declare module "ioredis" {
  interface RedisCommander<Context> {
    /** BUCKET_LUA. `now` is for the equivalence tests only; production never passes it. */
    floodgateBucket(
      key: string,
      op: "take" | "adjust",
      amount: string,
      ratePerSec: string,
      burst: string,
      now?: string,
    ): Result<BucketReply, Context>;
    /** TAKES_LUA: the number of keys, the keys, now ("" in production), then 4 per key. */
    floodgateTakes(numberOfKeys: number, ...keysAndArgs: string[]): Result<(number | string)[], Context>;
    floodgateLeaseAcquire(key: string, id: string, limit: string, ttlMs: string): Result<LeaseReply, Context>;
    floodgateLeaseRenew(key: string, id: string, ttlMs: string): Result<number, Context>;
    floodgateLockRelease(key: string, owner: string): Result<number, Context>;
    floodgateFleetSync(
      key: string,
      replica: string,
      leaseMs: string,
      state: string,
      slots: string,
    ): Result<string[], Context>;
  }
}

/** Registers the store's scripts on a client (the store does it; so do the equivalence tests). */
export function defineScripts(client: Redis | Cluster): void {
  client.defineCommand("floodgateBucket", { numberOfKeys: 1, lua: BUCKET_LUA });
  // numberOfKeys left out: each call says how many (a request's limits, its reservation).
  client.defineCommand("floodgateTakes", { lua: TAKES_LUA });
  client.defineCommand("floodgateLeaseAcquire", { numberOfKeys: 1, lua: LEASE_ACQUIRE_LUA });
  client.defineCommand("floodgateLeaseRenew", { numberOfKeys: 1, lua: LEASE_RENEW_LUA });
  client.defineCommand("floodgateLockRelease", { numberOfKeys: 1, lua: LOCK_RELEASE_LUA });
  client.defineCommand("floodgateFleetSync", { numberOfKeys: 1, lua: FLEET_SYNC_LUA });
}

export function parseBucketReply(reply: BucketReply): BucketResult {
  return {
    allowed: reply[0] === 1,
    remaining: Number(reply[1]),
    msToNext: Number(reply[2]),
    msToFull: Number(reply[3]),
  };
}

/** TAKES_LUA's reply as one TakeAllResult per group, `sizes` the groups' numbers of buckets. */
export function parseTakesReply(reply: (number | string)[], sizes: readonly number[]): TakeAllResult[] {
  const groups: TakeAllResult[] = [];
  let i = 0;
  for (const size of sizes) {
    const taken = reply[i++] === 1;
    const results: BucketResult[] = [];
    for (let j = 0; j < size; j++, i += 4) {
      results.push({
        allowed: reply[i] === 1,
        remaining: Number(reply[i + 1]),
        msToNext: Number(reply[i + 2]),
        msToFull: Number(reply[i + 3]),
      });
    }
    groups.push({ taken, results });
  }
  if (i !== reply.length) throw new Error(`takes: ${reply.length} values in the reply, ${i} expected`);
  return groups;
}

/** One request's takes waiting for the store's next coalesced call (RedisStore.takeAll). */
interface PendingTakes {
  takes: readonly BucketTake[];
  resolve(result: TakeAllResult): void;
  reject(error: unknown): void;
}

/**
 * Requests per coalesced call at most: a burst of arrivals is cut into calls of this many, so
 * that one script (about 15 µs of Redis time per request) never holds Redis, nor the replies of
 * the first requests, for long.
 */
export const MAX_COALESCED = 64;

/** Keys per SCAN step: few enough round trips, short enough steps not to stall Redis. */
const SCAN_COUNT = 500;

/** Namespaces after keyPrefix; buckets and leases have none (their hash tag follows the prefix). */
const BLOB_SPACE = "blob:";
const LOCK_SPACE = "lock:";

/** Reconnect forever, 100 ms more per attempt, at most 2 s apart. */
export const reconnectDelay = (times: number): number => Math.min(times * 100, 2000);

export interface RedisStoreOptions {
  keyPrefix: string;
  /** Upper bound of every call, ms. */
  commandTimeout: number;
  /** Connection errors, for logging (ioredis emits them as "error" events). */
  onError?: (error: Error) => void;
  /** Counts the round trips per operation (floodgate_store_calls_total). */
  tally?: CallTally;
}

export class RedisStore implements Store {
  readonly kind = "redis" as const;
  private readonly client: Redis | Cluster;
  readonly keyPrefix: string;
  /** The deadline over every call (redis-calls.ts). */
  private readonly calls: RedisCalls;
  /** Requests' takes for the next coalesced call (takeAll), in arrival order. */
  private pending: PendingTakes[] = [];
  private flushScheduled = false;
  private readonly flushAtTurnEnd = (): void => {
    this.flushScheduled = false;
    this.flushTakes();
  };

  constructor(client: Redis | Cluster, options: RedisStoreOptions) {
    this.client = client;
    this.keyPrefix = options.keyPrefix;
    defineScripts(client);
    this.calls = new RedisCalls(client, options.commandTimeout, options.onError, options.tally);
  }

  /** The Redis key of a logical key: its hash tag is the whole logical key. */
  keyOf(logicalKey: string): string {
    return `${this.keyPrefix}{${logicalKey}}`;
  }

  /** The Redis key of a blob: its own namespace, the logical key as hash tag. */
  blobKeyOf(logicalKey: string): string {
    return `${this.keyPrefix}${BLOB_SPACE}{${logicalKey}}`;
  }

  /** The Redis key of a lock: its own namespace, the logical key as hash tag. */
  lockKeyOf(logicalKey: string): string {
    return `${this.keyPrefix}${LOCK_SPACE}{${logicalKey}}`;
  }

  async take(spec: BucketSpec, cost: number): Promise<BucketResult> {
    checkBucketSpec(spec);
    checkAmount("cost", cost);
    return this.bucket(spec, "take", cost);
  }

  /**
   * One TAKES_LUA call for all the buckets on one server, shared with the other requests that
   * ask in the same event-loop turn: the takes wait for the end of the turn (setImmediate), and
   * the turn's requests, in arrival order and at most MAX_COALESCED to a call, go in one script
   * that decides each request's group all or none, as if one after the other. Under load the
   * requests that one socket read brings are decided in one round trip; alone, a request waits
   * only for the rest of its own turn. A failed call fails every request in it, each then
   * decided by its own limits' policies (guarded-store.ts). Why the end of the turn and not a
   * microtask: Node drains the microtasks after each socket's callback, so a microtask would
   * see one request at a time.
   * A Cluster puts the buckets on different nodes (their hash tags differ): one BUCKET_LUA take
   * per bucket, in parallel, and when the required ones were not all taken, what was taken is
   * given back (awaited, so that the next request sees it); when a call fails, what the others
   * took is given back in the background.
   */
  async takeAll(takes: readonly BucketTake[]): Promise<TakeAllResult> {
    for (const take of takes) {
      checkBucketSpec(take.spec);
      checkAmount("cost", take.cost);
    }
    if (this.client instanceof Cluster) return this.takeEach(takes);
    return new Promise<TakeAllResult>((resolve, reject) => {
      this.pending.push({ takes, resolve, reject });
      if (this.pending.length >= MAX_COALESCED) this.flushTakes();
      else if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(this.flushAtTurnEnd);
      }
    });
  }

  /** Sends the waiting requests' takes in one TAKES_LUA call and answers each. */
  private flushTakes(): void {
    const batch = this.pending;
    if (batch.length === 0) return;
    this.pending = [];
    const keys: string[] = [];
    const args: string[] = ["", String(batch.length)];
    const sizes: number[] = [];
    for (const { takes } of batch) {
      sizes.push(takes.length);
      args.push(String(takes.length));
    }
    for (const { takes } of batch) {
      for (const take of takes) {
        const { key, ratePerSec, burst } = take.spec;
        keys.push(this.keyOf(key));
        args.push(String(take.cost), String(ratePerSec), String(burst), take.optional === true ? "1" : "0");
      }
    }
    this.call("take", () => this.client.floodgateTakes(keys.length, ...keys, ...args))
      .then((reply) => parseTakesReply(reply, sizes))
      .then(
        (results) => {
          for (const [i, p] of batch.entries()) p.resolve(results[i] as TakeAllResult);
        },
        (error: unknown) => {
          const failure = unavailable("take", error);
          for (const p of batch) p.reject(failure);
        },
      );
  }

  async adjust(spec: BucketSpec, delta: number): Promise<BucketResult> {
    checkBucketSpec(spec);
    checkAmount("delta", delta);
    return this.bucket(spec, "adjust", delta);
  }

  async acquireLease(key: string, id: string, limit: number, ttlMs: number): Promise<LeaseResult> {
    checkAmount("limit", limit);
    checkAmount("ttlMs", ttlMs);
    const reply = await this.call("acquireLease", () =>
      this.client.floodgateLeaseAcquire(this.keyOf(key), id, String(limit), String(ttlMs)),
    );
    return { acquired: reply[0] === 1, held: reply[1] };
  }

  async renewLease(key: string, id: string, ttlMs: number): Promise<boolean> {
    checkAmount("ttlMs", ttlMs);
    const reply = await this.call("renewLease", () =>
      this.client.floodgateLeaseRenew(this.keyOf(key), id, String(ttlMs)),
    );
    return reply === 1;
  }

  async syncFleet(
    key: string,
    replica: string,
    state: FleetState,
    slots: Record<string, number>,
    leaseMs: number,
  ): Promise<FleetReply> {
    checkAmount("leaseMs", leaseMs);
    const reply = await this.call("syncFleet", () =>
      this.client.floodgateFleetSync(
        this.keyOf(key),
        replica,
        String(leaseMs),
        JSON.stringify(state),
        JSON.stringify(slots),
      ),
    );
    const [granted, ...others] = reply;
    return {
      granted: JSON.parse(granted ?? "{}") as Record<string, number>,
      others: others.map((o) => JSON.parse(o) as FleetState),
    };
  }

  async releaseLease(key: string, id: string): Promise<void> {
    await this.call("releaseLease", () => this.client.zrem(this.keyOf(key), id));
  }

  async getBlob(key: string): Promise<Buffer | undefined> {
    // getBuffer: the reply as bytes; plain get would decode it as UTF-8 and mangle binary data.
    const value = await this.call("getBlob", () => this.client.getBuffer(this.blobKeyOf(key)));
    return value ?? undefined;
  }

  async setBlob(key: string, value: Buffer, ttlMs: number): Promise<void> {
    const ttl = ttlOf(`setBlob ${key}`, ttlMs);
    await this.call("setBlob", () => this.client.set(this.blobKeyOf(key), value, "PX", ttl));
  }

  async deleteBlob(key: string): Promise<void> {
    // UNLINK: a large value is freed in a background thread, not on Redis's command thread.
    await this.call("deleteBlob", () => this.client.unlink(this.blobKeyOf(key)));
  }

  async acquireLock(key: string, owner: string, ttlMs: number): Promise<boolean> {
    const ttl = ttlOf(`acquireLock ${key}`, ttlMs);
    const reply = await this.call("acquireLock", () =>
      this.client.set(this.lockKeyOf(key), owner, "PX", ttl, "NX"),
    );
    return reply === "OK";
  }

  async releaseLock(key: string, owner: string): Promise<void> {
    await this.call("releaseLock", () => this.client.floodgateLockRelease(this.lockKeyOf(key), owner));
  }

  /** SCAN MATCH on the blob namespace of every master; see scanUnlink for the bounds. */
  async deleteBlobsByPrefix(logicalPrefix: string): Promise<number> {
    return this.scanUnlink("deleteBlobsByPrefix", [this.pattern(BLOB_SPACE, logicalPrefix)]);
  }

  /** Buckets, leases, blobs and locks under the logical prefix (tests, admin). */
  async clear(logicalPrefix: string): Promise<void> {
    await this.scanUnlink(
      "clear",
      ["", BLOB_SPACE, LOCK_SPACE].map((space) => this.pattern(space, logicalPrefix)),
    );
  }

  ready(timeoutMs: number): Promise<boolean> {
    return this.calls.ready(timeoutMs);
  }

  close(): Promise<void> {
    return this.calls.close();
  }

  /**
   * The SCAN MATCH pattern of the keys in `space` whose logical key starts with logicalPrefix:
   * `${keyPrefix}${space}{${logicalPrefix}*`, the literal parts glob-escaped (`{` and `}` are
   * not glob syntax in Redis, so the hash-tag braces match themselves).
   */
  private pattern(space: string, logicalPrefix: string): string {
    return `${globEscape(this.keyPrefix + space)}{${globEscape(logicalPrefix)}*`;
  }

  /**
   * SCAN (COUNT 500, never KEYS: it would block Redis for the whole keyspace) + UNLINK on every
   * master; returns how many keys were unlinked (a key that expired between SCAN and UNLINK is
   * not counted). Keys are unlinked one per command, pipelined per SCAN step: in Cluster the keys
   * of one node sit in different slots, and a multi-key UNLINK across slots is CROSSSLOT. Waiting
   * for the client to be ready shares one deadline (a Cluster knows its masters only then); after
   * that each round trip (SCAN step, pipeline of UNLINKs) has its own commandTimeout, as a purge
   * of many keys takes many round trips.
   * A slot that moved during the purge (MOVED from the node) fails the call: it may be repeated.
   */
  private async scanUnlink(op: string, patterns: string[]): Promise<number> {
    const nodes = await this.call(op, async () => this.masters());
    let unlinked = 0;
    try {
      for (const node of nodes) {
        for (const pattern of patterns) {
          let cursor = "0";
          do {
            const [next, keys] = await this.within(
              op,
              node.scan(cursor, "MATCH", pattern, "COUNT", SCAN_COUNT),
            );
            cursor = next;
            if (keys.length === 0) continue;
            const pipeline = node.pipeline();
            for (const key of keys) pipeline.unlink(key);
            const replies = await this.within(op, pipeline.exec());
            if (replies === null) throw new Error("pipeline discarded");
            for (const [error, reply] of replies) {
              if (error !== null) throw error;
              if (reply === 1) unlinked++;
            }
          } while (cursor !== "0");
        }
      }
    } catch (error) {
      throw unavailable(op, error);
    }
    return unlinked;
  }

  /** The connections to scan: the client itself, or in Cluster one per master it knows now. */
  private masters(): Redis[] {
    if (this.client.status !== "ready") throw new StoreUnavailableError(`redis is ${this.client.status}`);
    if (!(this.client instanceof Cluster)) return [this.client];
    const masters = this.client.nodes("master");
    if (masters.length === 0) throw new StoreUnavailableError("redis cluster: no master known");
    return masters;
  }

  private async takeEach(takes: readonly BucketTake[]): Promise<TakeAllResult> {
    const settled = await Promise.allSettled(takes.map((t) => this.bucket(t.spec, "take", t.cost)));
    const giveBack = (i: number) => {
      const take = takes[i] as BucketTake;
      return this.bucket(take.spec, "adjust", -Math.max(0, take.cost)).catch(() => undefined);
    };
    const results: BucketResult[] = [];
    let failure: unknown;
    let taken = true;
    settled.forEach((s, i) => {
      if (s.status === "rejected") failure ??= s.reason;
      else {
        results.push(s.value);
        if (!s.value.allowed && (takes[i] as BucketTake).optional !== true) taken = false;
      }
    });
    if (failure !== undefined) {
      settled.forEach((s, i) => {
        if (s.status === "fulfilled" && s.value.allowed) void giveBack(i);
      });
      throw failure;
    }
    if (!taken) await Promise.all(results.map((r, i) => (r.allowed ? giveBack(i) : undefined)));
    return { taken, results };
  }

  private async bucket(spec: BucketSpec, op: "take" | "adjust", amount: number): Promise<BucketResult> {
    const reply = await this.call(op, () =>
      this.client.floodgateBucket(
        this.keyOf(spec.key),
        op,
        String(amount),
        String(spec.ratePerSec),
        String(spec.burst),
      ),
    );
    return parseBucketReply(reply);
  }

  private call<T>(op: string, send: () => Promise<T>): Promise<T> {
    return this.calls.call(op, send);
  }

  private within<T>(op: string, work: Promise<T>): Promise<T> {
    return this.calls.within(op, work);
  }
}

/** Escapes Redis glob metacharacters so a prefix matches literally in SCAN MATCH. */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, "\\$&");
}

/** host:port, as the config writes sentinels. */
function hostPort(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(":");
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

/**
 * Builds the store from config (the client: createRedisClient). `options.now` cannot be given:
 * time comes from Redis TIME, never from a replica's clock.
 */
export function createRedisStore(
  config: StoreConfig,
  options: Pick<RedisStoreOptions, "onError" | "tally"> & { now?: never } = {},
): RedisStore {
  return new RedisStore(createRedisClient(config), {
    keyPrefix: config.keyPrefix,
    commandTimeout: config.commandTimeout,
    ...options,
  });
}

/**
 * The ioredis client of a `store` section, with the options the top of this file explains;
 * everything that talks to the store's Redis (RedisStore, RedisJobQueue) connects through it.
 * Cluster from `nodes`, else Sentinel from `sentinels`, else one server from `url`. `password`
 * applies unless a URL carries its own (ioredis lets the URL win). A Sentinel deployment's
 * sentinels are asked without a password; `password` is the master's.
 */
export function createRedisClient(config: StoreConfig): Redis | Cluster {
  const socketTimeout = Math.max(1000, 10 * config.commandTimeout);
  // No `commandTimeout` here: the store enforces it on its own calls (see the top of this file);
  // given to ioredis it would also cut off the ready check and CLUSTER SLOTS at the request budget.
  const common: RedisOptions = {
    connectTimeout: config.connectTimeout,
    socketTimeout,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    enableReadyCheck: true,
    ...(config.password !== undefined ? { password: config.password } : {}),
  };
  let client: Redis | Cluster;
  if (config.nodes !== undefined) {
    const tls = config.nodes.some((url) => url.startsWith("rediss://"));
    const clusterOptions: ClusterOptions = {
      enableOfflineQueue: false,
      enableReadyCheck: true,
      // Writes only (every script writes); never a replica, whose clock and data may lag.
      scaleReads: "master",
      clusterRetryStrategy: reconnectDelay,
      slotsRefreshTimeout: Math.max(config.connectTimeout, 100),
      redisOptions: { ...common, ...(tls ? { tls: {} } : {}) },
    };
    client = new Redis.Cluster(config.nodes, clusterOptions);
  } else if (config.sentinels !== undefined) {
    client = new Redis({
      ...common,
      sentinels: config.sentinels.map(hostPort),
      name: config.sentinelName,
      enableOfflineQueue: false,
      retryStrategy: reconnectDelay,
      sentinelRetryStrategy: reconnectDelay,
    });
  } else if (config.url !== undefined) {
    client = new Redis(config.url, { ...common, enableOfflineQueue: false, retryStrategy: reconnectDelay });
  } else {
    throw new Error("a redis store needs url, nodes or sentinels");
  }
  return client;
}
