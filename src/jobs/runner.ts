/**
 * The job runner of one replica: it claims due jobs from the jobs queue (src/jobs/types.ts) and
 * runs each through the gateway itself, with `app.inject()`, so a job gets exactly what its
 * synchronous call would have: auth as its tenant, route, cache, token budget, admission,
 * forward, retries, metrics, the access line and the error shapes.
 *
 * - The run's request carries `x-floodgate-job: <secret>:<job id>`, the secret random per
 *   process. The API-key hook (src/app.ts) hands it to adopt(), which checks it (constant time)
 *   and gives back the job, whose tenant the request then runs as, marked deferred (no request
 *   limits: the submission counted; admission never refuses it on its estimate). Only a request
 *   made in process is looked at (a network request's header is never read) and the header is
 *   dropped before any backend (src/proxy/headers.ts).
 * - It asks for the `jobs.band` band (x-floodgate-priority; admission keeps the tenant's band
 *   when that is lower), so jobs wait behind interactive work and never take a reserved slot.
 * - Its answer is read as it comes (payloadAsStream): a stream is kept as its final JSON
 *   (src/jobs/final-answer.ts; the run asks for the usage chunk), anything else as it is. A
 *   refusal for load (429 or 503 with a retry-after) is not the job's answer: the job goes back
 *   to the queue to run after the retry-after (capped, jittered). Any other answer ends the job,
 *   succeeded for a 2xx, failed otherwise, with the answer kept for jobs.ttl.
 * - At most jobs.concurrency runs at once; it claims when it has room: as each run ends; when
 *   the queue wakes it (a job submitted or given back to run now on any replica, this one
 *   included: Redis pub/sub), at most once per jobs.pollInterval then; at once when a job is
 *   submitted here while no wakes are subscribed (a memory queue, a subscription down); and it
 *   looks again jobs.pollInterval after a claim or, when the claim found nothing while wakes are
 *   subscribed, after idleLookMs (2 s by default; sooner when a job it gave back to run later
 *   falls due). So an idle replica costs Redis one call per idleLookMs, a lost subscription
 *   costs polling at pollInterval until it is back, and a job whose lease lapsed (its replica
 *   died) is found within idleLookMs of the lapse.
 * - Leases (jobs.lease) are renewed every lease / 3. A job it no longer holds (cancelled, or the
 *   lease lapsed and another replica took it) is stopped at once: the gateway's response to the
 *   run is destroyed, which the request path sees as a client gone, so the exchange aborts the
 *   backend's work and every stage gives back what it took. A cancel on this replica stops the
 *   run at once; on another replica, at the next renew.
 * - stop() (the gateway closing) stops claiming, stops every run and gives it back to the queue
 *   to run now, on another replica.
 * The settings are read from the config in force at each use, so a reload applies to the next
 * claim, renew and run, and a reload never touches the runs under way.
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import type { ServerResponse } from "node:http";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import { PRIORITY_HEADER } from "../admission/admit.js";
import type { JobsConfig } from "../config/index.js";
import { errors } from "../errors.js";
import type { JobEvents } from "../metrics/metrics.js";
import type { OpenAIRoute } from "../proxy/routes.js";
import { CompletionRate } from "./completion-rate.js";
import { FinalAnswerBuilder } from "./final-answer.js";
import type { JobQueue, JobRecord, JobResult, JobWakes } from "./types.js";

export const JOB_HEADER = "x-floodgate-job";

/** The most a load refusal defers a job; the jitter spreads the jobs a surge sent back together. */
const MAX_DEFER_MS = 60_000;
const MIN_DEFER_MS = 100;
const DEFER_JITTER = 0.2;
/** A run that failed in the gateway itself (not an answer) is tried again after this. */
const ERROR_RETRY_MS = 1000;

/** What the runner needs of app.inject (light-my-request with payloadAsStream). */
export type Inject = (options: {
  method: "POST";
  url: string;
  headers: Record<string, string>;
  payload: string;
  payloadAsStream: true;
  signal: AbortSignal;
}) => Promise<{ statusCode: number; headers: Record<string, unknown>; stream(): Readable }>;

/**
 * How long a replica with room that found no job waits before it looks again, while wakes are
 * subscribed: 8 polls, at most a third of the lease (a dead replica's job waits no longer than
 * that past its lease), never less than one poll.
 */
export function idleLookMs(config: Pick<JobsConfig, "pollInterval" | "lease">): number {
  return Math.max(config.pollInterval, Math.min(8 * config.pollInterval, config.lease / 3));
}

export interface JobRunnerDeps {
  inject: Inject;
  queue: () => JobQueue;
  /** The jobs settings in force (a reload changes them). */
  config: () => JobsConfig;
  events: JobEvents;
  logger: Logger;
  /** Replicas running jobs from the same queue, for the completion rate of the fleet. */
  replicas: () => number;
}

interface Run {
  readonly record: JobRecord;
  readonly controller: AbortController;
  /** The gateway's response to the run's request, once the request reached the gateway. */
  response: ServerResponse | undefined;
  /** Why the run was stopped: no longer held (lost), or the runner stopping. */
  stopped: "lost" | "stopping" | undefined;
  readonly startedAt: number;
}

type Outcome =
  | { kind: "answer"; state: "succeeded" | "failed"; result: JobResult }
  | { kind: "later"; afterMs: number };

export class JobRunner {
  /** This replica's name as a lease holder: unique per process. */
  readonly owner = `runner-${process.pid}-${randomBytes(8).toString("hex")}`;
  readonly rate = new CompletionRate();
  private readonly secret = Buffer.from(randomBytes(32).toString("base64url"));
  private readonly runs = new Map<string, Run>();
  private readonly settled = new Set<Promise<void>>();
  private started = false;
  private stopping = false;
  private pollTimer: NodeJS.Timeout | undefined;
  /** When pollTimer fires (performance.now() ms). */
  private pollAt = Number.POSITIVE_INFINITY;
  private renewTimer: NodeJS.Timeout | undefined;
  private claiming: Promise<void> | undefined;
  private claimAgain = false;
  /** The queue's wakes, subscribed at the first claim (none on a memory queue). */
  private wakes: JobWakes | undefined;
  /** When the last claim started (performance.now() ms): a wake claims at most once a poll. */
  private lastClaimAt = Number.NEGATIVE_INFINITY;
  /** The last claim had room and found nothing. */
  private foundNone = false;
  /** A wake came while a claim ran: the job may have come after it looked. */
  private wokenMeanwhile = false;
  /** The earliest runAt (epoch ms) of the jobs this replica gave back to run later. */
  private dueAt = Number.POSITIVE_INFINITY;
  private lastStoreWarning = 0;

  constructor(private readonly deps: JobRunnerDeps) {}

  /** Jobs this replica runs now. */
  get running(): number {
    return this.runs.size;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.claimSoon();
    this.scheduleRenew();
  }

  /**
   * A job was submitted on this replica: claim now rather than at the next look. While wakes
   * are subscribed the submission's own wake does that (once, not twice).
   */
  nudge(): void {
    if (this.started && !this.stopping && !this.subscribed) this.claimSoon();
  }

  /**
   * The job a run's request names in its job header, for the API-key hook: undefined when the
   * request has no such header; a 401 when the header is not this runner's or names no run.
   */
  adopt(value: unknown, response: ServerResponse): JobRecord | undefined {
    if (value === undefined) return undefined;
    if (typeof value !== "string") throw errors.invalidApiKey();
    const colon = value.indexOf(":");
    const given = Buffer.from(colon === -1 ? "" : value.slice(0, colon));
    if (given.length !== this.secret.length || !timingSafeEqual(given, this.secret)) {
      throw errors.invalidApiKey();
    }
    const run = this.runs.get(value.slice(colon + 1));
    if (!run) throw errors.invalidApiKey();
    if (run.stopped) throw errors.shuttingDown();
    run.response = response;
    return run.record;
  }

  /** The job was cancelled on this replica: if it runs here, stop it now. */
  cancelled(id: string): void {
    const run = this.runs.get(id);
    if (run) this.halt(run, "lost");
  }

  /** When a client should look again at a job that is not done. */
  async retryAfterMs(record: JobRecord | undefined): Promise<number> {
    if (record?.state === "running" && record.startedAt !== undefined) {
      return this.rate.runningMs(Date.now() - record.startedAt);
    }
    let depth: number;
    try {
      depth = await this.deps.queue().depth();
    } catch {
      depth = 1;
    }
    return this.rate.queuedMs(depth, this.deps.replicas());
  }

  /** Stops claiming, stops every run and gives it back to the queue to run now elsewhere. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.pollTimer);
    clearTimeout(this.renewTimer);
    for (const run of this.runs.values()) this.halt(run, "stopping");
    await this.claiming;
    await Promise.allSettled([...this.settled]);
    await this.wakes?.close();
  }

  /** Wakes subscribed now (false on a memory queue, or while the subscription is down). */
  get subscribed(): boolean {
    return this.wakes?.live === true;
  }

  private claimSoon(): void {
    if (this.claiming) {
      this.claimAgain = true;
      return;
    }
    clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    this.pollAt = Number.POSITIVE_INFINITY;
    this.claiming = this.claim().finally(() => {
      this.claiming = undefined;
      if (this.stopping) return;
      if (this.claimAgain) {
        this.claimAgain = false;
        this.claimSoon();
        return;
      }
      this.lookWithin(this.nextLookMs());
    });
  }

  /** The next claim at most `ms` from now (an earlier one already set stays). */
  private lookWithin(ms: number): void {
    if (this.stopping) return;
    const delay = Math.max(0, ms);
    const at = performance.now() + delay;
    if (this.pollTimer !== undefined && this.pollAt <= at) return;
    clearTimeout(this.pollTimer);
    this.pollAt = at;
    this.pollTimer = setTimeout(() => {
      this.pollTimer = undefined;
      this.pollAt = Number.POSITIVE_INFINITY;
      this.claimSoon();
    }, delay);
    this.pollTimer.unref();
  }

  /** After a claim: a poll, or the idle look when it found nothing and wakes would say more. */
  private nextLookMs(): number {
    const config = this.deps.config();
    let ms = config.pollInterval;
    if (this.foundNone && !this.wokenMeanwhile && this.wakes?.live) ms = idleLookMs(config);
    if (Number.isFinite(this.dueAt)) ms = Math.min(ms, this.dueAt - Date.now());
    return ms;
  }

  /** A job fell due somewhere: claim now, or a poll after the last claim if that was sooner. */
  private woken(): void {
    if (!this.started || this.stopping) return;
    if (this.claiming) {
      this.wokenMeanwhile = true;
      return;
    }
    this.lookWithin(this.lastClaimAt + this.deps.config().pollInterval - performance.now());
  }

  /** Up: what was submitted while it was down is looked for now. Down: polls meanwhile. */
  private liveChanged(live: boolean): void {
    if (live) this.woken();
    else if (!this.claiming) this.lookWithin(this.deps.config().pollInterval);
  }

  private async claim(): Promise<void> {
    const config = this.deps.config();
    const room = config.concurrency - this.runs.size;
    this.foundNone = false;
    this.wokenMeanwhile = false;
    if (!config.enabled || room <= 0) return;
    const queue = this.deps.queue();
    if (this.wakes === undefined && queue.subscribe) {
      this.wakes = queue.subscribe(
        () => this.woken(),
        (live) => this.liveChanged(live),
      );
    }
    this.lastClaimAt = performance.now();
    if (Date.now() >= this.dueAt) this.dueAt = Number.POSITIVE_INFINITY;
    let jobs: JobRecord[];
    try {
      jobs = await queue.claim(this.owner, config.lease, room);
    } catch (err) {
      this.storeWarning(err, "claim");
      return;
    }
    this.foundNone = jobs.length === 0;
    for (const job of jobs) {
      if (this.stopping) {
        // Claimed while stopping: straight back, for another replica.
        await this.release(job.id, Date.now(), "stopping");
        continue;
      }
      this.begin(job);
    }
  }

  private scheduleRenew(): void {
    if (this.stopping) return;
    const lease = this.deps.config().lease;
    this.renewTimer = setTimeout(() => void this.renew().finally(() => this.scheduleRenew()), lease / 3);
    this.renewTimer.unref();
  }

  private async renew(): Promise<void> {
    const ids = [...this.runs.values()].filter((r) => !r.stopped).map((r) => r.record.id);
    if (ids.length === 0) return;
    let lost: string[];
    try {
      lost = await this.deps.queue().renew(ids, this.owner, this.deps.config().lease);
    } catch (err) {
      // The lease may lapse meanwhile: then another replica runs the job too (at least once).
      this.storeWarning(err, "renew");
      return;
    }
    for (const id of lost) {
      const run = this.runs.get(id);
      if (run) this.halt(run, "lost");
    }
  }

  private begin(record: JobRecord): void {
    const run: Run = {
      record,
      controller: new AbortController(),
      response: undefined,
      stopped: undefined,
      startedAt: performance.now(),
    };
    this.runs.set(record.id, run);
    const done: Promise<void> = this.execute(run)
      .catch((err: unknown) => this.deps.logger.error({ err, job: record.id }, "job run failed"))
      .finally(() => {
        this.runs.delete(record.id);
        this.settled.delete(done);
        // Room again: claim now.
        if (!this.stopping) this.claimSoon();
      });
    this.settled.add(done);
  }

  private halt(run: Run, why: "lost" | "stopping"): void {
    run.stopped ??= why;
    run.controller.abort();
    // Seen by the request path as the client gone: the backend's work stops, the stages unwind.
    run.response?.destroy();
  }

  private async execute(run: Run): Promise<void> {
    const id = run.record.id;
    let outcome: Outcome;
    try {
      outcome = await this.call(run);
    } catch (err) {
      if (run.stopped === "lost") return this.deps.events.lost();
      if (run.stopped === "stopping") return this.release(id, Date.now(), "stopping");
      this.deps.logger.warn({ err, job: id }, "job run ended without an answer; it runs again");
      return this.release(id, Date.now() + ERROR_RETRY_MS, "error");
    }
    if (run.stopped === "lost") return this.deps.events.lost();
    if (outcome.kind === "later") {
      const at = run.stopped === "stopping" ? Date.now() : Date.now() + deferral(outcome.afterMs);
      return this.release(id, at, run.stopped ?? "load");
    }
    let written: boolean;
    try {
      written = await this.deps
        .queue()
        .finish(id, this.owner, outcome.state, outcome.result, answerTtl(run.record, this.deps.config().ttl));
    } catch (err) {
      // Not written: the lease lapses and the job runs again.
      this.storeWarning(err, "finish");
      return;
    }
    if (!written) return this.deps.events.lost();
    this.deps.events.finished(outcome.state);
    this.rate.completed(performance.now() - run.startedAt);
  }

  private async call(run: Run): Promise<Outcome> {
    const { record } = run;
    const config = this.deps.config();
    const { body, stream, model } = runBody(record.request.body);
    const res = await this.deps.inject({
      method: "POST",
      url: record.request.url,
      headers: {
        "content-type": "application/json",
        [JOB_HEADER]: `${this.secret.toString()}:${record.id}`,
        [PRIORITY_HEADER]: config.band,
        "x-request-id": record.id,
      },
      payload: body,
      payloadAsStream: true,
      signal: run.controller.signal,
    });
    const answer = res.stream();
    const later = loadRefusal(res.statusCode, res.headers);
    if (later !== undefined) {
      answer.destroy();
      return { kind: "later", afterMs: later };
    }
    const headers = keptHeaders(res.headers);
    const contentType = headers["content-type"] ?? "";
    if (stream && res.statusCode === 200 && contentType.startsWith("text/event-stream")) {
      const builder = new FinalAnswerBuilder(routeOf(record.request.url), model);
      for await (const chunk of answer) builder.push(chunk as Buffer);
      const final = builder.end();
      headers["content-type"] = "application/json";
      if (final.kind === "complete") {
        return {
          kind: "answer",
          state: "succeeded",
          result: { status: 200, headers, body: JSON.stringify(final.json) },
        };
      }
      return {
        kind: "answer",
        state: "failed",
        result: { status: final.status, headers, body: JSON.stringify(final.body) },
      };
    }
    const chunks: Buffer[] = [];
    for await (const chunk of answer) chunks.push(chunk as Buffer);
    const result = { status: res.statusCode, headers, body: Buffer.concat(chunks).toString("utf8") };
    return { kind: "answer", state: res.statusCode < 300 ? "succeeded" : "failed", result };
  }

  private async release(id: string, runAt: number, reason: "load" | "stopping" | "error"): Promise<void> {
    try {
      if (await this.deps.queue().release(id, this.owner, runAt)) {
        this.deps.events.released(reason);
        // Due later: no wake will say so; this replica looks then.
        if (runAt > Date.now() && runAt < this.dueAt) {
          this.dueAt = runAt;
          if (!this.claiming) this.lookWithin(runAt - Date.now());
        }
      } else this.deps.events.lost();
    } catch (err) {
      // Not given back: its lease lapses and it runs again then.
      this.storeWarning(err, "release");
    }
  }

  private storeWarning(err: unknown, operation: string): void {
    // One line per second at most: a dead store must not flood the log.
    const now = Date.now();
    if (now - this.lastStoreWarning < 1000) return;
    this.lastStoreWarning = now;
    this.deps.logger.warn(
      { err: err instanceof Error ? err.message : String(err), operation },
      "jobs queue unavailable",
    );
  }
}

/**
 * The body a run sends: the job's, with the usage chunk asked for when it streams (the final
 * JSON then has the usage a non-streamed answer has; the gateway passes the chunk on because
 * the request asked for it).
 */
function runBody(text: string): { body: string; stream: boolean; model: string } {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return { body: text, stream: false, model: "" };
  }
  const model = typeof json.model === "string" ? json.model : "";
  if (json.stream !== true) return { body: text, stream: false, model };
  const options =
    json.stream_options !== null && typeof json.stream_options === "object"
      ? (json.stream_options as Record<string, unknown>)
      : {};
  if (options.include_usage === true) return { body: text, stream: true, model };
  return {
    body: JSON.stringify({ ...json, stream_options: { ...options, include_usage: true } }),
    stream: true,
    model,
  };
}

function routeOf(url: string): OpenAIRoute {
  const path = url.split("?")[0];
  return path === "/v1/completions" ? "/v1/completions" : "/v1/chat/completions";
}

/** A refusal for load: a 429 or 503 that says when to come back (ms). */
function loadRefusal(status: number, headers: Record<string, unknown>): number | undefined {
  if (status !== 429 && status !== 503) return undefined;
  const ms = Number(headers["retry-after-ms"]);
  if (headers["retry-after-ms"] !== undefined && Number.isFinite(ms) && ms >= 0) return ms;
  const seconds = Number(headers["retry-after"]);
  if (headers["retry-after"] !== undefined && Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  return undefined;
}

function deferral(afterMs: number): number {
  const base = Math.min(MAX_DEFER_MS, Math.max(MIN_DEFER_MS, afterMs));
  return Math.round(base * (1 + DEFER_JITTER * Math.random()));
}

/** The answer's headers a client polling the job should see: what it is, and whose. */
function keptHeaders(headers: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (name !== "content-type" && name !== "x-request-id" && !name.startsWith("x-floodgate-")) continue;
    if (value === undefined) continue;
    out[name] = Array.isArray(value) ? value.join(", ") : String(value);
  }
  return out;
}

/**
 * How long a run's answer is kept: jobs.ttl from its end, and a batch line's at least until its
 * batch's window closes (plus jobs.ttl), so that the batch's output is whole when it is read
 * after its last line ended, however early a line finished.
 */
export function answerTtl(record: JobRecord, ttl: number): number {
  if (record.group === undefined || record.expiresAt === undefined) return ttl;
  return ttl + Math.max(0, record.expiresAt - Date.now());
}
