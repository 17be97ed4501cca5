/**
 * The open batches: requests that may share an upstream call (the same key) gather in one batch
 * until it is full or its window ends, then the batch is sent as one call. Time comes from an
 * injected scheduler, so tests can drive it by hand.
 *
 * A batch opens with its first request and is sent `windowMs` later, or at once when it holds
 * `maxInputs` inputs or `maxTokens` estimated tokens. A request that would overfill the open batch
 * sends it first and opens the next one (a request's inputs are never split across calls, so
 * each answer comes from one call); a request larger than a batch can hold is not taken (the
 * caller sends it alone). A request removed before its batch is sent (its client left) is
 * simply not in it; a batch left empty is dropped with its timer, and no call is made.
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
export const FLUSH_REASONS: readonly FlushReason[] = ["window", "max_inputs", "max_tokens"];

export interface Batch<M> {
  readonly key: string;
  readonly limits: BatchLimits;
  readonly members: M[];
  inputs: number;
  tokens: number;
  cancelTimer: (() => void) | undefined;
}

export class Batcher<M extends { readonly input: MemberInput }> {
  private readonly open = new Map<string, Batch<M>>();

  constructor(
    private readonly send: (batch: Batch<M>, reason: FlushReason) => void,
    private readonly schedule: ScheduleFn = setTimer,
  ) {}

  /** Batches waiting to be sent. */
  get size(): number {
    return this.open.size;
  }

  /** Adds the request to its key's open batch; false when it is too large for any batch. */
  add(key: string, member: M, limits: BatchLimits): boolean {
    const inputs = member.input.items.length;
    const tokens = member.input.tokens;
    if (inputs > limits.maxInputs || tokens > limits.maxTokens) return false;
    let batch = this.open.get(key);
    if (batch !== undefined) {
      // Limits are the batch's own (from its first request): a reload cannot resize it.
      if (batch.inputs + inputs > batch.limits.maxInputs) this.flush(batch, "max_inputs");
      else if (batch.tokens + tokens > batch.limits.maxTokens) this.flush(batch, "max_tokens");
      batch = this.open.get(key);
    }
    if (batch === undefined) {
      const opened: Batch<M> = { key, limits, members: [], inputs: 0, tokens: 0, cancelTimer: undefined };
      opened.cancelTimer = this.schedule(() => this.flush(opened, "window"), limits.windowMs);
      this.open.set(key, opened);
      batch = opened;
    }
    batch.members.push(member);
    batch.inputs += inputs;
    batch.tokens += tokens;
    if (batch.inputs >= batch.limits.maxInputs) this.flush(batch, "max_inputs");
    else if (batch.tokens >= batch.limits.maxTokens) this.flush(batch, "max_tokens");
    return true;
  }

  /** Takes the request out of its batch if the batch is not sent yet; false when it was. */
  remove(key: string, member: M): boolean {
    const batch = this.open.get(key);
    const at = batch?.members.indexOf(member) ?? -1;
    if (batch === undefined || at === -1) return false;
    batch.members.splice(at, 1);
    batch.inputs -= member.input.items.length;
    batch.tokens -= member.input.tokens;
    if (batch.members.length === 0) {
      batch.cancelTimer?.();
      this.open.delete(key);
    }
    return true;
  }

  private flush(batch: Batch<M>, reason: FlushReason): void {
    if (this.open.get(batch.key) !== batch) return;
    this.open.delete(batch.key);
    batch.cancelTimer?.();
    batch.cancelTimer = undefined;
    this.send(batch, reason);
  }
}
