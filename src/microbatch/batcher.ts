/**
 * The open batches: requests that may share an upstream call (the same key) gather in one batch,
 * which goes when full or when its window ends, and keeps taking requests while it waits for a
 * backend slot, until the call takes it. Time comes from an injected scheduler, so tests can
 * drive it by hand.
 *
 * A batch's life:
 *   gathering  opened by its first request; sent (handed to `send`) `windowMs` later, or at once
 *              when it holds `maxInputs` inputs or `maxTokens` estimated tokens
 *   waiting    sent, waiting for a backend slot: requests of its key still join it (they would
 *              wait for a slot anyway), up to its limits
 *   taken      the call holds its slot and took the members (take()): nobody joins any more
 * So under load, while the backend is busy, batches grow towards their limits by themselves;
 * with a free slot a batch goes as soon as its window ends.
 *
 * A key has at most one batch that takes requests; a full one (or one a request would overfill)
 * stops taking them, and the next request opens a new one. A request's inputs are never split
 * across calls (each answer comes from one call); a request larger than a batch can hold is not
 * taken (the caller sends it alone). A request removed before its batch is taken (its client
 * left) is not in the call; remove() says which batch it left, so the caller can cancel a
 * waiting batch left empty (a gathering one left empty is dropped here, with its timer).
 */
import type { MemberInput } from "./merge.js";

/** Schedules fn after ms; returns a function that cancels it. */
export type ScheduleFn = (fn: () => void, ms: number) => () => void;

export const setTimer: ScheduleFn = (fn, ms) => {
  const timer = setTimeout(fn, ms);
  return () => clearTimeout(timer);
};

export interface BatchLimits {
  maxInputs: number;
  maxTokens: number;
  windowMs: number;
}

/** Why a batch was sent: its window ended, or it held as many inputs or tokens as it may. */
export type FlushReason = "window" | "max_inputs" | "max_tokens";

export type BatchState = "gathering" | "waiting" | "taken";

export interface Batch<M> {
  readonly key: string;
  readonly limits: BatchLimits;
  readonly members: M[];
  inputs: number;
  tokens: number;
  state: BatchState;
}

interface OpenBatch<M> extends Batch<M> {
  cancelTimer: (() => void) | undefined;
}

export class Batcher<M extends { readonly input: MemberInput }> {
  /** The batch of each key that takes requests. */
  private readonly open = new Map<string, OpenBatch<M>>();
  /** The batch each request is in until its batch is taken. */
  private readonly batchOf = new Map<M, OpenBatch<M>>();

  constructor(
    private readonly send: (batch: Batch<M>, reason: FlushReason) => void,
    private readonly schedule: ScheduleFn = setTimer,
  ) {}

  /** Keys with a batch that takes requests. */
  get size(): number {
    return this.open.size;
  }

  /** Adds the request to its key's batch; false when it is too large for any batch. */
  add(key: string, member: M, limits: BatchLimits): boolean {
    const inputs = member.input.items.length;
    const tokens = member.input.tokens;
    if (inputs > limits.maxInputs || tokens > limits.maxTokens) return false;
    let batch = this.open.get(key);
    if (batch !== undefined) {
      // Limits are the batch's own (from its first request): a reload cannot resize it.
      const over =
        batch.inputs + inputs > batch.limits.maxInputs
          ? "max_inputs"
          : batch.tokens + tokens > batch.limits.maxTokens
            ? "max_tokens"
            : undefined;
      if (over !== undefined) {
        this.full(batch, over);
        batch = undefined;
      }
    }
    if (batch === undefined) {
      const opened: OpenBatch<M> = {
        key,
        limits,
        members: [],
        inputs: 0,
        tokens: 0,
        state: "gathering",
        cancelTimer: undefined,
      };
      opened.cancelTimer = this.schedule(() => this.flush(opened, "window"), limits.windowMs);
      this.open.set(key, opened);
      batch = opened;
    }
    batch.members.push(member);
    this.batchOf.set(member, batch);
    batch.inputs += inputs;
    batch.tokens += tokens;
    if (batch.inputs >= batch.limits.maxInputs) this.full(batch, "max_inputs");
    else if (batch.tokens >= batch.limits.maxTokens) this.full(batch, "max_tokens");
    return true;
  }

  /**
   * Takes the request out of its batch if the batch is not taken yet; returns that batch (the
   * caller sees whether it is empty now), or undefined when the request is in none.
   */
  remove(member: M): Batch<M> | undefined {
    const batch = this.batchOf.get(member);
    if (batch === undefined) return undefined;
    this.batchOf.delete(member);
    batch.members.splice(batch.members.indexOf(member), 1);
    batch.inputs -= member.input.items.length;
    batch.tokens -= member.input.tokens;
    if (batch.members.length === 0) {
      this.close(batch);
      batch.cancelTimer?.();
      batch.cancelTimer = undefined;
    }
    return batch;
  }

  /** The call holds its slot: the batch takes nobody more, and these members are its call. */
  take(batch: Batch<M>): readonly M[] {
    const open = batch as OpenBatch<M>;
    this.close(open);
    open.cancelTimer?.();
    open.cancelTimer = undefined;
    open.state = "taken";
    for (const m of open.members) this.batchOf.delete(m);
    return open.members;
  }

  /** Takes no more requests; sent now if it was still gathering. */
  private full(batch: OpenBatch<M>, reason: FlushReason): void {
    this.close(batch);
    if (batch.state === "gathering") this.flush(batch, reason);
  }

  private flush(batch: OpenBatch<M>, reason: FlushReason): void {
    if (batch.state !== "gathering") return;
    batch.cancelTimer?.();
    batch.cancelTimer = undefined;
    batch.state = "waiting";
    this.send(batch, reason);
  }

  private close(batch: OpenBatch<M>): void {
    if (this.open.get(batch.key) === batch) this.open.delete(batch.key);
  }
}
