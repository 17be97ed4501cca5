/**
 * Relays a backend's response body to the client chunk by chunk as it arrives (no buffering,
 * with backpressure). When the backend fails mid-body (socket closed, idle gap, total timeout):
 * - an event stream gets an SSE `error` event and a clean end, which OpenAI SDKs raise as an
 *   error, instead of a silently truncated stream;
 * - any other body is destroyed, so the client's connection is cut and it sees the failure.
 * When the client leaves, the upstream request is aborted at once so the GPU stops generating.
 */
import { Readable } from "node:stream";
import { type GatewayError, sseErrorEvent } from "../errors.js";
import type { Exchange } from "./exchange.js";
import { toGatewayError } from "./upstream-errors.js";
import type { UsageTap } from "./usage-tap.js";

export class ResponseRelay extends Readable {
  /** Set when the backend failed before its body ended. */
  failure: GatewayError | undefined;
  private done = false;

  constructor(
    private readonly source: Readable,
    private readonly exchange: Exchange,
    private readonly sse: boolean,
    /** Bytes already read from the source (the stream commit point's first event). */
    head: Buffer | null,
    private readonly onDone: (relay: ResponseRelay) => void,
    /** Reads usage from the events (and may drop the usage-only one) as they pass. */
    private readonly tap?: UsageTap,
  ) {
    super();
    if (head) this.forward(head);
    source.on("data", (chunk: Buffer) => {
      if (!this.forward(chunk)) source.pause();
    });
    source.once("end", () => {
      const rest = this.tap?.flush();
      if (rest && rest.length > 0) this.forward(rest);
      this.push(null);
      this.finish();
    });
    source.once("error", (err: Error) => this.fail(err));
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
    if (!this.source.destroyed) {
      this.exchange.abort("client");
      this.source.destroy();
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
    if (this.done) return;
    this.done = true;
    this.exchange.settle();
    this.onDone(this);
  }
}
