/**
 * Watches an OpenAI event stream as it passes: reads `usage` out of it, removes the usage-only
 * chunk (`"choices":[]` with `usage`) when the gateway asked the backend for it on the client's
 * behalf (stream_options.include_usage) and the client did not, and, for the cache, records
 * every event's payload with its time. Complete events go on the moment their blank line
 * arrives, so nothing waits longer than the backend makes it.
 */
import { StringDecoder } from "node:string_decoder";
import type { CachedEvent } from "../cache/entry.js";
import { usageTotal } from "../tokens/estimate.js";

const EVENT_END = /\r?\n\r?\n/;

export class UsageTap {
  /** usage.total_tokens from the stream, once seen. */
  total: number | undefined;
  /** The usage object itself, once seen. */
  usage: Record<string, unknown> | undefined;
  /** The backend's `data: [DONE]` arrived: the stream is complete. */
  done = false;
  /** Every event payload (the usage chunk too, even if hidden from the client), when recording. */
  readonly events: CachedEvent[] | undefined;
  private readonly decoder = new StringDecoder("utf8");
  private pending = "";
  private startedAt: number | undefined;

  constructor(
    private readonly strip: boolean,
    record = false,
  ) {
    this.events = record ? [] : undefined;
  }

  process(chunk: Buffer): Buffer {
    this.pending += this.decoder.write(chunk);
    let out = "";
    for (let m = EVENT_END.exec(this.pending); m !== null; m = EVENT_END.exec(this.pending)) {
      const end = m.index + m[0].length;
      const event = this.pending.slice(0, end);
      this.pending = this.pending.slice(end);
      if (this.keep(event)) out += event;
    }
    return Buffer.from(out);
  }

  /** Whatever was left without an end (the stream ended mid-event). */
  flush(): Buffer {
    const rest = this.pending + this.decoder.end();
    this.pending = "";
    return Buffer.from(rest);
  }

  private keep(event: string): boolean {
    const needsData = this.events !== undefined || event.includes('"usage"') || event.includes("[DONE]");
    if (!needsData) return true;
    const data = event
      .split(/\r?\n/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).trimStart())
      .join("\n");
    if (data === "[DONE]") {
      this.done = true;
      return true;
    }
    if (this.events && data !== "") {
      const now = performance.now();
      this.startedAt ??= now;
      this.events.push({ data, at: Math.round(now - this.startedAt) });
    }
    if (!data.includes('"usage"')) return true;
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
}
