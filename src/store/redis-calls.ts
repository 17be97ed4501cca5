/**
 * The deadline over every call to Redis, shared by everything that talks to it (RedisStore,
 * RedisJobQueue): one commandTimeout over the whole call, waiting for "ready" included, and any
 * failure as StoreUnavailableError. Why the store enforces the deadline itself instead of
 * handing ioredis a commandTimeout, and what ioredis does when Redis dies: see the header of
 * redis-store.ts.
 */
import type { Cluster, Redis } from "ioredis";
import { StoreUnavailableError } from "./types.js";

/**
 * Round trips to Redis per operation, summed over the connections that share it (the store's,
 * the jobs queue's); floodgate_store_calls_total reads it. A call that decides several requests
 * (the coalesced takes, redis-store.ts) counts once.
 */
export class CallTally {
  readonly counts = new Map<string, number>();

  add(op: string): void {
    this.counts.set(op, (this.counts.get(op) ?? 0) + 1);
  }
}

/** Statuses in which a connection attempt is under way, so "ready" may come within the deadline. */
const CONNECTING = new Set(["wait", "connecting", "connect"]);

export class RedisCalls {
  /** Settled by the next status change out of "connecting"; shared so waiters add no listeners. */
  private statusChange: Promise<void> | undefined;
  private settleStatusChange: (() => void) | undefined;

  constructor(
    readonly client: Redis | Cluster,
    readonly commandTimeout: number,
    onError?: (error: Error) => void,
    readonly tally?: CallTally,
  ) {
    // Without a listener ioredis prints every connection error to the console.
    client.on("error", (error: Error) => onError?.(error));
    const settle = () => {
      this.settleStatusChange?.();
      this.statusChange = undefined;
      this.settleStatusChange = undefined;
    };
    for (const event of ["ready", "close", "end", "reconnecting"]) client.on(event, settle);
  }

  /**
   * Runs one operation under one deadline (commandTimeout from now), waiting for an initial or
   * in-progress connection to become ready within it; any failure becomes
   * StoreUnavailableError. When the client is reconnecting (backoff) or closed it fails at
   * once: ioredis would refuse the command anyway, and a fast answer lets the caller fall back.
   */
  async call<T>(op: string, send: () => Promise<T>): Promise<T> {
    try {
      return await this.within(op, this.whenReady().then(send));
    } catch (error) {
      throw unavailable(op, error);
    }
  }

  /** `work`, or StoreUnavailableError once commandTimeout has passed (the work is not cancelled). */
  async within<T>(op: string, work: Promise<T>): Promise<T> {
    this.tally?.add(op);
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new StoreUnavailableError(`redis ${op}: no answer within ${this.commandTimeout} ms`)),
        this.commandTimeout,
      );
    });
    try {
      return await Promise.race([work, deadline]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** True once the client is ready, false after timeoutMs without that. */
  ready(timeoutMs: number): Promise<boolean> {
    if (this.client.status === "ready") return Promise.resolve(true);
    this.connectIfLazy();
    return new Promise((resolve) => {
      const done = (ready: boolean) => {
        clearTimeout(timer);
        this.client.off("ready", onReady);
        resolve(ready);
      };
      const onReady = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.client.on("ready", onReady);
    });
  }

  /** QUIT (lets replies in flight arrive) for at most 200 ms, then drops the connection. */
  async close(): Promise<void> {
    const quit = this.client.quit().catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([quit, new Promise<void>((resolve) => (timer = setTimeout(resolve, 200)))]);
    clearTimeout(timer);
    this.client.disconnect();
  }

  /** A lazyConnect client (one handed to a constructor) connects on first use. */
  private connectIfLazy(): void {
    if (this.client.status === "wait") this.client.connect().catch(() => undefined);
  }

  private async whenReady(): Promise<void> {
    if (this.client.status === "ready" || !CONNECTING.has(this.client.status)) return;
    this.connectIfLazy();
    if (this.statusChange === undefined) {
      this.statusChange = new Promise<void>((resolve) => (this.settleStatusChange = resolve));
    }
    await this.statusChange;
  }
}

/** Any failure of an operation as StoreUnavailableError naming it. */
export function unavailable(op: string, error: unknown): StoreUnavailableError {
  if (error instanceof StoreUnavailableError) return error;
  const reason = error instanceof Error ? error.message : String(error);
  return new StoreUnavailableError(`redis ${op} failed: ${reason}`, error);
}
