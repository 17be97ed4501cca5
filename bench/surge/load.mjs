/**
 * The surge benchmark's client side: a seeded Poisson timetable, one streamed chat completion
 * recorded in full (status, headers, first token, end, [DONE]), an open-loop runner that sends
 * on the timetable whatever the target does, and a closed-loop runner for measuring capacity.
 */
import { setMaxListeners } from "node:events";
import { Agent, request } from "undici";

export const MODEL = "surge-model";
/** Every answer is this long: the simulators stop at max_tokens, so all requests cost the same. */
export const MAX_TOKENS = 50;
const BODY = JSON.stringify({
  model: MODEL,
  stream: true,
  max_tokens: MAX_TOKENS,
  messages: [{ role: "user", content: "Tell me about the weather." }],
});

/**
 * A client that is never the bottleneck: no cap on connections per origin (a 10x run has a few
 * hundred requests in flight), and no undici timeouts, since the runner bounds every request
 * itself (see openLoop's straggler deadline).
 */
export function newClient() {
  return new Agent({ connections: null, pipelining: 1, headersTimeout: 0, bodyTimeout: 0 });
}

/**
 * A small seeded PRNG (xorshift32, Marsaglia 2003): the same seed gives the same arrivals on
 * every target and every run. Returns floats in [0, 1).
 */
export function prng(seed) {
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

/**
 * Poisson arrivals at `rate` per second over [0, seconds): exponential gaps drawn by inversion,
 * -ln(1 - u) / rate. Returns send times in ms from the start.
 */
export function poissonTimes(rate, seconds, seed) {
  const random = prng(seed);
  const times = [];
  let t = 0;
  for (;;) {
    t += (-Math.log(1 - random()) / rate) * 1000;
    if (t >= seconds * 1000) return times;
    times.push(t);
  }
}

/**
 * Sends one streamed chat completion (`body`, by default the surge's one) and records what happened. Times are ms on `clock` (the
 * caller's performance.now() origin). Never throws: a failure is a record with `error` set.
 *   status      HTTP status, 0 when no response head arrived
 *   headers     when the response head arrived
 *   firstToken  the first SSE event whose choices[0].delta.content is non-empty (TTFT)
 *   end         the body ended, failed or was aborted
 *   done        the stream ended with `data: [DONE]`
 *   tokens      content events seen
 *   error       null, "http" (non-200), "sse_error" (an error event in the stream), "incomplete"
 *               (200 without [DONE]), "timeout" (aborted by the runner) or "network:<code>"
 *   code        the error code in a non-200 JSON body (e.g. no_backend_available, server_busy)
 */
export async function streamOnce(dispatcher, url, authorization, signal, clock, body = BODY) {
  const rec = {
    status: 0,
    headers: null,
    firstToken: null,
    end: null,
    done: false,
    tokens: 0,
    error: null,
    code: null,
    retryAfterMs: null,
    shouldRetry: null,
    queueMs: null,
  };
  try {
    const res = await request(`${url}/v1/chat/completions`, {
      dispatcher,
      method: "POST",
      headers: { "content-type": "application/json", authorization },
      body,
      signal,
    });
    rec.headers = clock();
    rec.status = res.statusCode;
    rec.retryAfterMs = numberHeader(res.headers["retry-after-ms"]);
    rec.shouldRetry = res.headers["x-should-retry"] ?? null;
    rec.queueMs = numberHeader(res.headers["x-floodgate-queue-ms"]);
    if (res.statusCode !== 200) {
      rec.error = "http";
      rec.code = errorCode(await res.body.text());
    } else {
      await readStream(res.body, rec, clock);
      if (!rec.error && !rec.done) rec.error = "incomplete";
    }
  } catch (err) {
    rec.error = signal.aborted ? "timeout" : `network:${err?.code ?? err?.name ?? "unknown"}`;
  }
  rec.end = clock();
  return rec;
}

/** Reads an SSE body line by line, noting the first content token, errors and [DONE]. */
async function readStream(body, rec, clock) {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true });
    let newline = pending.indexOf("\n");
    while (newline !== -1) {
      const line = pending.slice(0, newline).trimEnd();
      pending = pending.slice(newline + 1);
      newline = pending.indexOf("\n");
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") {
        rec.done = true;
        continue;
      }
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        rec.error = "sse_error";
        continue;
      }
      if (event.error) rec.error = "sse_error";
      if (event.choices?.[0]?.delta?.content) {
        rec.tokens++;
        if (rec.firstToken === null) rec.firstToken = clock();
      }
    }
  }
}

function numberHeader(value) {
  if (value === undefined) return null;
  const n = Number(Array.isArray(value) ? value[0] : value);
  return Number.isFinite(n) ? n : null;
}

function errorCode(text) {
  try {
    return JSON.parse(text)?.error?.code ?? null;
  } catch {
    return null;
  }
}

/**
 * Open loop: every arrival is sent at its time whatever the target does, so an overloaded
 * target cannot slow the arrivals down (no coordinated omission). `arrivals` is a sorted list
 * of { at (ms from start), tenant, authorization, body? }. After the last arrival, requests still open
 * get `stragglerMs` to end; then they are aborted and recorded as timeouts.
 * Returns one record per arrival: { tenant, at, sent, ...streamOnce's record }, all times in ms
 * from the start.
 */
export async function openLoop({ dispatcher, url, arrivals, stragglerMs }) {
  const abort = new AbortController();
  // Every request listens on this one signal: thousands of listeners are expected here.
  setMaxListeners(0, abort.signal);
  const t0 = performance.now();
  const clock = () => round1(performance.now() - t0);
  const open = [];
  let next = 0;
  await new Promise((resolvePromise) => {
    const tick = () => {
      // Send everything due: a late timer sends the backlog at once, and the lag is recorded.
      while (next < arrivals.length && arrivals[next].at <= performance.now() - t0) {
        const a = arrivals[next++];
        const sent = clock();
        open.push(
          streamOnce(dispatcher, url, a.authorization, abort.signal, clock, a.body).then((rec) => ({
            tenant: a.tenant,
            at: round1(a.at),
            sent,
            ...rec,
          })),
        );
      }
      if (next === arrivals.length) return resolvePromise();
      setTimeout(tick, Math.max(0, arrivals[next].at - (performance.now() - t0)));
    };
    tick();
  });
  const arrivalsEnded = clock();
  const deadline = setTimeout(() => abort.abort(), stragglerMs);
  const records = await Promise.all(open);
  clearTimeout(deadline);
  return { records, arrivalsEnded, ended: clock(), aborted: abort.signal.aborted };
}

/**
 * Closed loop: `concurrency` workers each send a request, wait for its end and send the next,
 * for warmupS + windowS seconds. With exactly the backend's slot count in flight, the complete
 * answers per second are its service rate.
 * The rate is measured per worker, between its first and its last completion inside the window:
 * (completions - 1) / (last - first). Simply counting completions in the window would be
 * quantized, because the workers of one backend share its batch steps and finish together: a
 * window holds 8 or 9 rounds of them, a 10% step for an 8 s window.
 */
export async function closedLoop({ dispatcher, url, concurrency, warmupS, windowS }) {
  const t0 = performance.now();
  const clock = () => performance.now() - t0;
  const from = warmupS * 1000;
  const to = from + windowS * 1000;
  const signal = new AbortController().signal;
  setMaxListeners(0, signal);
  let completed = 0;
  let failed = 0;
  const worker = async () => {
    const ends = [];
    while (clock() < to) {
      const rec = await streamOnce(dispatcher, url, "Bearer none", signal, clock);
      if (rec.error) failed++;
      else if (rec.end >= from && rec.end < to) ends.push(rec.end);
    }
    completed += ends.length;
    return ends.length >= 2 ? ((ends.length - 1) * 1000) / (ends.at(-1) - ends[0]) : 0;
  };
  const rates = await Promise.all(Array.from({ length: concurrency }, worker));
  return { completed, failed, perSecond: rates.reduce((a, r) => a + r, 0) };
}

function round1(x) {
  return Math.round(x * 10) / 10;
}
