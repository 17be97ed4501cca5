/**
 * One HTTP request to one backend, made through undici's dispatch API with this object as the
 * handler. undici's request() would wrap every answer in a Readable stream, an AsyncResource,
 * a promise and an abort-signal listener; at saturation that cost more CPU than the rest of the
 * forwarder, and the gateway needs none of it: a non-streamed answer is read whole, and a
 * stream has exactly one consumer (the relay), fed chunk by chunk with backpressure through
 * undici's pause and resume.
 *
 * The pool's first-byte timeout is undici's headersTimeout, which starts only once the request
 * is written to a socket. A request that has to wait for a connection first gets a timer of its
 * own from dispatch, so the wait counts against the same bound (a request dispatched onto an
 * idle connection, the usual case, is written synchronously and needs none).
 *
 * `start()` resolves at the response headers. Chunks, the end and an error can arrive before a
 * consumer attaches (undici parses the headers and the first chunk in one go, before the
 * promise's continuation runs): they are held and handed over on attach, so nothing falls
 * between two owners. `abort()` ends the call at any point, also while the request still waits
 * in the pool's queue: the caller learns at once, undici when the request leaves the queue.
 */
import type { IncomingHttpHeaders } from "node:http";
import { type Dispatcher, errors as undiciErrors } from "undici";

/** The one consumer of a body. */
export interface BodySink {
  /** Returns false to hold further chunks until the call's resume(). */
  onData(chunk: Buffer): boolean;
  onEnd(): void;
  onError(err: Error): void;
}

/** Stands in as the sink once completeBody() took the body. */
const DRAINED: BodySink = { onData: () => true, onEnd: () => {}, onError: () => {} };

export class UpstreamCall implements Dispatcher.DispatchHandler {
  statusCode = 0;
  headers: IncomingHttpHeaders = {};
  private controller: Dispatcher.DispatchController | undefined;
  private abortedWith: Error | undefined;
  private resolveHead: ((call: UpstreamCall) => void) | undefined;
  private rejectHead: ((err: Error) => void) | undefined;
  private sink: BodySink | undefined;
  /** What arrived before a sink attached. */
  private held: Buffer[] | undefined;
  private endedEarly = false;
  private failedEarly: Error | undefined;
  /** The body ended or failed (or the call was aborted): nothing more will arrive. */
  finished = false;
  /** Bounds the wait for a connection plus the wait for headers (see above). */
  private queueTimer: NodeJS.Timeout | undefined;

  /** Sends the request; resolves at the response headers, rejects when none come within firstByteMs. */
  start(
    dispatcher: Dispatcher,
    options: Dispatcher.DispatchOptions,
    firstByteMs: number,
  ): Promise<UpstreamCall> {
    return new Promise<UpstreamCall>((resolve, reject) => {
      this.resolveHead = resolve;
      this.rejectHead = reject;
      if (this.abortedWith) {
        reject(this.abortedWith);
        return;
      }
      dispatcher.dispatch(options, this);
      if (this.controller === undefined && this.rejectHead !== undefined) {
        this.queueTimer = setTimeout(
          () =>
            this.abort(
              new undiciErrors.HeadersTimeoutError("no response headers within the first-byte timeout"),
            ),
          firstByteMs,
        );
      }
    });
  }

  /** Hands the body to its consumer, starting with anything that arrived before. */
  attach(sink: BodySink): void {
    this.sink = sink;
    const held = this.held;
    this.held = undefined;
    if (held) for (const chunk of held) if (!sink.onData(chunk) && !this.finished) this.controller?.pause();
    if (this.failedEarly) sink.onError(this.failedEarly);
    else if (this.endedEarly) sink.onEnd();
  }

  /**
   * The whole body, if it has all arrived and nobody consumed it: a small answer usually comes
   * in the same read as its headers, so it is complete before the caller gets to ask.
   */
  completeBody(): Buffer | undefined {
    if (!this.endedEarly || this.sink) return undefined;
    const held = this.held ?? [];
    this.held = undefined;
    this.sink = DRAINED;
    return held.length === 1 ? held[0] : Buffer.concat(held);
  }

  /**
   * Reads the whole body, at most maxBytes of it: past that (or a Content-Length saying so) the
   * call is aborted and the promise rejects with undici's ResponseExceededMaxSizeError.
   */
  body(maxBytes: number): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const declared = Number(this.headers["content-length"]);
      if (declared > maxBytes) {
        this.attach({ onData: () => true, onEnd: () => reject(tooLarge(maxBytes)), onError: reject });
        this.abort(tooLarge(maxBytes));
        return;
      }
      const chunks: Buffer[] = [];
      let length = 0;
      this.attach({
        onData: (chunk) => {
          if (length + chunk.length > maxBytes) {
            chunks.length = 0;
            this.abort(tooLarge(maxBytes));
            return true;
          }
          chunks.push(chunk);
          length += chunk.length;
          return true;
        },
        onEnd: () => resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, length)),
        onError: reject,
      });
    });
  }

  resume(): void {
    // After the end, undici's parser may already serve another request on the same connection.
    if (!this.finished) this.controller?.resume();
  }

  /** Ends the call: the backend's request is aborted and the consumer (or caller) gets `err`. */
  abort(err: Error): void {
    if (this.finished) return;
    if (this.controller) {
      // undici answers with onResponseError(err), which ends the call.
      this.controller.abort(err);
      return;
    }
    // Still queued in the pool (or not dispatched yet): undici aborts it in onRequestStart.
    this.abortedWith = err;
    this.fail(err);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.abortedWith) controller.abort(this.abortedWith);
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
  ): void {
    if (statusCode < 200) return; // informational: the real answer follows
    this.clearQueueTimer();
    this.statusCode = statusCode;
    this.headers = headers;
    const resolve = this.resolveHead;
    this.resolveHead = undefined;
    this.rejectHead = undefined;
    resolve?.(this);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.finished) return;
    if (this.sink) {
      if (!this.sink.onData(chunk)) controller.pause();
      return;
    }
    if (this.held) this.held.push(chunk);
    else this.held = [chunk];
  }

  onResponseEnd(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.sink) this.sink.onEnd();
    else this.endedEarly = true;
  }

  onResponseError(_controller: Dispatcher.DispatchController | undefined, err: Error): void {
    this.fail(err);
  }

  private clearQueueTimer(): void {
    if (this.queueTimer) {
      clearTimeout(this.queueTimer);
      this.queueTimer = undefined;
    }
  }

  private fail(err: Error): void {
    if (this.finished) return;
    this.finished = true;
    this.clearQueueTimer();
    const reject = this.rejectHead;
    if (reject) {
      this.resolveHead = undefined;
      this.rejectHead = undefined;
      reject(err);
      return;
    }
    if (this.sink) this.sink.onError(err);
    else this.failedEarly = err;
  }
}

function tooLarge(maxBytes: number): Error {
  return new undiciErrors.ResponseExceededMaxSizeError(`the answer exceeds ${maxBytes} bytes`);
}
