/**
 * The shared store on Redis (one server, Sentinel or Cluster), through ioredis 5.
 *
 * Buckets: one hash per bucket {tokens, ts}, updated by BUCKET_LUA (lua-scripts.ts), which runs
 * the arithmetic of bucket.ts on Redis TIME. Leases: one sorted set per key, member = lease id,
 * score = expiry (ms on Redis TIME). Every key is `${keyPrefix}{${logicalKey}}`: the logical
 * key is the hash tag, and each script touches one key, so Cluster never answers CROSSSLOT.
 * A bucket and a lease set share that namespace: give them different logical keys.
 *
 * A dead Redis must never hang a request. What ioredis 5.11 does (read in its source,
 * node_modules/ioredis/built, and exercised by test/integration/store):
 * - Offline queue off (`enableOfflineQueue: false`): Redis#sendCommand rejects at once
 *   ("Stream isn't writeable and enableOfflineQueue options is false") whenever the status is
 *   not "ready": while connecting, reconnecting, or after the connection closed. Cluster has its
 *   own offline queue (rejects "Cluster isn't ready..."); ioredis forces the queue ON for the
 *   per-node connections it creates (ConnectionPool: lazyConnect nodes queue the first command
 *   while they connect; `redisOptions` cannot even name the option), so a command to a node
 *   that is still connecting waits, bounded by the command timeout below.
 * - `commandTimeout`: Redis#sendCommand arms it on EVERY command before queueing or writing it,
 *   EVAL and EVALSHA included (a script command is a Command like any other), and rejects with
 *   "Command timed out". The NOSCRIPT fallback sends a second command with its own timer, and
 *   Cluster redirections (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) resend too, so a single call could
 *   take a multiple of it: `call()` adds one deadline over the whole call, waiting for "ready"
 *   included. Every method answers or rejects within commandTimeout (+ timer lag).
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
import { BUCKET_LUA, LEASE_ACQUIRE_LUA, LEASE_RENEW_LUA } from "./lua-scripts.js";
import {
  type BucketResult,
  type BucketSpec,
  type LeaseResult,
  type Store,
  StoreUnavailableError,
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
    floodgateLeaseAcquire(key: string, id: string, limit: string, ttlMs: string): Result<LeaseReply, Context>;
    floodgateLeaseRenew(key: string, id: string, ttlMs: string): Result<number, Context>;
  }
}

/** Registers the store's scripts on a client (the store does it; so do the equivalence tests). */
export function defineScripts(client: Redis | Cluster): void {
  client.defineCommand("floodgateBucket", { numberOfKeys: 1, lua: BUCKET_LUA });
  client.defineCommand("floodgateLeaseAcquire", { numberOfKeys: 1, lua: LEASE_ACQUIRE_LUA });
  client.defineCommand("floodgateLeaseRenew", { numberOfKeys: 1, lua: LEASE_RENEW_LUA });
}

export function parseBucketReply(reply: BucketReply): BucketResult {
  return {
    allowed: reply[0] === 1,
    remaining: Number(reply[1]),
    msToNext: Number(reply[2]),
    msToFull: Number(reply[3]),
  };
}

/** Statuses in which a connection attempt is under way, so "ready" may come within the deadline. */
const CONNECTING = new Set(["wait", "connecting", "connect"]);

/** Reconnect forever, 100 ms more per attempt, at most 2 s apart. */
export const reconnectDelay = (times: number): number => Math.min(times * 100, 2000);

export interface RedisStoreOptions {
  keyPrefix: string;
  /** Upper bound of every call, ms. */
  commandTimeout: number;
  /** Connection errors, for logging (ioredis emits them as "error" events). */
  onError?: (error: Error) => void;
}

export class RedisStore implements Store {
  readonly kind = "redis" as const;
  private readonly client: Redis | Cluster;
  private readonly keyPrefix: string;
  private readonly commandTimeout: number;
  /** Settled by the next status change out of "connecting"; shared so waiters add no listeners. */
  private statusChange: Promise<void> | undefined;
  private settleStatusChange: (() => void) | undefined;

  constructor(client: Redis | Cluster, options: RedisStoreOptions) {
    this.client = client;
    this.keyPrefix = options.keyPrefix;
    this.commandTimeout = options.commandTimeout;
    defineScripts(client);
    // Without a listener ioredis prints every connection error to the console.
    client.on("error", (error: Error) => options.onError?.(error));
    const settle = () => {
      this.settleStatusChange?.();
      this.statusChange = undefined;
      this.settleStatusChange = undefined;
    };
    for (const event of ["ready", "close", "end", "reconnecting"]) client.on(event, settle);
  }

  /** The Redis key of a logical key: its hash tag is the whole logical key. */
  keyOf(logicalKey: string): string {
    return `${this.keyPrefix}{${logicalKey}}`;
  }

  async take(spec: BucketSpec, cost: number): Promise<BucketResult> {
    checkBucketSpec(spec);
    checkAmount("cost", cost);
    return this.bucket(spec, "take", cost);
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

  async releaseLease(key: string, id: string): Promise<void> {
    await this.call("releaseLease", () => this.client.zrem(this.keyOf(key), id));
  }

  /**
   * SCAN + UNLINK on every master (tests, admin). Not bounded by one command timeout (each
   * command is); keys are unlinked one by one because in Cluster the keys of one node may sit
   * in different slots, and a multi-key UNLINK across slots is a CROSSSLOT error.
   */
  async clear(logicalPrefix: string): Promise<void> {
    const pattern = `${globEscape(this.keyPrefix)}{${globEscape(logicalPrefix)}*`;
    const nodes = this.client instanceof Cluster ? this.client.nodes("master") : [this.client];
    try {
      for (const node of nodes) {
        let cursor = "0";
        do {
          const [next, keys] = await node.scan(cursor, "MATCH", pattern, "COUNT", 500);
          cursor = next;
          if (keys.length > 0) {
            const pipeline = node.pipeline();
            for (const key of keys) pipeline.unlink(key);
            await pipeline.exec();
          }
        } while (cursor !== "0");
      }
    } catch (error) {
      throw unavailable("clear", error);
    }
  }

  /** QUIT (lets replies in flight arrive) for at most 200 ms, then drops the connection. */
  async close(): Promise<void> {
    const quit = this.client.quit().catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([quit, new Promise<void>((resolve) => (timer = setTimeout(resolve, 200)))]);
    clearTimeout(timer);
    this.client.disconnect();
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

  /**
   * Runs one store operation under one deadline (commandTimeout from now), waiting for an
   * initial or in-progress connection to become ready within it; any failure becomes
   * StoreUnavailableError. When the client is reconnecting (backoff) or closed it fails at
   * once: ioredis would refuse the command anyway, and a fast answer lets the caller fall back.
   */
  private async call<T>(op: string, send: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new StoreUnavailableError(`redis ${op}: no answer within ${this.commandTimeout} ms`)),
        this.commandTimeout,
      );
    });
    try {
      return await Promise.race([this.whenReady().then(send), deadline]);
    } catch (error) {
      throw unavailable(op, error);
    } finally {
      clearTimeout(timer);
    }
  }

  private async whenReady(): Promise<void> {
    if (this.client.status === "ready" || !CONNECTING.has(this.client.status)) return;
    // A lazyConnect client (one handed to the constructor) connects on first use.
    if (this.client.status === "wait") this.client.connect().catch(() => undefined);
    if (this.statusChange === undefined) {
      this.statusChange = new Promise<void>((resolve) => (this.settleStatusChange = resolve));
    }
    await this.statusChange;
  }
}

function unavailable(op: string, error: unknown): StoreUnavailableError {
  if (error instanceof StoreUnavailableError) return error;
  const reason = error instanceof Error ? error.message : String(error);
  return new StoreUnavailableError(`redis ${op} failed: ${reason}`, error);
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
 * Builds the store from config: Cluster from `nodes`, else Sentinel from `sentinels`, else one
 * server from `url`. `options.now` cannot be given: time comes from Redis TIME, never from a
 * replica's clock. `password` applies unless a URL carries its own (ioredis lets the URL win).
 * A Sentinel deployment's sentinels are asked without a password; `password` is the master's.
 */
export function createRedisStore(
  config: StoreConfig,
  options: { now?: never; onError?: (error: Error) => void } = {},
): RedisStore {
  const socketTimeout = Math.max(1000, 10 * config.commandTimeout);
  const common: RedisOptions = {
    commandTimeout: config.commandTimeout,
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
  return new RedisStore(client, {
    keyPrefix: config.keyPrefix,
    commandTimeout: config.commandTimeout,
    ...(options.onError !== undefined ? { onError: options.onError } : {}),
  });
}
