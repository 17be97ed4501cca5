/**
 * The request path as an ordered list of stages, and its one way back.
 *
 * A stage's `enter(state)` goes on (returns undefined), answers (returns the answer: the stages
 * after it do not run), or refuses (throws a catalogue error). What a stage takes (a token
 * reservation, a lease, a cache flight) it gives back in its `leave(state)`, which runs on the
 * way back: once, for every stage whose enter returned, last entered first, however the request
 * ended (answered, refused, failed, streamed to the end, or the client gone). A stage whose
 * enter throws took nothing: it undoes its own partial work before throwing.
 *
 * On its way out the answer passes back through the entered stages (`answered`, last first), as
 * Envoy's encode path does: a stage that can act on a complete answer at once (the cache landing
 * a buffered answer for the requests waiting on it) does it there.
 *
 * The way back starts when the client connection is done with the response (its close): then
 * nothing more can happen to the request, so no stage can see a half-finished ending. If the
 * client leaves while a stage's enter is still awaiting, the way back waits for that enter to
 * return, so what it took is given back too, in order.
 *
 * Compare Fastify's ordered lifecycle hooks, undici's composed interceptors, and Envoy's filter
 * chain (Continue, or stop and answer; the encode path runs back through the same filters).
 * The runner awaits only what is really a promise: a stage that decides synchronously costs no
 * promise turn.
 */

export interface Stage<S, A> {
  readonly name: string;
  enter(state: S): A | undefined | Promise<A | undefined>;
  /** The answer passes back through the stage, before it is sent (last entered first). */
  answered?(state: S): void;
  leave?(state: S): void;
}

/** What the runner keeps on each request's state (its fields are part of the state). */
export interface PathProgress {
  /** How many stages entered (their enter returned). */
  entered: number;
  /** A stage's enter is running. */
  running: boolean;
  /** The client connection closed: the way back is due. */
  closed: boolean;
  /** The way back ran. */
  unwound: boolean;
}

/** Raised when the client left while a stage was entering: the way back follows. */
export class ClientLeft extends Error {
  constructor() {
    super("the client left");
    this.name = "ClientLeft";
  }
}

export interface PathHooks<A> {
  /** A leave that throws is a bug: reported, and the other leaves still run. */
  leaveFailed(stage: string, err: unknown): void;
  /** An answer made after the client left: nobody will read it (free what it holds). */
  abandoned(answer: A): void;
}

export class RequestPath<S extends PathProgress & { answer: A | undefined }, A> {
  constructor(
    readonly stages: readonly Stage<S, A>[],
    private readonly hooks: PathHooks<A>,
  ) {}

  /** The stage names, in order: the whole path. */
  get names(): string[] {
    return this.stages.map((s) => s.name);
  }

  async run(state: S): Promise<A> {
    const progress: PathProgress = state;
    progress.running = true;
    try {
      for (let i = 0; i < this.stages.length; i++) {
        let answer = (this.stages[i] as Stage<S, A>).enter(state);
        if (answer instanceof Promise) answer = await answer;
        progress.entered = i + 1;
        // Kept on the state before the way back can run: the leaves read how it ended.
        if (answer !== undefined) state.answer = answer;
        if (progress.closed) {
          if (answer !== undefined) this.hooks.abandoned(answer);
          throw new ClientLeft();
        }
        if (answer !== undefined) {
          for (let j = i; j >= 0; j--) (this.stages[j] as Stage<S, A>).answered?.(state);
          return answer;
        }
      }
      throw new Error("the request path ended without an answer");
    } finally {
      progress.running = false;
      if (progress.closed) this.unwind(state);
    }
  }

  /** The client connection is done: the way back now, or as soon as the running enter returns. */
  close(state: S): void {
    const progress: PathProgress = state;
    progress.closed = true;
    if (!progress.running) this.unwind(state);
  }

  private unwind(state: S): void {
    const progress: PathProgress = state;
    if (progress.unwound) return;
    progress.unwound = true;
    for (let i = progress.entered - 1; i >= 0; i--) {
      const stage = this.stages[i] as Stage<S, A>;
      try {
        stage.leave?.(state);
      } catch (err) {
        this.hooks.leaveFailed(stage.name, err);
      }
    }
  }
}
