/**
 * Waiting for a state instead of for a length of time. The deadline is only there to turn a
 * hang into a failure: it is generous, so a busy or briefly stalled machine makes a test
 * slower, never wrong.
 */

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export interface EventuallyOptions {
  /** Give up after this many ms (10 s). */
  timeout?: number;
  /** Pause between two checks (10 ms). */
  interval?: number;
  /** What is awaited, for the failure message. */
  what?: string;
}

/**
 * Calls `check` until it returns a truthy value and returns that value. A check that throws
 * (an `expect` not met yet) counts as not yet; after the timeout the last error is thrown, or
 * an error naming `what`.
 */
export async function eventually<T>(
  check: () => T | Promise<T>,
  { timeout = 10_000, interval = 10, what = "the condition" }: EventuallyOptions = {},
): Promise<T> {
  const deadline = Date.now() + timeout;
  for (;;) {
    let failure: unknown;
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      failure = error;
    }
    if (Date.now() >= deadline) {
      throw failure ?? new Error(`timed out after ${timeout} ms waiting for ${what}`);
    }
    await sleep(interval);
  }
}
