/**
 * Async requests: `Prefer: respond-async` (RFC 7240) on the OpenAI POST routes, and the job
 * resource, GET and DELETE /v1/jobs/{id}.
 *
 * A submission runs the head of the synchronous request path (src/request-path.ts
 * submissionPath): auth, the route stage (a bad body is the usual 400, a model the tenant may
 * not use the usual 404) and the request limits (a 429 refuses the submission), then the submit
 * stage here queues the request as a job, under the tenant's cap on unfinished jobs
 * (jobs.maxPerTenant: 429 too_many_jobs), and answers 202 with `Preference-Applied:
 * respond-async`, `Location: /v1/jobs/{id}` and a Retry-After estimate (src/jobs/completion-rate.ts).
 * No token is reserved then: the run reserves them, as any request does (src/jobs/runner.ts).
 *
 * GET on the job: 202 with a fresh Retry-After while it is queued or running; then the stored
 * answer exactly (status, headers, body), a failed one marked `x-floodgate-job-status: failed`
 * and `x-should-retry: false` so that an SDK does not retry the poll as if the GET had failed;
 * a cancelled job is 200 `{"status":"cancelled"}`. DELETE cancels (the run, if any, stops and
 * its backend work is aborted). Only the tenant that submitted a job sees it: another tenant's
 * job, like an absent or expired one, is 404 job_not_found.
 */
import { randomBytes } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { PathAnswer, RequestContext } from "../context.js";
import { errors } from "../errors.js";
import type { JobEvents } from "../metrics/metrics.js";
import type { Stage } from "../stages/stage.js";
import { StoreUnavailableError } from "../store/types.js";
import type { JobRunner } from "./runner.js";
import type { JobQueue, JobRecord } from "./types.js";

export const PREFER_HEADER = "prefer";
export const JOB_STATUS_HEADER = "x-floodgate-job-status";
const JOB_ROUTE = "/v1/jobs/:id";

export interface JobsDeps {
  queue: () => JobQueue;
  runner: JobRunner;
  events: JobEvents;
}

/**
 * Whether a Prefer header asks for `respond-async` (RFC 7240 §2: preferences separated by
 * commas, each a token with an optional value and parameters after `;`; tokens compare
 * case-insensitively; quoted strings may hold commas and semicolons). Several Prefer headers
 * arrive joined by commas.
 */
export function prefersAsync(header: string | string[] | undefined): boolean {
  if (header === undefined) return false;
  const text = Array.isArray(header) ? header.join(",") : header;
  // Most headers that get here do not mention it at all.
  if (!/respond-async/i.test(text)) return false;
  let start = 0;
  let quoted = false;
  for (let i = 0; i <= text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === "\\") i++;
      else if (c === '"') quoted = false;
      continue;
    }
    if (c === '"') quoted = true;
    else if (c === "," || c === undefined) {
      if (preferenceName(text.slice(start, i)) === "respond-async") return true;
      start = i + 1;
    }
  }
  return false;
}

/** A preference's token: what comes before its value (`=`) or its parameters (`;`). */
function preferenceName(preference: string): string {
  const end = preference.search(/[=;]/);
  return (end === -1 ? preference : preference.slice(0, end)).trim().toLowerCase();
}

/** A queue call; the store failing is a 503 to retry, not a 500. */
async function stored<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    if (err instanceof StoreUnavailableError) throw errors.jobsUnavailable().causedBy(err);
    throw err;
  }
}

/** job_ and 144 random bits, URL-safe. */
export function newJobId(): string {
  return `job_${randomBytes(18).toString("base64url")}`;
}

/** Sent as bytes, as the synchronous answers are (Fastify would add a charset to a string's type). */
function jobObject(id: string, status: string): Buffer {
  return Buffer.from(JSON.stringify({ id, object: "job", status }));
}

function retryHeaders(ms: number): Record<string, string> {
  return { "retry-after": String(Math.max(1, Math.ceil(ms / 1000))), "retry-after-ms": String(ms) };
}

/** The last stage of a submission: the request becomes a job, answered 202. */
export function submitStage(deps: JobsDeps): Stage<RequestContext, PathAnswer> {
  return {
    name: "submit",
    async enter(state) {
      const config = state.generation?.config.jobs;
      const incoming = state.incoming;
      if (!config || !incoming) throw new Error("a submission without its generation or request");
      const id = newJobId();
      const tenant = state.tenant?.id ?? "";
      const body = incoming.rawBody?.toString("utf8") ?? JSON.stringify(state.body);
      const { accepted } = await stored(
        deps.queue().enqueue([{ id, tenant, request: { url: incoming.url, body } }], config.maxPerTenant),
      );
      if (!accepted) throw errors.tooManyJobs(config.maxPerTenant, await deps.runner.retryAfterMs(undefined));
      deps.events.submitted(tenant);
      deps.runner.nudge();
      const retryMs = await deps.runner.retryAfterMs(undefined);
      return {
        kind: "buffered",
        status: 202,
        headers: {
          "content-type": "application/json",
          "preference-applied": "respond-async",
          location: `/v1/jobs/${id}`,
          [JOB_STATUS_HEADER]: "queued",
          ...retryHeaders(retryMs),
        },
        body: jobObject(id, "queued"),
      };
    },
  };
}

/** GET and DELETE /v1/jobs/{id}, in the scope of the API-key hook. */
export function registerJobRoutes(
  app: FastifyInstance,
  deps: JobsDeps,
  /** Jobs on in the config the request runs on. */
  enabled: (request: FastifyRequest) => boolean,
): void {
  /** The job, if the request's tenant may see it; 404 otherwise (and while jobs are off). */
  async function visibleJob(request: FastifyRequest): Promise<{ id: string; record: JobRecord }> {
    request.gw.route = JOB_ROUTE;
    const path = request.url.split("?")[0] ?? "/";
    if (!enabled(request)) throw errors.routeNotFound(request.method, path);
    const { id } = request.params as { id: string };
    const record = await stored(deps.queue().get(id));
    if (!record || record.tenant !== (request.gw.tenant?.id ?? "") || record.state === "expired") {
      throw errors.jobNotFound(id);
    }
    return { id, record };
  }

  app.get(JOB_ROUTE, async (request, reply) => {
    const { id, record } = await visibleJob(request);
    return answerFor(reply, id, record, deps);
  });

  app.delete(JOB_ROUTE, async (request, reply) => {
    const { id, record } = await visibleJob(request);
    let state = record.state;
    if (state === "queued" || state === "running") {
      const config = request.gw.generation?.config.jobs;
      const after = await stored(deps.queue().cancel(id, config?.ttl ?? 86_400_000));
      deps.runner.cancelled(id);
      state = after?.state ?? "cancelled";
      if (state === "cancelled") deps.events.finished("cancelled");
    }
    return reply
      .code(200)
      .header("content-type", "application/json")
      .header(JOB_STATUS_HEADER, state)
      .send(jobObject(id, state));
  });
}

async function answerFor(
  reply: FastifyReply,
  id: string,
  record: JobRecord,
  deps: JobsDeps,
): Promise<FastifyReply> {
  const state = record.state;
  reply.header(JOB_STATUS_HEADER, state);
  if (state === "queued" || state === "running") {
    const ms = await deps.runner.retryAfterMs(record);
    return reply
      .code(202)
      .headers(retryHeaders(ms))
      .header("content-type", "application/json")
      .send(jobObject(id, state));
  }
  const result = record.result;
  if ((state === "succeeded" || state === "failed") && result) {
    reply.code(result.status).headers(result.headers);
    // The stored error is the job's answer, not this GET's failure: nothing to retry.
    if (state === "failed") reply.header("x-should-retry", "false");
    return reply.header(JOB_STATUS_HEADER, state).send(Buffer.from(result.body));
  }
  return reply.code(200).header("content-type", "application/json").send(jobObject(id, state));
}
