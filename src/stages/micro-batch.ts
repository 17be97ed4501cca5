/**
 * Micro-batch: concurrent /v1/embeddings requests to a pool with `microBatch.enabled`, for the
 * same model and options, go upstream as one call, and each gets its own part of the answer.
 * An engine that runs one call at a time (llama.cpp with one slot, Ollama) pays a fixed cost per
 * call, so 64 one-input requests merged cost it about one call instead of 64.
 *
 * Why a stage, right before forward. Everything a request owes before it goes upstream is still
 * its own: the stages before this one ran for it alone (its request limits, its cache lookup and
 * flight, its token reservation, its tenant's concurrency). What is shared is only what forward
 * does: one admission ticket, one backend slot, one upstream exchange. So this stage sits where
 * forward would take over, answers a merged request itself (forward does not run for it), and
 * lets forward run, untouched, for every request it does not merge. Off (no pool batching), it is
 * not in the path at all.
 *
 * What a member goes through:
 *   - Merged only when its input can be (src/microbatch/merge.ts: the forms OpenAI accepts;
 *     strings and token arrays apart) and it fits in one batch; else it goes alone, now.
 *   - It waits in its key's batch (src/microbatch/batcher.ts) for at most `batchWindow`; the
 *     batch goes as soon as it holds `maxBatchInputs` inputs or `maxBatchTokens` estimated
 *     tokens. The key: the pool, the query, the body without its input, the admission band (a
 *     background request never rides in an interactive call, nor waits at its rank), and, when
 *     the gateway passes client credentials through (no auth), those credentials and OpenAI's
 *     organization and project headers, so that no request reaches the backend under another's
 *     name.
 *   - The batch's call takes one admission ticket and waits for one backend slot: in the
 *     members' band, by their tenant when the first ones share one, until the earliest member's
 *     deadline. While it waits, requests of its key still join it, up to its limits: they would
 *     wait for a slot anyway, and so the busier the backend, the fuller the calls.
 *   - Once the slot is held, each member's dispatch runs (its tenant's concurrency lease; one
 *     refused gets its refusal and is left out), and the body is built from the members still
 *     there: their inputs in order, or, for a batch of one, the request's own body as received.
 *     Whatever arrives after that opens the next batch.
 *   - Its answer is split back: each member gets its own `data` (indices from 0) and its share of
 *     `usage` (shares add up to the merged usage exactly), which the token budget settles and the
 *     cache stores as the member's own answer. `x-floodgate-microbatch` says how many requests
 *     shared the call. A batch of one gets its answer as it came.
 *
 * Failure. The forwarder retries the merged call on another backend as it retries any request.
 * If it still fails, every member gets the same status and body (or the same gateway error),
 * with two exceptions, where each member is sent apart, through forward, as if it had never been
 * merged: a 400, 413 or 422 (the backend may be refusing one member's input, say a text too
 * long for the model, and the others must not fail for it), and a failure that walks the pool's
 * fallback chain for a member that has one (a merged call does not walk it; each member walks
 * its own, as without batching). A member with a stale cache entry kept for errors
 * (staleIfError) gets it, as forward would give it.
 *
 * A client that leaves (or whose total timeout passes) is dropped: from its batch while the call
 * does not hold its slot yet (a batch left empty makes no call: its ticket is cancelled), else
 * from the answer; when every member of a call under way has gone, the call is aborted and the
 * backend stops. The member's exchange stands in for the one forward would have made, so the
 * gateway's abort on a client's close and the access log and metrics (backend, queue and
 * upstream time) work as for any request.
 */
import { admitFor } from "../admission/admit.js";
import type { PoolConfig } from "../config/index.js";
import type { Json, PathAnswer, RequestContext } from "../context.js";
import { errors } from "../errors.js";
import { type Batch, Batcher, type BatchLimits, type FlushReason } from "../microbatch/batcher.js";
import { bodyKey, type MemberInput, mergeableInput, mergedBody, splitAnswer } from "../microbatch/merge.js";
import { type AbortReason, type Admit, Exchange } from "../proxy/exchange.js";
import { cannotServe, type Forwarding, fallbackChain, mayOverflow, noteQueued } from "../proxy/fallback.js";
import { type ForwardInput, type ForwardResult, forward } from "../proxy/forwarder.js";
import type { UpstreamPool } from "../upstream/pool.js";
import { cached } from "./cache.js";
import { queryOf } from "./forward.js";
import { setHeaders } from "./route.js";
import type { Stage } from "./stage.js";

const EMBEDDINGS = "/v1/embeddings";
/** Answers that may be about one member's input: each member is then asked alone. */
const ABOUT_AN_INPUT: ReadonlySet<number> = new Set([400, 413, 422]);
export const BATCH_HEADER = "x-floodgate-microbatch";

/**
 * What became of a request the stage saw: answered from a merged call (its part, or the call's
 * failure), sent alone (nobody shared its batch), not mergeable (its input's form or size), sent
 * apart after the merged call failed, or its client left first.
 */
export type MicroBatchOutcome = "merged" | "single" | "unmergeable" | "apart" | "left";

export interface MicroBatchEvents {
  /** A batch was sent to wait for a slot: its window ended, or it was full. */
  flushed(pool: string, reason: FlushReason): void;
  /** A call took its slot with this many requests and inputs. */
  sent(pool: string, requests: number, inputs: number): void;
  request(pool: string, outcome: MicroBatchOutcome): void;
  /** Requests waiting in the pool's batches (for their call's slot) went up or down by `delta`. */
  waiting(pool: string, delta: number): void;
}

/** How a member's wait ends: its answer, an error, or "go on to forward alone". */
type Outcome =
  | { kind: "answer"; result: ForwardResult }
  | { kind: "error"; error: unknown }
  | { kind: "alone" };

/** A member's stand-in for forward's exchange: the gateway's abort reaches its batch. */
class MemberExchange extends Exchange {
  onAbort: ((reason: AbortReason) => void) | undefined;

  override abort(reason: AbortReason): void {
    const before = this.abortReason;
    super.abort(reason);
    if (before === undefined && this.abortReason !== undefined) this.onAbort?.(reason);
  }
}

interface Member {
  readonly state: RequestContext;
  readonly pool: UpstreamPool;
  /** The pool's config when the request arrived (a reload does not change a request midway). */
  readonly config: PoolConfig;
  readonly input: MemberInput;
  readonly admit: Admit;
  readonly exchange: MemberExchange;
  readonly key: string;
  /** The call its inputs went in, once that call held its slot. */
  call: Call | undefined;
  done: boolean;
  finish(outcome: Outcome): void;
}

/** One batch's upstream call. */
interface Call {
  readonly batch: Batch<Member>;
  readonly exchange: Exchange;
  /** The members whose inputs went upstream, once the call held its slot. */
  sent: readonly Member[] | undefined;
}

export function microBatchStage(
  deps: Forwarding,
  events: MicroBatchEvents,
): Stage<RequestContext, PathAnswer> {
  const calls = new Map<Batch<Member>, Call>();
  const batcher = new Batcher<Member>((batch, reason) => {
    // A bug in sending must still end every member's wait, as an error, never as a hang.
    send(batch, reason).catch((err: unknown) => {
      for (const m of calls.get(batch)?.sent ?? batcher.take(batch)) m.finish({ kind: "error", error: err });
    });
  });

  return {
    name: "micro-batch",
    enter(state) {
      const pool = state.target;
      const body = state.body;
      const incoming = state.incoming;
      if (state.route !== EMBEDDINGS || state.stream || !pool || !body || !incoming) return undefined;
      const config = pool.config;
      const settings = config.microBatch;
      if (!settings.enabled) return undefined;
      const limits: BatchLimits = {
        maxInputs: settings.maxBatchInputs,
        maxTokens: settings.maxBatchTokens,
        windowMs: settings.batchWindow,
      };
      const input = mergeableInput(body.input);
      if (!input || input.items.length > limits.maxInputs || input.tokens > limits.maxTokens) {
        events.request(pool.name, "unmergeable");
        return undefined;
      }
      // As forward would: a bad priority header is refused here, before any waiting.
      const admit = admitFor(state, pool);
      const h = incoming.headers;
      const credentials = deps.stripAuthorization ? [] : [h.authorization, h["x-api-key"]];
      const key =
        JSON.stringify([
          pool.name,
          queryOf(incoming.url),
          input.kind,
          admit.band,
          h["openai-organization"],
          h["openai-project"],
          ...credentials,
        ]) + bodyKey(body);
      return join(state, pool, config, input, admit, key, limits);
    },
  };

  async function join(
    state: RequestContext,
    pool: UpstreamPool,
    config: PoolConfig,
    input: MemberInput,
    admit: Admit,
    key: string,
    limits: BatchLimits,
  ): Promise<PathAnswer | undefined> {
    const exchange = new MemberExchange(config.timeouts.total, admit);
    state.exchange = exchange;
    let resolve: (outcome: Outcome) => void = () => {};
    const outcome = new Promise<Outcome>((r) => {
      resolve = r;
    });
    const member: Member = {
      state,
      pool,
      config,
      input,
      admit,
      exchange,
      key,
      call: undefined,
      done: false,
      finish(o) {
        if (this.done) return;
        this.done = true;
        resolve(o);
      },
    };
    exchange.onAbort = (reason) => leave(member, reason);
    events.waiting(pool.name, 1);
    batcher.add(key, member, limits);
    const o = await outcome;
    exchange.settle();
    if (o.kind === "alone") {
      // Forward makes its own exchange; this one must not stand for it.
      state.exchange = undefined;
      return undefined;
    }
    const stale = state.staleForError;
    const when = config.retry.when;
    if (o.kind === "error") {
      if (stale && cannotServe(o.error, state, when)) return cached(state, deps.metrics, stale, "STALE");
      throw o.error;
    }
    if (stale && o.result.kind === "buffered" && when.statuses.has(o.result.status)) {
      return cached(state, deps.metrics, stale, "STALE");
    }
    return o.result;
  }

  /** The client left or its total timeout passed: out of its batch, or out of the answer. */
  function leave(member: Member, reason: AbortReason): void {
    if (member.done) return;
    const left = batcher.remove(member);
    if (left !== undefined) {
      events.waiting(member.pool.name, -1);
      // Nobody left in a batch waiting for a slot: its ticket goes, and no call is made.
      if (left.members.length === 0) calls.get(left)?.exchange.abort("client");
    }
    events.request(member.pool.name, "left");
    member.finish({
      kind: "error",
      error: reason === "total" ? errors.upstreamTimeout("total") : errors.upstreamUnavailable(),
    });
    const call = member.call;
    if (call?.sent?.every((m) => m.done)) call.exchange.abort("client");
  }

  /** The batch's call: one ticket, one slot, then the body of whoever is in the batch then. */
  async function send(batch: Batch<Member>, reason: FlushReason): Promise<void> {
    const first = batch.members[0];
    if (first === undefined) return;
    const { pool, config, state } = first;
    const incoming = state.incoming;
    if (!incoming) throw new Error("a batch member without its request");
    events.flushed(pool.name, reason);
    const exchange = new Exchange(config.timeouts.total, mergedAdmit(batch.members));
    const call: Call = { batch, exchange, sent: undefined };
    calls.set(batch, call);
    const input: ForwardInput = {
      pool,
      config,
      method: "POST",
      path: EMBEDDINGS + queryOf(incoming.url),
      // The first member's headers: the key holds whatever in them may differ and matters.
      headers: incoming.headers,
      // Built once the slot is held (the forwarder reads the body after onDispatch).
      body: Buffer.alloc(0),
      requestId: incoming.id,
      clientIp: incoming.ip,
      stripAuthorization: deps.stripAuthorization,
      streamAny: false,
      sendTimeout: deps.sendTimeout,
      band: exchange.band,
      onDispatch: async () => {
        const built = await dispatch(call);
        input.body = built.body;
        input.json = built.json;
      },
    };
    let result: ForwardResult;
    try {
      result = await forward(input, exchange, deps.hooks);
    } catch (err) {
      // Refused or failed, maybe before it held a slot: whoever is in the batch gets the error.
      const members = call.sent ?? taken(call);
      for (const m of members) if (!m.done) failed(m, members.length, err, exchange);
      return;
    } finally {
      calls.delete(batch);
    }
    deliver(call.sent ?? [], result, exchange);
  }

  /** The batch takes nobody more: its members are the call's. */
  function taken(call: Call): readonly Member[] {
    const members = batcher.take(call.batch);
    call.sent ??= members;
    const first = members[0];
    if (first) events.waiting(first.pool.name, -members.length);
    return members;
  }

  /**
   * The call holds its slot: each member's dispatch (its tenant's concurrency lease), then the
   * body of the members still there. With nobody left, the call gives its slot back.
   */
  async function dispatch(call: Call): Promise<{ body: Buffer; json: Json }> {
    const members = batcher.take(call.batch);
    const first = members[0];
    if (first) events.waiting(first.pool.name, -members.length);
    const leasing: Member[] = [];
    const runs: Promise<void>[] = [];
    for (const m of members) {
      const run = m.state.dispatch;
      if (m.done || run === undefined) continue;
      leasing.push(m);
      runs.push(run());
    }
    let refusal: unknown;
    if (runs.length > 0) {
      const settled = await Promise.allSettled(runs);
      settled.forEach((r, i) => {
        if (r.status === "fulfilled") return;
        refusal ??= r.reason;
        leasing[i]?.finish({ kind: "error", error: r.reason });
      });
    }
    const live = members.filter((m) => !m.done);
    call.sent = live;
    const one = live[0];
    if (one === undefined) throw refusal ?? errors.upstreamUnavailable();
    let inputs = 0;
    for (const m of live) {
      m.call = call;
      inputs += m.input.items.length;
    }
    events.sent(one.pool.name, live.length, inputs);
    const body = one.state.body as Json;
    if (live.length === 1) {
      // Alone: its own body, as forward would send it.
      return { body: one.state.incoming?.rawBody ?? Buffer.from(JSON.stringify(body)), json: body };
    }
    const json = mergedBody(
      body,
      live.map((m) => m.input),
    );
    return { body: Buffer.from(JSON.stringify(json)), json };
  }

  function deliver(members: readonly Member[], result: ForwardResult, exchange: Exchange): void {
    const n = members.length;
    if (result.kind === "stream") {
      result.body.destroy();
      const error = errors.upstreamBadResponse().causedBy(new Error("an event stream answered embeddings"));
      for (const m of members) if (!m.done) failed(m, n, error, exchange);
      return;
    }
    const status = result.status;
    const headers = answerHeaders(result.headers);
    if (status < 300 && n > 1) {
      const parts = result.json
        ? splitAnswer(
            result.json,
            members.map((m) => m.input),
          )
        : undefined;
      if (!parts) {
        const error = errors
          .upstreamBadResponse()
          .causedBy(new Error("the merged answer does not hold one embedding per input sent"));
        for (const m of members) if (!m.done) failed(m, n, error, exchange);
        return;
      }
      members.forEach((m, i) => {
        if (m.done) return;
        const json = parts[i];
        const body = Buffer.from(JSON.stringify(json));
        answered(m, n, exchange, body.length);
        m.finish({
          kind: "answer",
          result: { kind: "buffered", status, headers: { ...headers }, body, json },
        });
      });
      return;
    }
    for (const m of members) {
      if (m.done) continue;
      // A refusal that may be about one input is asked again for each alone (a batch of one has
      // had its own answer); so is a failure the member's fallback chain would take over.
      const walks = status >= 300 && m.config.retry.when.statuses.has(status) && hasFallback(m);
      if ((n > 1 && ABOUT_AN_INPUT.has(status)) || walks) {
        apart(m, exchange);
        continue;
      }
      answered(m, n, exchange, result.body.length);
      m.finish({
        kind: "answer",
        result: { kind: "buffered", status, headers: { ...headers }, body: result.body, json: result.json },
      });
    }
  }

  /** The call ended in an error (a timeout, no backend, a refusal for load...). */
  function failed(m: Member, n: number, err: unknown, exchange: Exchange): void {
    const when = m.config.retry.when;
    if (hasFallback(m) && cannotServe(err, m.state, when) && mayOverflow(err, m.pool)) {
      apart(m, exchange);
      return;
    }
    answered(m, n, exchange, 0);
    // One error object for all: an error is not changed once made, and each answer renders it.
    m.finish({ kind: "error", error: err });
  }

  /** Sent on its own through forward; the call's time stays with the request. */
  function apart(m: Member, exchange: Exchange): void {
    m.state.upstreamMs += exchange.upstreamMs;
    m.state.queuedMs += exchange.queuedMs;
    events.request(m.pool.name, "apart");
    m.finish({ kind: "alone" });
  }

  /** The call answers for the member: its backend, its waits, in the member's log line. */
  function answered(m: Member, n: number, exchange: Exchange, bytes: number): void {
    const own = m.exchange;
    own.backendName = exchange.backendName;
    own.firstByteAt = exchange.firstByteAt;
    own.attempts = exchange.attempts;
    own.upstreamMs = exchange.upstreamMs;
    own.queuedMs = exchange.queuedMs;
    own.bytesOut = bytes;
    noteQueued(m.state);
    if (n > 1) setHeaders(m.state, { [BATCH_HEADER]: String(n) });
    events.request(m.pool.name, n > 1 ? "merged" : "single");
  }

  function hasFallback(m: Member): boolean {
    const tenant = m.state.tenant;
    if (tenant?.fallback === false) return false;
    const chain = fallbackChain(deps.upstreams, m.pool);
    return tenant?.models ? chain.some((t) => tenant.mayUse(t.model)) : chain.length > 0;
  }
}

/** The call's place in admission: see the top. */
function mergedAdmit(members: readonly Member[]): Admit {
  const first = (members[0] as Member).admit;
  const shared = members.every((m) => m.admit.tenant === first.tenant);
  let deadline = first.deadline;
  for (const m of members) deadline = Math.min(deadline, m.admit.deadline);
  return {
    band: first.band,
    tenant: shared ? first.tenant : "",
    weight: shared ? first.weight : 1,
    deadline,
    patient: false,
    affinity: undefined,
  };
}

/** The backend's headers for a member: its x-request-id echo names the call, not the member. */
function answerHeaders(headers: Record<string, string | string[]>): Record<string, string | string[]> {
  const { "x-request-id": _echo, ...rest } = headers;
  return rest;
}
