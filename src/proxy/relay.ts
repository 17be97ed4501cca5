/**
 * Relays a backend's response body to the client chunk by chunk as it arrives (no buffering,
 * with backpressure). When the backend fails mid-body (socket closed, idle gap, total timeout):
 * - an event stream gets an SSE `error` event and a clean end, which OpenAI SDKs raise as an
 *   error, instead of a silently truncated stream;
 * - any other body is destroyed, so the client's connection is cut and it sees the failure.
 * When the client leaves, the upstream request is aborted at once so the GPU stops generating.
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
import type { BodySink, UpstreamCall } from "./upstream-call.js";
import { toGatewayError } from "./upstream-errors.js";
import type { UsageTap } from "./usage-tap.js";

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

  constructor(
    private readonly source: UpstreamCall,
    private readonly exchange: Exchange,
    private readonly sse: boolean,
    private readonly onDone: (relay: ResponseRelay) => void,
    /** The forwarder awaits `started` and handles a failure before it (retry or error answer). */
    private readonly awaitsCommit: boolean,
    /** Reads usage from the events (and may drop the usage-only one) as they pass. */
    private readonly tap?: UsageTap,
  ) {
    super();
    this.started = new Promise<void>((resolve, reject) => {
      this.resolveStart = resolve;
      this.rejectStart = reject;
    });
    this.started.catch(() => undefined);
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
    const rest = this.tap?.flush();
    if (rest && rest.length > 0) this.forward(rest);
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
    this.exchange.bytesOut += out.length;
    return this.push(out);
  }

  override _read(): void {
    this.source.resume();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
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
    this.failure = toGatewayError(err, this.exchange.abortReason);
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
