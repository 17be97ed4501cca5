/**
 * The embeddings engine: what makes merging small embeddings requests worth it. An encoder-only
 * server such as llama.cpp's with one slot, or Ollama, runs one embeddings call at a time, and a
 * call costs a fixed overhead (tokenizer, scheduling, one forward pass launched, results
 * gathered) plus a smaller amount per input and per token:
 *
 *   callMs = scale * ( embedCallMs  +  embedPerInputMs * inputs  +  prefillMsPerToken * tokens )
 *
 * So 64 one-input calls cost 64 fixed overheads, one 64-input call costs one. `embedSlots` calls
 * run at once (1 by default); the others wait in arrival order, up to `maxQueue` (then 503
 * server_busy, as the batch scheduler answers). Engines that batch embeddings internally (TEI,
 * vLLM) are closer to a high `embedSlots` with a small `embedCallMs`: merging gains less there.
 *
 * A call whose client goes away is dropped at once, waiting or running (its slot goes to the
 * next), as the batch scheduler does. Pure logic over an injected clock, like the scheduler.
 */
import type { ScheduleFn } from "./batch-scheduler.js";

export interface EmbedTiming {
  embedCallMs: number;
  embedPerInputMs: number;
  prefillMsPerToken: number;
}

export interface EmbedCallSpec {
  inputs: number;
  promptTokens: number;
  /** Called once when the call's work is done (not after abort). */
  onFinish(): void;
}

export interface EmbedCallHandle {
  readonly id: number;
}

export interface EmbeddingEngineOptions {
  slots: number;
  maxQueue: number;
  timing: EmbedTiming;
  /** Multiplier on call times, read when a call starts. */
  scale: () => number;
  schedule: ScheduleFn;
}

export function embedCallDurationMs(
  timing: EmbedTiming,
  inputs: number,
  promptTokens: number,
  scale: number,
): number {
  return (
    scale * (timing.embedCallMs + timing.embedPerInputMs * inputs + timing.prefillMsPerToken * promptTokens)
  );
}

interface Call extends EmbedCallHandle {
  readonly spec: EmbedCallSpec;
  /** Cancels the running call's timer; undefined while it waits. */
  cancel: (() => void) | undefined;
}

export class EmbeddingEngine {
  private readonly running = new Map<number, Call>();
  private readonly waiting: Call[] = [];
  private nextId = 1;
  private closed = false;

  constructor(private readonly options: EmbeddingEngineOptions) {}

  get runningCount(): number {
    return this.running.size;
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Queues a call; null when every slot is busy and the queue is full (or the engine closed). */
  submit(spec: EmbedCallSpec): EmbedCallHandle | null {
    if (this.closed) return null;
    const call: Call = { id: this.nextId++, spec, cancel: undefined };
    if (this.running.size < this.options.slots) {
      this.start(call);
      return call;
    }
    if (this.waiting.length >= this.options.maxQueue) return null;
    this.waiting.push(call);
    return call;
  }

  /** Drops a call (its client left). False when it had finished or was dropped already. */
  abort(handle: EmbedCallHandle): boolean {
    const running = this.running.get(handle.id);
    if (running !== undefined) {
      running.cancel?.();
      this.running.delete(handle.id);
      this.startWaiting();
      return true;
    }
    const at = this.waiting.findIndex((c) => c.id === handle.id);
    if (at === -1) return false;
    this.waiting.splice(at, 1);
    return true;
  }

  /** Drops everything without callbacks. */
  close(): void {
    this.closed = true;
    for (const call of this.running.values()) call.cancel?.();
    this.running.clear();
    this.waiting.length = 0;
  }

  private start(call: Call): void {
    this.running.set(call.id, call);
    const ms = embedCallDurationMs(
      this.options.timing,
      call.spec.inputs,
      call.spec.promptTokens,
      this.options.scale(),
    );
    call.cancel = this.options.schedule(() => {
      this.running.delete(call.id);
      call.spec.onFinish();
      this.startWaiting();
    }, ms);
  }

  private startWaiting(): void {
    while (!this.closed && this.running.size < this.options.slots) {
      const next = this.waiting.shift();
      if (next === undefined) return;
      this.start(next);
    }
  }
}
