/** Read an SSE response event by event, with the time each arrived at the client. */
import { request } from "undici";

export interface TimedEvent {
  at: number;
  event: string | undefined;
  data: string;
}

export async function postStream(
  url: string,
  body: unknown,
  options: { headers?: Record<string, string>; signal?: AbortSignal; onEvent?: (e: TimedEvent) => void } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; events: TimedEvent[] }> {
  const res = await request(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...options.headers },
    body: JSON.stringify(body),
    signal: options.signal,
  });
  const events: TimedEvent[] = [];
  let buffer = "";
  for await (const chunk of res.body) {
    buffer += (chunk as Buffer).toString("utf8");
    let end = buffer.indexOf("\n\n");
    while (end !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event: string | undefined;
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      const e = { at: performance.now(), event, data: data.join("\n") };
      events.push(e);
      options.onEvent?.(e);
      end = buffer.indexOf("\n\n");
    }
  }
  return { status: res.statusCode, headers: res.headers, events };
}

/**
 * Events sent `spacingMs` apart arrived spread out, not in one lump: the median gap and the
 * total spread are at least half of what the sender used. A buffering proxy fails both; one
 * scheduler stall on a busy machine (two events merged) fails neither.
 */
export function spreadOf(events: readonly TimedEvent[]): { medianGap: number; spread: number } {
  const gaps = events.slice(1).map((e, i) => e.at - (events[i]?.at ?? e.at));
  const sorted = [...gaps].sort((a, b) => a - b);
  const medianGap = sorted[Math.floor(sorted.length / 2)] ?? 0;
  const spread = (events.at(-1)?.at ?? 0) - (events[0]?.at ?? 0);
  return { medianGap, spread };
}
