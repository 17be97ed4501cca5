/**
 * One client request's life upstream: the abort signal that stops the backend's work when the
 * client leaves or the total timeout passes, and the one-time release of the backend slot.
 */
import type { Backend } from "../upstream/backend.js";

export type AbortReason = "client" | "total";

export class Exchange {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private backend: Backend | undefined;
  abortReason: AbortReason | undefined;
  /** ms since the process's monotonic origin when the upstream answered with headers. */
  firstByteAt: number | undefined;
  bytesOut = 0;

  constructor(totalTimeoutMs: number) {
    this.timer = setTimeout(() => this.abort("total"), totalTimeoutMs);
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  abort(reason: AbortReason): void {
    if (this.abortReason !== undefined || this.timer === undefined) return;
    this.abortReason = reason;
    this.controller.abort(new Error(`aborted: ${reason}`));
  }

  /** The backend chosen, kept after settle() for the access log. */
  backendName: string | undefined;

  /** Holds a slot on the backend until settle(). */
  occupy(backend: Backend): void {
    this.backend = backend;
    this.backendName = backend.name;
    backend.inFlight++;
  }

  /** Idempotent: the response finished, failed, or the client left. */
  settle(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.backend) {
      this.backend.inFlight--;
      this.backend = undefined;
    }
  }
}
