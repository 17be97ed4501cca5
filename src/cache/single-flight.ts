/**
 * Request coalescing: concurrent callers asking for the same key share one execution, so a
 * burst of identical cache misses sends one request to the GPUs instead of one per client.
 *
 * Rules:
 * - The first caller of a key (the leader) starts `fn`; callers arriving while it runs
 *   (followers) wait for the same promise and get `shared: true`.
 * - A rejection reaches every caller of that flight; the failure is not remembered.
 * - The key is forgotten as soon as the flight settles, before any caller resumes, so a caller
 *   that reacts to the result by calling `run` again starts a fresh execution (this is
 *   coalescing, not caching: the cache decides what to keep).
 * - `fn` is called synchronously by `run`; a synchronous throw becomes the flight's rejection,
 *   so callers only ever see a rejected promise.
 * - Followers cannot leave a flight early: the execution is shared, so one caller giving up
 *   must not cancel it for the others (the caller stops waiting on its own side).
 */

interface Flight<T> {
  promise: Promise<T>;
  /** Callers waiting on this flight, the leader included. */
  callers: number;
}

export class SingleFlight<T> {
  private readonly flights = new Map<string, Flight<T>>();

  run(key: string, fn: () => Promise<T>): Promise<{ value: T; shared: boolean }> {
    const running = this.flights.get(key);
    if (running !== undefined) {
      running.callers++;
      return running.promise.then((value) => ({ value, shared: true }));
    }
    // The executor runs now, so a synchronous throw in fn rejects instead of escaping run.
    const promise = new Promise<T>((resolve) => resolve(fn()));
    const flight: Flight<T> = { promise, callers: 1 };
    this.flights.set(key, flight);
    // Registered before any caller's handler, so it runs first on settlement. Both arms are
    // handled, so this bookkeeping chain never becomes an unhandled rejection of its own.
    const forget = () => {
      if (this.flights.get(key) === flight) this.flights.delete(key);
    };
    promise.then(forget, forget);
    return promise.then((value) => ({ value, shared: false }));
  }

  /** Callers (leader and followers) waiting on the key's flight; 0 when none runs. */
  waiting(key: string): number {
    return this.flights.get(key)?.callers ?? 0;
  }

  /** Keys with a flight in progress. */
  get size(): number {
    return this.flights.size;
  }
}
