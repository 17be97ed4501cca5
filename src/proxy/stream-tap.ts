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
 * Written here rather than on eventsource-parser (the well-kept SSE parser): that library parses
 * decoded text into events, so the gateway could not pass the backend's bytes on verbatim (line
 * ends, comments, field order) nor drop one event from them. Measured on this machine with a
 * chat stream of 200 one-event chunks: 1.0 µs per event here, 0.65 µs for eventsource-parser 3.1
 * parsing alone; for one 20 MB line in 64 KB chunks, 9 ms here and 256 ms there.
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
  /** performance.now() when the first data event (not `[DONE]`) passed: the first token's time. */
  firstDataAt: number | undefined;
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
  /** The open event's `data:` values, as ranges of buffers (no views made per line). */
  private dataBufs: Buffer[] = [];
  private dataFrom: number[] = [];
  private dataTo: number[] = [];
  /** A `data:` value of the open event mentions "usage". */
  private dataUsage = false;
  /** Where the chunk being processed next mentions "usage" from the last line on (-1: nowhere; -2: not looked yet). */
  private usageAt = -2;
  /** The last chunk ended in CR: an LF first in the next one belongs to it. */
  private skipLF = false;
  /** That CR ended an event (kept: true, dropped: false), so the LF goes with it. */
  private lfEndsEvent: boolean | undefined;
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
    // What passes: a run of this chunk's bytes (runStart..runEnd, kept events back to back, the
    // usual case: one view, no copy), after `out` when earlier parts come first.
    let out: Buffer[] | undefined;
    let runStart = -1;
    let runEnd = -1;
    let pos = 0;
    let eventStart = 0;
    this.usageAt = -2;
    if (this.skipLF) {
      this.skipLF = false;
      if (n > 0 && chunk[0] === LF) {
        pos = 1;
        // The CR that ended the last chunk ended an event: this LF is that event's last byte.
        if (this.lfEndsEvent !== undefined) {
          eventStart = 1;
          if (this.lfEndsEvent) {
            runStart = 0;
            runEnd = 1;
          }
        }
      }
      this.lfEndsEvent = undefined;
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
      if (this.lineBytes > 0) {
        // The line began in an earlier chunk.
        this.addToLine(chunk, pos, end);
        this.endLine();
      } else if (end > pos) {
        if (!this.passing) this.dataValue(chunk, pos, end, true);
      } else {
        // An empty line: the event is complete.
        const keep = this.passing || this.endEvent();
        if (this.skipLF) this.lfEndsEvent = keep;
        if (keep) {
          if (this.held.length > 0) {
            // It began in an earlier chunk (so no run is open yet): its first part goes first.
            out ??= [];
            for (const part of this.held) out.push(part);
          }
          if (runStart === -1) runStart = eventStart;
          runEnd = next;
        } else if (runStart !== -1) {
          // Dropped: the run so far goes out, the next one starts after this event.
          out ??= [];
          out.push(chunk.subarray(runStart, runEnd));
          runStart = -1;
        }
        this.held.length = 0;
        this.heldBytes = 0;
        this.passing = false;
        eventStart = next;
      }
      pos = next;
    }
    if (eventStart < n) {
      if (this.passing) {
        if (runStart === -1) runStart = eventStart;
        runEnd = n;
      } else {
        this.held.push(eventStart === 0 ? chunk : chunk.subarray(eventStart));
        this.heldBytes += n - eventStart;
        if (this.heldBytes > this.maxEventSize) {
          out ??= [];
          if (runStart !== -1) out.push(chunk.subarray(runStart, runEnd));
          runStart = -1;
          for (const part of this.held) out.push(part);
          this.startPassing();
        }
      }
    }
    const run =
      runStart === -1 ? undefined : runStart === 0 && runEnd === n ? chunk : chunk.subarray(runStart, runEnd);
    if (out === undefined) return run ?? EMPTY;
    if (run) out.push(run);
    return out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out);
  }

  /** The stream ended: what is still open passes on as it is, its last event parsed if it can be. */
  end(): Buffer {
    if (this.passing) return EMPTY;
    if (this.lineBytes > 0) this.endLine();
    const rest = this.held;
    this.held = [];
    this.heldBytes = 0;
    if (!this.endEvent() || rest.length === 0) return EMPTY;
    return rest.length === 1 ? (rest[0] as Buffer) : Buffer.concat(rest);
  }

  private startPassing(): void {
    this.held.length = 0;
    this.heldBytes = 0;
    this.passing = true;
    this.line.length = 0;
    this.lineBytes = 0;
    this.clearData();
  }

  private clearData(): void {
    this.dataBufs.length = 0;
    this.dataFrom.length = 0;
    this.dataTo.length = 0;
    this.dataUsage = false;
  }

  private addToLine(chunk: Buffer, from: number, to: number): void {
    if (to <= from) return;
    this.lineBytes += to - from;
    if (!this.passing) this.line.push(chunk.subarray(from, to));
  }

  /** A line that spanned chunks is complete. */
  private endLine(): void {
    const parts = this.line;
    const line = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
    parts.length = 0;
    this.lineBytes = 0;
    if (!this.passing) this.dataValue(line, 0, line.length, false);
  }

  /** Keeps the value of a `data:` line (bytes from..to of buf, without its line end). */
  private dataValue(buf: Buffer, from: number, to: number, inChunk: boolean): void {
    if (to - from < DATA.length || buf.compare(DATA, 0, DATA.length, from, from + DATA.length) !== 0) return;
    const start = buf[from + DATA.length] === 0x20 ? from + DATA.length + 1 : from + DATA.length;
    this.dataBufs.push(buf);
    this.dataFrom.push(start);
    this.dataTo.push(to);
    if (this.dataUsage) return;
    if (!inChunk) {
      this.dataUsage = buf.indexOf(USAGE, start) !== -1;
      return;
    }
    // One forward search per chunk, however many lines it holds.
    if (this.usageAt === -2 || (this.usageAt >= 0 && this.usageAt < start))
      this.usageAt = buf.indexOf(USAGE, start);
    this.dataUsage = this.usageAt >= 0 && this.usageAt + USAGE.length <= to;
  }

  /** Whether the event that just ended passes on. */
  private endEvent(): boolean {
    const bufs = this.dataBufs;
    const count = bufs.length;
    if (count === 0) return true;
    const from = this.dataFrom;
    const to = this.dataTo;
    const first = bufs[0] as Buffer;
    const from0 = from[0] as number;
    const to0 = to[0] as number;
    if (count === 1 && to0 - from0 === DONE.length && first.compare(DONE, 0, DONE.length, from0, to0) === 0) {
      this.clearData();
      this.done = true;
      return true;
    }
    this.firstDataAt ??= performance.now();
    const mentionsUsage = this.dataUsage;
    if (this.events === undefined && !mentionsUsage) {
      this.clearData();
      return true;
    }
    let data = first.toString("utf8", from0, to0);
    for (let i = 1; i < count; i++) data += `\n${(bufs[i] as Buffer).toString("utf8", from[i], to[i])}`;
    this.clearData();
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
