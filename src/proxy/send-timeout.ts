/**
 * A client that stops reading must not hold an answer in the gateway's memory, or its
 * connection, for ever: one that takes none of its answer for `sendTimeout` is cut off.
 *
 * Progress has to be visible for that. A body handed to the socket in one write is one libuv
 * write request, which reports nothing until it completes, so a large buffered answer is sent
 * in slices (SlicedBody): each slice the client takes restarts the clock, and a slow reader
 * that keeps reading is never cut. Streams are watched the same way by the relay. What is left
 * in the socket after the last slice or chunk is watched by guardSlowReader, as is a small
 * answer the socket could not take at once; a small answer written through synchronously, the
 * usual case, costs no timer at all.
 */
import type { ServerResponse } from "node:http";
import { Readable } from "node:stream";

/** Buffered answers larger than this are sent in slices of this size. */
export const SLICE = 64 * 1024;

/**
 * Cuts the connection when, in a whole `ms`, the socket took none of what waits for it: each
 * write it completes (a slice, the last chunks) shrinks its queue, which is the progress seen.
 */
export function guardSlowReader(res: ServerResponse, ms: number): void {
  const socket = res.socket;
  if (res.writableFinished || res.destroyed || !socket) return;
  let waiting = socket.writableLength;
  const timer = setInterval(() => {
    const now = socket.writableLength;
    if (now > 0 && now >= waiting) res.destroy();
    waiting = now;
  }, ms);
  timer.unref();
  res.once("close", () => clearInterval(timer));
}

/** A buffered answer sent slice by slice; destroyed when the client takes no slice for `ms`. */
export class SlicedBody extends Readable {
  private offset = 0;
  private stall: NodeJS.Timeout | undefined;

  constructor(
    private readonly body: Buffer,
    private readonly ms: number,
  ) {
    super({ highWaterMark: SLICE });
  }

  override _read(): void {
    this.clearStall();
    if (this.offset >= this.body.length) {
      this.push(null);
      return;
    }
    const end = Math.min(this.offset + SLICE, this.body.length);
    const slice = this.body.subarray(this.offset, end);
    this.offset = end;
    this.stall = setTimeout(
      () => this.destroy(new Error(`the client took nothing for ${this.ms} ms`)),
      this.ms,
    );
    this.push(slice);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.clearStall();
    callback(err);
  }

  private clearStall(): void {
    if (this.stall) {
      clearTimeout(this.stall);
      this.stall = undefined;
    }
  }
}
