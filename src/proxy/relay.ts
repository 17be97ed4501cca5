/**
 * Relays a backend's response body to the client chunk by chunk as it arrives (no buffering,
 * with backpressure). When the backend fails mid-body (socket closed, idle gap, total timeout):
 * - an event stream gets an SSE `error` event and a clean end, which OpenAI SDKs raise as an
 *   error, instead of a silently truncated stream;
 * - any other body is destroyed, so the client's connection is cut and it sees the failure.
 * When the client leaves, the upstream request is aborted at once so the GPU stops generating,
 * and so it is when the client stops reading for `sendTimeout`: a reader that never drains its
 * socket must not hold a backend slot and the relay's buffers for ever.
 *
 * An OpenAI event stream passes through a StreamTap, and one that ends without `data: [DONE]`
 * (when the pool requires it) ends with an SSE error event: a stream that merely stops is a
 * truncated answer, not a complete one.
 *
 * `started` settles at the stream commit point: it resolves with the first chunk and rejects if
 * the body fails or ends before one. When the forwarder holds the response until then
 * (`awaitsCommit`), a failure before the first chunk is not the client's to see and not the
 * relay's to handle: it only rejects `started`, and the forwarder discards the relay and retries
 * on the same exchange (which must therefore not be settled here). The relay is the call's body sink
 * from construction on, so no event can fall between two owners (an `end` emitted on the tick
 * after the only chunk was once lost that way, and the client waited for ever).
 */
import { Readable } from "node:stream";
import { errors, type GatewayError, sseErrorEvent } from "../errors.js";
import type { Exchange } from "./exchange.js";
import type { StreamTap } from "./stream-tap.js";
import type { BodySink, UpstreamCall } from "./upstream-call.js";
import { fromUpstreamError } from "./upstream-errors.js";

export class ResponseRelay extends Readable implements BodySink {
  /** Set when the backend failed before its body ended. */
  failure: GatewayError | undefined;
  /** Resolves at the first chunk; rejects when the body fails or ends before one. */
  readonly started: Promise<void>;
  private resolveStart: () => void = () => {};
  private rejectStart: (err: unknown) => void = () => {};
  private gotData = false;
  /** Cleared when the forwarder discards the relay before the commit point. */
  private live = true;
  private done = false;
  private stall: NodeJS.Timeout | undefined;

  constructor(
    private readonly source: UpstreamCall,
    private readonly exchange: Exchange,
    private readonly sse: boolean,
    private readonly onDone: (relay: ResponseRelay) => void,
    /** The forwarder awaits `started` and handles a failure before it (retry or error answer). */
    private readonly awaitsCommit: boolean,
    /** How long the client may read nothing while the relay holds data for it. */
    private readonly sendTimeoutMs: number,
    /** Parses an OpenAI event stream as it passes (end, usage, recording). */
    readonly tap?: StreamTap,
    /** The stream must end with `data: [DONE]`. */
    private readonly requireDone = false,
  ) {
    super();
    this.started = new Promise<void>((resolve, reject) => {
      this.resolveStart = resolve;
      this.rejectStart = reject;
    });
    this.started.catch(() => undefined);
    this.once("end", () => this.clearStall());
    source.attach(this);
  }

  onData(chunk: Buffer): boolean {
    if (!this.live) return true;
    if (!this.gotData) {
      this.gotData = true;
      this.resolveStart();
    }
    return this.forward(chunk);
  }

  onEnd(): void {
    if (!this.gotData) {
      // Headers and then nothing: a stream that never started is the backend's failure.
      this.rejectStart(errors.upstreamBadResponse());
      if (this.awaitsCommit || !this.live) return;
    }
    const tap = this.tap;
    if (tap) {
      // The rest goes out as it is: feeding it back through the tap would hold it again.
      const rest = tap.end();
      if (rest.length > 0) this.pushOut(rest);
      if (this.requireDone && !tap.done) {
        this.fail(errors.upstreamBadResponse().causedBy(new Error("the stream ended without data: [DONE]")));
        return;
      }
    }
    this.push(null);
    this.finish();
  }

  onError(err: Error): void {
    if (!this.gotData) {
      this.rejectStart(err);
      if (this.awaitsCommit) return;
    }
    if (this.live) this.fail(err);
  }

  /** The forwarder gives up on this body before the commit point (it will retry elsewhere). */
  discard(): void {
    this.live = false;
    this.source.abort(new Error("discarded before the stream commit point"));
  }

  private forward(chunk: Buffer): boolean {
    const out = this.tap ? this.tap.process(chunk) : chunk;
    if (out.length === 0) return true;
    return this.pushOut(out);
  }

  private pushOut(out: Buffer): boolean {
    this.exchange.bytesOut += out.length;
    if (this.push(out)) return true;
    // The client is not keeping up. Armed only under backpressure, so it costs nothing otherwise.
    this.stall ??= setTimeout(
      () => this.destroy(new Error(`the client read nothing for ${this.sendTimeoutMs} ms`)),
      this.sendTimeoutMs,
    );
    return false;
  }

  override _read(): void {
    this.clearStall();
    this.source.resume();
  }

  private clearStall(): void {
    if (this.stall) {
      clearTimeout(this.stall);
      this.stall = undefined;
    }
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.clearStall();
    if (!this.source.finished) {
      this.exchange.abort("client");
      this.source.abort(new Error("the client went away"));
    }
    this.finish();
    callback(err);
  }

  private fail(err: Error): void {
    if (this.exchange.abortReason === "client" || this.destroyed) {
      this.finish();
      return;
    }
    this.failure = fromUpstreamError(err, this.exchange.abortReason);
    if (this.sse) {
      this.push(sseErrorEvent(this.failure));
      this.push(null);
      this.finish();
    } else {
      this.finish();
      this.destroy(this.failure);
    }
  }

  private finish(): void {
    if (this.done || !this.live) return;
    this.done = true;
    this.exchange.settle();
    this.onDone(this);
  }
}
