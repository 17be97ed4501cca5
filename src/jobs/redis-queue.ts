/**
 * The jobs queue on Redis (one server, Sentinel or Cluster), shared by every replica: any one
 * answers a poll, and a replica that dies loses no job (its leases lapse, another claims).
 *
 * Every transition is one Lua script (redis-queue-lua.ts, which has the key layout), atomic on
 * Redis TIME. All of a queue's keys share one hash tag (`{name}`): one Cluster slot, so the
 * scripts may touch any of them. The client and the per-call deadline are the store's own
 * (createRedisClient, RedisCalls): the same options, and every method answers or rejects with
 * StoreUnavailableError within commandTimeout, per script call.
 *
 * Large calls are cut so that no script holds Redis for long (each runs alone, and the store's
 * rate limits wait behind it): an enqueue goes in chunks of at most CHUNK_JOBS jobs and
 * CHUNK_BYTES of request text, cancelGroup in chunks of CHUNK_JOBS lines. An enqueue of one
 * chunk checks the cap and adds in one script. A larger one first reserves the cap for all its
 * jobs (RESERVE_LUA, the reservation expiring unless each chunk renews it, so a replica that
 * dies mid-way gives it back), then adds chunk by chunk out of the reservation; when a chunk
 * fails, what was added is withdrawn (best effort: if Redis cannot answer that either, the
 * chunks added stay as ordinary jobs) and the call rejects.
 */
import { randomUUID } from "node:crypto";
import { type ClientContext, Cluster, type Redis, type Result } from "ioredis";
import { type CallTally, RedisCalls } from "../store/redis-calls.js";
import { createRedisClient, type StoreConfig } from "../store/redis-store.js";
import { ttlOf } from "../store/ttl.js";
import { StoreUnavailableError } from "../store/types.js";
import { checkCount, checkMs, checkNewJobs, countKey } from "./checks.js";
import {
  CANCEL_GROUP_LUA,
  CANCEL_LUA,
  CLAIM_LUA,
  COUNTS_LUA,
  DEPTH_LUA,
  ENQUEUE_LUA,
  FINISH_LUA,
  GET_LUA,
  LIST_LUA,
  RELEASE_LUA,
  RENEW_LUA,
  RESERVE_LUA,
  WITHDRAW_LUA,
} from "./redis-queue-lua.js";
import type { GroupCounts, JobQueue, JobRecord, JobResult, JobState, JobWakes, NewJob } from "./types.js";

/** Every script takes KEYS[1] = the queue's key prefix, then string arguments. */
type Script<Reply, Context extends ClientContext> = (
  prefix: string,
  ...args: string[]
) => Result<Reply, Context>;

declare module "ioredis" {
  interface RedisCommander<Context> {
    floodgateJobsEnqueue: Script<[number, number | string], Context>;
    floodgateJobsReserve: Script<[number, number], Context>;
    floodgateJobsWithdraw: Script<number, Context>;
    floodgateJobsClaim: Script<string[][], Context>;
    floodgateJobsRenew: Script<string[], Context>;
    floodgateJobsFinish: Script<number, Context>;
    floodgateJobsRelease: Script<number, Context>;
    floodgateJobsCancel: Script<string[], Context>;
    floodgateJobsCancelGroup: Script<[number, string], Context>;
    floodgateJobsCounts: Script<(string | null)[], Context>;
    floodgateJobsList: Script<string[][], Context>;
    floodgateJobsDepth: Script<number, Context>;
    floodgateJobsGet: Script<string[], Context>;
  }
}

const SCRIPTS = {
  floodgateJobsEnqueue: ENQUEUE_LUA,
  floodgateJobsReserve: RESERVE_LUA,
  floodgateJobsWithdraw: WITHDRAW_LUA,
  floodgateJobsClaim: CLAIM_LUA,
  floodgateJobsRenew: RENEW_LUA,
  floodgateJobsFinish: FINISH_LUA,
  floodgateJobsRelease: RELEASE_LUA,
  floodgateJobsCancel: CANCEL_LUA,
  floodgateJobsCancelGroup: CANCEL_GROUP_LUA,
  floodgateJobsCounts: COUNTS_LUA,
  floodgateJobsList: LIST_LUA,
  floodgateJobsDepth: DEPTH_LUA,
  floodgateJobsGet: GET_LUA,
};

/** Jobs per script call of a large enqueue, and lines per call of cancelGroup. */
export const CHUNK_JOBS = 200;
/** Request text (url + body) per script call of a large enqueue. */
export const CHUNK_BYTES = 512 * 1024;
/** A large enqueue's reservation lapses after this long without a chunk. */
const RESERVATION_HOLD_MS = 60_000;
const DAY_MS = 86_400_000;
/** A refused SUBSCRIBE is tried again after this long. */
const SUBSCRIBE_RETRY_MS = 2000;

export interface RedisJobQueueOptions {
  /** The store's key prefix (config store.keyPrefix). */
  keyPrefix: string;
  /** Upper bound of every script call, ms (config store.commandTimeout). */
  commandTimeout: number;
  /** The queue's name, its keys' hash tag: queues of different names share nothing. Default "jobs". */
  name?: string;
  /** How long the record of a job that ended `expired` is kept, ms; default 24 h. */
  expiredTtlMs?: number;
  /** Connection errors, for logging. */
  onError?: (error: Error) => void;
  /** Counts the round trips per operation (floodgate_store_calls_total). */
  tally?: CallTally;
}

export class RedisJobQueue implements JobQueue {
  /** KEYS[1] of every script: the prefix of all the queue's keys, hash tag included. */
  readonly prefix: string;
  private readonly client: Redis | Cluster;
  private readonly calls: RedisCalls;
  private readonly expiredTtl: string;
  private readonly onError: ((error: Error) => void) | undefined;
  /** Open subscriptions (subscribe()), closed with the queue. */
  private readonly wakes = new Set<JobWakes>();

  constructor(client: Redis | Cluster, options: RedisJobQueueOptions) {
    this.client = client;
    this.onError = options.onError;
    this.prefix = `${options.keyPrefix}jobs:{${options.name ?? "jobs"}}:`;
    this.expiredTtl = String(ttlOf("expiredTtlMs", options.expiredTtlMs ?? DAY_MS));
    for (const [name, lua] of Object.entries(SCRIPTS)) client.defineCommand(name, { numberOfKeys: 1, lua });
    this.calls = new RedisCalls(client, options.commandTimeout, options.onError, options.tally);
  }

  async enqueue(jobs: readonly NewJob[], cap: number): Promise<{ accepted: boolean; unfinished: number }> {
    const tenant = checkNewJobs(jobs, cap);
    const chunks = chunksOf(jobs);
    if (chunks.length <= 1) return this.addChunk(tenant, cap, "", chunks[0] ?? []);
    const token = randomUUID();
    const [held, before] = await this.script("enqueue", (c) =>
      c.floodgateJobsReserve(
        this.prefix,
        this.expiredTtl,
        countKey(tenant, jobs[0]?.group),
        String(cap),
        token,
        String(jobs.length),
        String(RESERVATION_HOLD_MS),
      ),
    );
    if (held !== 1) return { accepted: false, unfinished: before };
    let result = { accepted: true, unfinished: before };
    for (const [i, chunk] of chunks.entries()) {
      try {
        result = await this.addChunk(tenant, cap, token, chunk);
      } catch (error) {
        // A chunk refused for an existing id wrote nothing; one that failed otherwise may have.
        const sent = chunks.slice(0, error instanceof RangeError ? i : i + 1);
        await this.withdraw(token, sent.flat());
        throw error;
      }
    }
    return result;
  }

  async get(id: string): Promise<JobRecord | undefined> {
    const reply = await this.script("get", (c) => c.floodgateJobsGet(this.prefix, this.expiredTtl, id));
    return recordOf(reply);
  }

  async claim(owner: string, leaseMs: number, max: number): Promise<JobRecord[]> {
    checkMs("claim: leaseMs", leaseMs);
    checkCount("claim: max", max);
    const reply = await this.script("claim", (c) =>
      c.floodgateJobsClaim(this.prefix, this.expiredTtl, owner, String(Math.ceil(leaseMs)), String(max)),
    );
    return reply.map((fields) => recordOf(fields) as JobRecord);
  }

  async renew(ids: readonly string[], owner: string, leaseMs: number): Promise<string[]> {
    checkMs("renew: leaseMs", leaseMs);
    const lease = String(Math.ceil(leaseMs));
    const lost: string[] = [];
    for (let i = 0; i < ids.length; i += CHUNK_JOBS) {
      const chunk = ids.slice(i, i + CHUNK_JOBS);
      lost.push(
        ...(await this.script("renew", (c) =>
          c.floodgateJobsRenew(this.prefix, this.expiredTtl, owner, lease, ...chunk),
        )),
      );
    }
    return lost;
  }

  async finish(
    id: string,
    owner: string,
    state: "succeeded" | "failed",
    result: JobResult,
    ttlMs: number,
  ): Promise<boolean> {
    const ttl = String(ttlOf("finish: ttlMs", ttlMs));
    const reply = await this.script("finish", (c) =>
      c.floodgateJobsFinish(
        this.prefix,
        this.expiredTtl,
        id,
        owner,
        state,
        String(result.status),
        JSON.stringify(result.headers),
        result.body,
        ttl,
      ),
    );
    return reply === 1;
  }

  async release(id: string, owner: string, runAt: number): Promise<boolean> {
    if (!Number.isFinite(runAt)) throw new RangeError(`release: runAt must be finite, got ${runAt}`);
    // Due by this clock (Redis's may lag it a little): it wakes the idle replicas.
    const due = runAt <= Date.now() ? "1" : "0";
    const reply = await this.script("release", (c) =>
      c.floodgateJobsRelease(this.prefix, this.expiredTtl, id, owner, msText(runAt), due),
    );
    return reply === 1;
  }

  async cancel(id: string, ttlMs: number): Promise<JobRecord | undefined> {
    const ttl = String(ttlOf("cancel: ttlMs", ttlMs));
    const reply = await this.script("cancel", (c) =>
      c.floodgateJobsCancel(this.prefix, this.expiredTtl, id, ttl),
    );
    return recordOf(reply);
  }

  async cancelGroup(group: string, ttlMs: number): Promise<number> {
    const ttl = String(ttlOf("cancelGroup: ttlMs", ttlMs));
    let cancelled = 0;
    for (let from = "-inf"; ; ) {
      const [n, last] = await this.script("cancelGroup", (c) =>
        c.floodgateJobsCancelGroup(this.prefix, this.expiredTtl, group, ttl, from, String(CHUNK_JOBS)),
      );
      cancelled += n;
      if (last === "") return cancelled;
      from = `(${last}`;
    }
  }

  async counts(group: string): Promise<GroupCounts> {
    const [total, completed, failed, cancelled, last] = await this.script("counts", (c) =>
      c.floodgateJobsCounts(this.prefix, this.expiredTtl, group),
    );
    return {
      total: Number(total ?? 0),
      completed: Number(completed ?? 0),
      failed: Number(failed ?? 0),
      cancelled: Number(cancelled ?? 0),
      lastFinishedAt: last == null ? undefined : Number(last),
    };
  }

  async list(group: string, fromSeq: number, limit: number): Promise<JobRecord[]> {
    checkCount("list: limit", limit);
    if (Number.isNaN(fromSeq)) throw new RangeError("list: fromSeq must be a number");
    if (limit === 0) return [];
    const reply = await this.script("list", (c) =>
      c.floodgateJobsList(this.prefix, this.expiredTtl, group, scoreText(fromSeq), String(limit)),
    );
    return reply.map((fields) => recordOf(fields) as JobRecord);
  }

  depth(): Promise<number> {
    return this.script("depth", (c) => c.floodgateJobsDepth(this.prefix, this.expiredTtl));
  }

  /** Resolves true once Redis can answer, false after timeoutMs without that. */
  ready(timeoutMs: number): Promise<boolean> {
    return this.calls.ready(timeoutMs);
  }

  /**
   * The wakes of the queue's channel (P wake, published by ENQUEUE_LUA and RELEASE_LUA) on a
   * connection of their own: a connection that subscribes can run no other command. It
   * subscribes again each time it is ready (after a reconnect too); `onLive(true)` once it is
   * subscribed, `onLive(false)` when the connection drops.
   */
  subscribe(onWake: () => void, onLive: (live: boolean) => void): JobWakes {
    const channel = `${this.prefix}wake`;
    // It subscribes itself on every "ready": ioredis's own resubscribe would leave a refusal
    // (an ACL that denies the channel) as an unhandled rejection.
    const connection =
      this.client instanceof Cluster
        ? this.client.duplicate()
        : this.client.duplicate({ autoResubscribe: false });
    const calls = new RedisCalls(connection, this.calls.commandTimeout, this.onError);
    let live = false;
    let closed = false;
    const set = (now: boolean) => {
      if (closed || live === now) return;
      live = now;
      onLive(now);
    };
    let retry: NodeJS.Timeout | undefined;
    const subscribeNow = () => {
      clearTimeout(retry);
      if (closed || connection.status !== "ready") return;
      connection.subscribe(channel).then(
        () => set(true),
        (error: unknown) => {
          // Refused (an ACL), or the connection went: again in a while, polling meanwhile.
          this.onError?.(error instanceof Error ? error : new Error(String(error)));
          retry = setTimeout(subscribeNow, SUBSCRIBE_RETRY_MS);
          retry.unref();
        },
      );
    };
    connection.on("ready", subscribeNow);
    for (const event of ["close", "end", "reconnecting"]) connection.on(event, () => set(false));
    connection.on("message", (from: string) => {
      if (from === channel && !closed) onWake();
    });
    const wakes: JobWakes = {
      get live() {
        return live;
      },
      close: async () => {
        if (closed) return;
        closed = true;
        live = false;
        clearTimeout(retry);
        this.wakes.delete(wakes);
        await calls.close();
      },
    };
    this.wakes.add(wakes);
    return wakes;
  }

  async close(): Promise<void> {
    await Promise.all([...this.wakes].map((w) => w.close()));
    await this.calls.close();
  }

  private script<T>(op: string, send: (client: Redis | Cluster) => Promise<T>): Promise<T> {
    return this.calls.call(`jobs ${op}`, () => send(this.client));
  }

  /** One ENQUEUE_LUA call: the cap checked here (token "") or taken from a reservation. */
  private async addChunk(
    tenant: string,
    cap: number,
    token: string,
    jobs: readonly NewJob[],
  ): Promise<{ accepted: boolean; unfinished: number }> {
    const args: string[] = [];
    for (const job of jobs) {
      args.push(
        job.id,
        job.request.url,
        job.request.body,
        job.group ?? "",
        job.seq === undefined ? "" : String(job.seq),
        job.customId ?? "",
        job.runAt === undefined ? "" : msText(job.runAt),
        job.expiresAt === undefined ? "" : msText(job.expiresAt),
      );
    }
    const [status, value] = await this.script("enqueue", (c) =>
      c.floodgateJobsEnqueue(
        this.prefix,
        this.expiredTtl,
        tenant,
        String(cap),
        token,
        String(RESERVATION_HOLD_MS),
        ...args,
      ),
    );
    if (status === -1) throw new RangeError(`enqueue: job id ${value} exists`);
    if (status === -2) {
      throw new StoreUnavailableError("redis jobs enqueue: the reservation lapsed between two chunks");
    }
    return { accepted: status === 1, unfinished: Number(value) };
  }

  /** Undoes a failed large enqueue as far as Redis answers (its failure is the caller's error). */
  private async withdraw(token: string, jobs: readonly NewJob[]): Promise<void> {
    try {
      for (let i = 0; i === 0 || i < jobs.length; i += CHUNK_JOBS) {
        const ids = jobs.slice(i, i + CHUNK_JOBS).map((job) => job.id);
        await this.script("withdraw", (c) =>
          c.floodgateJobsWithdraw(this.prefix, this.expiredTtl, token, ...ids),
        );
      }
    } catch {
      // The enqueue already failed with its own error; what stays is ordinary jobs.
    }
  }
}

/**
 * The queue on the Redis of a `store` section (type redis), through the store's own client
 * factory: one more connection (or Cluster client) per replica.
 */
export function createRedisJobQueue(
  config: StoreConfig,
  options: Omit<RedisJobQueueOptions, "keyPrefix" | "commandTimeout"> = {},
): RedisJobQueue {
  return new RedisJobQueue(createRedisClient(config), {
    keyPrefix: config.keyPrefix,
    commandTimeout: config.commandTimeout,
    ...options,
  });
}

/** The jobs in script-call sized chunks (a job larger than CHUNK_BYTES goes alone). */
function chunksOf(jobs: readonly NewJob[]): NewJob[][] {
  const chunks: NewJob[][] = [];
  let chunk: NewJob[] = [];
  let bytes = 0;
  for (const job of jobs) {
    const size = job.request.url.length + job.request.body.length;
    if (chunk.length > 0 && (chunk.length === CHUNK_JOBS || bytes + size > CHUNK_BYTES)) {
      chunks.push(chunk);
      chunk = [];
      bytes = 0;
    }
    chunk.push(job);
    bytes += size;
  }
  if (chunk.length > 0) chunks.push(chunk);
  return chunks;
}

/** An epoch ms time as Redis stores it: a whole number, never exponent notation. */
function msText(ms: number): string {
  return Math.round(ms).toFixed(0);
}

/** A ZRANGEBYSCORE bound. */
function scoreText(value: number): string {
  if (value === Number.POSITIVE_INFINITY) return "+inf";
  if (value === Number.NEGATIVE_INFINITY) return "-inf";
  return String(value);
}

/** HGETALL's flat reply as a record; undefined when empty (no such job, or expired). */
function recordOf(flat: readonly string[]): JobRecord | undefined {
  if (flat.length === 0) return undefined;
  const f = new Map<string, string>();
  for (let i = 0; i + 1 < flat.length; i += 2) f.set(flat[i] as string, flat[i + 1] as string);
  const text = (name: string) => f.get(name);
  const num = (name: string) => {
    const value = f.get(name);
    return value === undefined ? undefined : Number(value);
  };
  const status = num("status");
  return {
    id: text("id") ?? "",
    tenant: text("tenant") ?? "",
    request: { url: text("url") ?? "", body: text("body") ?? "" },
    group: text("group"),
    seq: num("seq"),
    customId: text("customId"),
    runAt: num("runAt") ?? 0,
    expiresAt: num("expiresAt"),
    state: (text("state") ?? "queued") as JobState,
    createdAt: num("createdAt") ?? 0,
    startedAt: num("startedAt"),
    finishedAt: num("finishedAt"),
    attempts: num("attempts") ?? 0,
    result:
      status === undefined
        ? undefined
        : {
            status,
            headers: JSON.parse(text("headers") ?? "{}") as Record<string, string>,
            body: text("result") ?? "",
          },
  };
}
