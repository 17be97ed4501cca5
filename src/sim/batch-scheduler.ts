/**
 * Continuous batching, the way vLLM schedules one GPU: the engine runs in steps; at each step
 * boundary waiting sequences are admitted into free slots, every admitted sequence is prefilled
 * in the next step, and every running sequence emits one token per step.
 *
 * Timing model (one step):
 *
 *   stepMs = scale * ( prefillMsPerToken * P  +  (B > 0 ? decodeStepMs + decodeMsPerSeq * B : 0) )
 *
 *   P = prompt tokens of the sequences prefilled in this step (those admitted since the last step),
 *       less the tokens each finds in the prefix cache (SequenceSpec.cachedPromptTokens, asked
 *       once, when the sequence is scheduled for its prefill step, as vLLM looks blocks up when
 *       it schedules a waiting request)
 *   B = sequences that emit a token at the end of this step (the newly prefilled ones included:
 *       a prefill's forward pass yields the first token)
 *   scale = timeScale * slow-start factor, read at the start of each step
 *
 * Why this shape: prefill is compute-bound, so its cost grows with prompt tokens; a decode step is
 * memory-bound, a fixed cost to stream the weights plus a per-sequence cost to read its KV cache.
 * Mixing a newcomer's prefill into the running batch's step (vLLM's chunked prefill, without the
 * chunk budget) makes a long prompt stall everyone's next token, which is what a gateway sees.
 *
 * So a lone request with prompt p and n output tokens takes
 *   TTFT = scale * (prefillMsPerToken * p + decodeStepMs + decodeMsPerSeq)  and
 *   total = TTFT + (n - 1) * scale * (decodeStepMs + decodeMsPerSeq).
 *
 * KV cache: a running sequence holds (prompt + generated) tokens. A sequence is admitted only
 * when a slot is free and its prompt fits in the free KV cache (or nothing else runs, so a huge
 * prompt cannot wedge the queue). Generated tokens may overcommit the cache; vLLM would preempt
 * then, the simulator only reports usage capped at 1.
 *
 * The scheduler is pure logic over an injected clock, so tests drive it without real time.
 */

export interface BatchTiming {
  prefillMsPerToken: number;
  decodeStepMs: number;
  decodeMsPerSeq: number;
}

/** Schedules fn after ms; returns a function that cancels it. */
export type ScheduleFn = (fn: () => void, ms: number) => () => void;

export interface SequenceSpec {
  /** Lower waits less (priority scheduling); 0 when absent, so that FCFS is plain arrival order. */
  priority?: number;
  promptTokens: number;
  /**
   * Asked once, as the sequence is scheduled for prefill: how many of its prompt tokens are
   * already in the prefix cache, which its prefill step does not compute. Absent: none.
   * The KV cache still counts the whole prompt.
   */
  cachedPromptTokens?: () => number;
  /** 0 for prefill-only work (embeddings): finishes at the end of its prefill step. */
  outputTokens: number;
  /** Called when the sequence emits token `index` (0-based). */
  onToken(index: number): void;
  /** Called once after the last token (not after abort). */
  onFinish(): void;
}

export type SequenceState = "waiting" | "admitted" | "prefilling" | "decoding" | "finished" | "aborted";

export interface SequenceHandle {
  readonly id: number;
  readonly state: SequenceState;
  readonly generated: number;
}

export interface BatchSchedulerOptions {
  slots: number;
  maxQueue: number;
  kvCacheTokens: number;
  timing: BatchTiming;
  /** Multiplier on step times, read at the start of every step. */
  scale: () => number;
  schedule: ScheduleFn;
}

interface Sequence extends SequenceHandle {
  state: SequenceState;
  generated: number;
  readonly spec: SequenceSpec;
}

export function stepDurationMs(
  timing: BatchTiming,
  prefillTokens: number,
  batchSize: number,
  scale: number,
): number {
  const decode = batchSize > 0 ? timing.decodeStepMs + timing.decodeMsPerSeq * batchSize : 0;
  return scale * (timing.prefillMsPerToken * prefillTokens + decode);
}

export class BatchScheduler {
  private readonly running: Sequence[] = [];
  private readonly waiting: Sequence[] = [];
  private cancelStep: (() => void) | null = null;
  /** Set while step results are delivered, so callbacks that submit or abort cannot start a second step. */
  private delivering = false;
  private kvInUse = 0;
  private nextId = 1;
  private closed = false;

  constructor(private readonly options: BatchSchedulerOptions) {}

  get runningCount(): number {
    return this.running.length;
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  get kvTokensInUse(): number {
    return this.kvInUse;
  }

  /** Fraction 0..1 of the KV cache held by running sequences (vllm:gpu_cache_usage_perc). */
  get kvCacheUsage(): number {
    return Math.min(1, this.kvInUse / this.options.kvCacheTokens);
  }

  get stepInProgress(): boolean {
    return this.cancelStep !== null;
  }

  /** Queues a sequence; null when every slot is taken and the waiting queue is full. */
  submit(spec: SequenceSpec): SequenceHandle | null {
    if (this.closed) return null;
    const seq: Sequence = { id: this.nextId++, state: "waiting", generated: 0, spec };
    if (this.waiting.length === 0 && this.canAdmit(seq)) {
      this.admit(seq);
      this.kick();
      return seq;
    }
    if (this.waiting.length >= this.options.maxQueue) return null;
    // In priority order, then arrival: behind every waiting sequence of the same or a lower value.
    const priority = spec.priority ?? 0;
    let at = this.waiting.length;
    while (at > 0 && ((this.waiting[at - 1] as Sequence).spec.priority ?? 0) > priority) at--;
    this.waiting.splice(at, 0, seq);
    return seq;
  }

  /** Removes a sequence at once (client went away). False if it had already finished or was aborted. */
  abort(handle: SequenceHandle): boolean {
    const seq = this.find(handle);
    if (seq === undefined) return false;
    if (seq.state === "waiting") {
      this.waiting.splice(this.waiting.indexOf(seq), 1);
      seq.state = "aborted";
      return true;
    }
    this.release(seq);
    seq.state = "aborted";
    if (this.running.length === 0 && this.cancelStep !== null) {
      // Nobody is left to receive this step's tokens; do not keep a timer for nothing.
      this.cancelStep();
      this.cancelStep = null;
    }
    // A freed slot is handed to the next waiting sequence now, not at the next step boundary,
    // so "waiting" drops as soon as a client leaves.
    this.admitWaiting();
    this.kick();
    return true;
  }

  /** Drops everything without callbacks and cancels the pending step. */
  close(): void {
    this.closed = true;
    this.cancelStep?.();
    this.cancelStep = null;
    for (const seq of this.running) seq.state = "aborted";
    for (const seq of this.waiting) seq.state = "aborted";
    this.running.length = 0;
    this.waiting.length = 0;
    this.kvInUse = 0;
  }

  private find(handle: SequenceHandle): Sequence | undefined {
    if (handle.state === "finished" || handle.state === "aborted") return undefined;
    return this.running.find((s) => s.id === handle.id) ?? this.waiting.find((s) => s.id === handle.id);
  }

  private canAdmit(seq: Sequence): boolean {
    if (this.running.length >= this.options.slots) return false;
    return this.running.length === 0 || this.kvInUse + seq.spec.promptTokens <= this.options.kvCacheTokens;
  }

  private admit(seq: Sequence): void {
    seq.state = "admitted";
    this.running.push(seq);
    this.kvInUse += seq.spec.promptTokens;
  }

  private release(seq: Sequence): void {
    const index = this.running.indexOf(seq);
    if (index >= 0) this.running.splice(index, 1);
    this.kvInUse -= seq.spec.promptTokens + seq.generated;
  }

  /** First come, first served: a head that does not fit blocks the rest, as in vLLM's FCFS policy. */
  private admitWaiting(): void {
    while (this.waiting.length > 0) {
      const head = this.waiting[0];
      if (head === undefined || !this.canAdmit(head)) return;
      this.waiting.shift();
      this.admit(head);
    }
  }

  private kick(): void {
    if (this.cancelStep !== null || this.delivering || this.closed) return;
    this.startStep();
  }

  private startStep(): void {
    this.admitWaiting();
    if (this.running.length === 0) return;
    const batch = this.running.slice();
    let prefillTokens = 0;
    let emitting = 0;
    for (const seq of batch) {
      if (seq.state === "admitted") {
        seq.state = "prefilling";
        const cached = seq.spec.cachedPromptTokens?.() ?? 0;
        prefillTokens += seq.spec.promptTokens - Math.min(seq.spec.promptTokens, Math.max(0, cached));
      }
      if (seq.spec.outputTokens > 0) emitting++;
    }
    const ms = stepDurationMs(this.options.timing, prefillTokens, emitting, this.options.scale());
    this.cancelStep = this.options.schedule(() => this.endStep(batch), ms);
  }

  private endStep(batch: Sequence[]): void {
    this.cancelStep = null;
    this.delivering = true;
    try {
      for (const seq of batch) {
        if (seq.state !== "prefilling" && seq.state !== "decoding") continue;
        if (seq.spec.outputTokens > 0) {
          seq.state = "decoding";
          const index = seq.generated++;
          this.kvInUse++;
          seq.spec.onToken(index);
          // The callback may have aborted it (e.g. an injected mid-stream drop).
          if (seq.state !== "decoding" || seq.generated < seq.spec.outputTokens) continue;
        }
        this.release(seq);
        seq.state = "finished";
        seq.spec.onFinish();
      }
    } finally {
      this.delivering = false;
    }
    if (!this.closed) this.startStep();
  }
}
