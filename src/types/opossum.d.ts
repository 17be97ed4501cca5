/**
 * The part of opossum 9 floodgate uses, typed from its source (lib/circuit.js): the published
 * @types lag the library, and src/upstream/breaker.ts is the only module that touches it.
 */
declare module "opossum" {
  import { EventEmitter } from "node:events";

  interface CircuitBreakerOptions {
    /** ms before a call counts as failed; false: never (floodgate times its own calls). */
    timeout?: number | false;
    errorThresholdPercentage?: number;
    resetTimeout?: number;
    rollingCountTimeout?: number;
    rollingCountBuckets?: number;
    rollingPercentilesEnabled?: boolean;
    volumeThreshold?: number;
    /** true: the error does not count as a failure (the call still rejects). */
    errorFilter?: (err: unknown) => boolean;
    enableSnapshots?: boolean;
    name?: string;
  }

  interface CircuitBreakerStats {
    fires: number;
    failures: number;
    successes: number;
    rejects: number;
  }

  class CircuitBreaker<A extends unknown[], R> extends EventEmitter {
    constructor(action: (...args: A) => Promise<R>, options?: CircuitBreakerOptions);
    /** Read at each open to schedule half-open: floodgate sets it per open. */
    /** Read at each decision (circuit.js), so a change takes effect at once. */
    readonly options: { resetTimeout: number; errorThresholdPercentage: number };
    fire(...args: A): Promise<R>;
    open(): void;
    close(): void;
    shutdown(): void;
    readonly opened: boolean;
    readonly closed: boolean;
    readonly halfOpen: boolean;
    /** In half-open: no probe taken yet. */
    readonly pendingClose: boolean;
    readonly stats: CircuitBreakerStats;
  }

  export default CircuitBreaker;
}
