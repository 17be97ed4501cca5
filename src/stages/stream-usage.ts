/**
 * Settling tokens and recording a stream for the cache both need the stream's usage: it is asked
 * for on the client's behalf when the client did not ask (stream_options.include_usage), and
 * the usage-only chunk is then removed from what the client receives.
 */
import type { RequestContext } from "../context.js";
import { isJson } from "./route.js";

/** The stream is to be tapped for usage, and recorded up to recordLimit bytes when given. */
export function tapStream(state: RequestContext, recordLimit?: number): void {
  const body = state.body;
  if (!state.stream || !body) return;
  if (!state.tap) {
    const options = isJson(body.stream_options) ? body.stream_options : {};
    const asked = options.include_usage === true;
    if (!asked) state.upstreamBody = { ...body, stream_options: { ...options, include_usage: true } };
    state.tap = { strip: !asked };
  }
  if (recordLimit !== undefined) state.tap.recordLimit = recordLimit;
}
