/**
 * Watches an OpenAI event stream as it passes: finds its end (`data: [DONE]`), reads `usage` out
 * of it, removes the usage-only chunk (`"choices":[]` with `usage`) when the gateway asked the
 * backend for it on the client's behalf and the client did not, and, for the cache, records
 * every event's payload with its time.
 *
 * Parsing follows the event-stream rules of the HTML standard (§9.2.6): a line ends at CRLF, LF
 * or CR (a CRLF may be split across two chunks), an empty line ends an event, and the value of a
 * `data:` field loses one leading space. The tap works on bytes and scans each byte once: line
 * ends are found with Buffer.indexOf (memchr), lines and events are subarrays of the chunks
 * (no copies), and only an event that can matter (a `[DONE]`, one that mentions `"usage"`, or
 * any event while recording) is decoded to text. So a 20 MB event costs one pass over 20 MB,
 * not a rescan of everything pending on every chunk.
 *
 * Bytes pass on verbatim, a whole event at a time, the moment its empty line arrives. An event
 * still open past `maxEventSize` passes on as it arrives, unparsed, until its end: the gateway
 * never holds more than that of one event. At the end of the stream the open rest passes on as
 * it is, and a last `data:` line with no empty line after it still counts (`data: [DONE]\n`).
 */
import type { CachedEvent } from "../cache/entry.js";
import { usageTotal } from "../tokens/estimate.js";

const LF = 0x0a;
const CR = 0x0d;
const DATA = Buffer.from("data:");
const DONE = Buffer.from("[DONE]");
const USAGE = Buffer.from('"usage"');
const EMPTY = Buffer.alloc(0);

export interface StreamTapOptions {
  /** Drop the usage-only chunk: the gateway asked for it, the client did not. */
  strip?: boolean;
  /** Record event payloads for the cache, up to this many bytes; past it the recording stops. */
  recordLimit?: number;
  /** An event still open past this many bytes passes on unparsed. */
  maxEventSize: number;
}

export class StreamTap {
  /** usage.total_tokens from the stream, once seen. */
  total: number | undefined;
  /** The usage object itself, once seen. */
  usage: Record<string, unknown> | undefined;
  /** The backend's `data: [DONE]` arrived: the stream is complete. */
  done = false;
  /** Every event payload (the usage chunk too, even if hidden); undefined when not recording or past its limit. */
  events: CachedEvent[] | undefined;
  private recorded = 0;
  private readonly strip: boolean;
  private readonly recordLimit: number;
  private readonly maxEventSize: number;
  /** The open event's bytes not yet passed on. */
  private held: Buffer[] = [];
  private heldBytes = 0;
  /** The open event outgrew maxEventSize: its bytes pass on as they come, unparsed. */
  private passing = false;
  /** The open line's bytes (views into the chunks). */
  private line: Buffer[] = [];
  private lineBytes = 0;
  /** The open event's `data:` values. */
  private data: Buffer[] = [];
  /** The last chunk ended in CR: an LF first in the next one belongs to it. */
  private skipLF = false;
  private startedAt: number | undefined;

  constructor(options: StreamTapOptions) {
    this.strip = options.strip === true;
    this.recordLimit = options.recordLimit ?? 0;
    this.events = options.recordLimit === undefined ? undefined : [];
    this.maxEventSize = options.maxEventSize;
  }

  /** The bytes to pass on now: every event this chunk completed (the usage-only one may be dropped). */
  process(chunk: Buffer): Buffer {
    const n = chunk.length;
    let out: Buffer[] | undefined;
    let pos = 0;
    let eventStart = 0;
    if (this.skipLF) {
      this.skipLF = false;
      if (n > 0 && chunk[0] === LF) pos = 1;
    }
    let nextLF = chunk.indexOf(LF, pos);
    let nextCR = chunk.indexOf(CR, pos);
    while (pos < n) {
      if (nextLF !== -1 && nextLF < pos) nextLF = chunk.indexOf(LF, pos);
      if (nextCR !== -1 && nextCR < pos) nextCR = chunk.indexOf(CR, pos);
      const end = nextLF === -1 ? nextCR : nextCR === -1 ? nextLF : Math.min(nextLF, nextCR);
      if (end === -1) {
        this.addToLine(chunk, pos, n);
        break;
      }
      let next = end + 1;
      if (chunk[end] === CR) {
        if (next === n) this.skipLF = true;
        else if (chunk[next] === LF) next++;
      }
      const empty = this.lineBytes === 0 && end === pos;
      if (!empty) {
        this.addToLine(chunk, pos, end);
        this.endLine();
      }
      pos = next;
      if (!empty) continue;
      // An empty line: the event is complete.
      const keep = this.passing || this.endEvent();
      if (keep) {
        out ??= [];
        for (const part of this.held) out.push(part);
        out.push(chunk.subarray(eventStart, pos));
      }
      this.held = [];
      this.heldBytes = 0;
      this.passing = false;
      eventStart = pos;
    }
    if (eventStart < n) {
      const rest = eventStart === 0 ? chunk : chunk.subarray(eventStart);
      if (this.passing) {
        out ??= [];
        out.push(rest);
      } else {
        this.held.push(rest);
        this.heldBytes += rest.length;
        if (this.heldBytes > this.maxEventSize) {
          out ??= [];
          for (const part of this.held) out.push(part);
          this.startPassing();
        }
      }
    }
    return join(out);
  }

  /** The stream ended: what is still open passes on as it is, its last event parsed if it can be. */
  end(): Buffer {
    if (this.passing) return EMPTY;
    if (this.lineBytes > 0) this.endLine();
    const rest = this.held;
    this.held = [];
    this.heldBytes = 0;
    return this.endEvent() ? join(rest) : EMPTY;
  }

  private startPassing(): void {
    this.held = [];
    this.heldBytes = 0;
    this.passing = true;
    this.line = [];
    this.lineBytes = 0;
    this.data = [];
  }

  private addToLine(chunk: Buffer, from: number, to: number): void {
    if (to <= from) return;
    this.lineBytes += to - from;
    if (!this.passing) this.line.push(chunk.subarray(from, to));
  }

  private endLine(): void {
    const parts = this.line;
    this.line = [];
    this.lineBytes = 0;
    if (this.passing) return;
    const line = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
    if (line.length < DATA.length || line.compare(DATA, 0, DATA.length, 0, DATA.length) !== 0) return;
    const from = line[DATA.length] === 0x20 ? DATA.length + 1 : DATA.length;
    this.data.push(line.subarray(from));
  }

  /** Whether the event that just ended passes on. */
  private endEvent(): boolean {
    const parts = this.data;
    if (parts.length === 0) return true;
    this.data = [];
    if (parts.length === 1 && DONE.equals(parts[0] as Buffer)) {
      this.done = true;
      return true;
    }
    const mentionsUsage = parts.some((p) => p.indexOf(USAGE) !== -1);
    if (this.events === undefined && !mentionsUsage) return true;
    const data = parts.length === 1 ? (parts[0] as Buffer).toString("utf8") : parts.join("\n");
    if (this.events) this.record(data);
    if (!mentionsUsage) return true;
    let parsed: { usage?: unknown; choices?: unknown[] };
    try {
      parsed = JSON.parse(data) as { usage?: unknown; choices?: unknown[] };
    } catch {
      return true;
    }
    const total = usageTotal(parsed.usage);
    if (total === undefined) return true;
    this.total = total;
    this.usage = parsed.usage as Record<string, unknown>;
    const usageOnly = Array.isArray(parsed.choices) && parsed.choices.length === 0;
    return !(this.strip && usageOnly);
  }

  private record(data: string): void {
    this.recorded += data.length;
    if (this.recorded > this.recordLimit) {
      // Past maxEntrySize the answer cannot be stored: stop holding it (the stream goes on).
      this.events = undefined;
      return;
    }
    const now = performance.now();
    this.startedAt ??= now;
    this.events?.push({ data, at: Math.round(now - this.startedAt) });
  }
}

function join(parts: Buffer[] | undefined): Buffer {
  if (parts === undefined || parts.length === 0) return EMPTY;
  return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
}
