/**
 * The request paths, built once from the config: the ordered list of stages each request runs,
 * leaving out the stages the config turns off (a stage that is off costs nothing per request).
 *
 *   OpenAI routes:      route → request-limits → cache → token-budget → concurrency →
 *                       micro-batch → forward
 *   a job's submission: route → request-limits → submit (Prefer: respond-async, src/jobs)
 *   pass-through routes:        request-limits → forward (as received, any content)
 *
 * micro-batch is in the path when a pool merges embeddings requests (src/stages/micro-batch.ts):
 * it answers the requests it merges, and forward runs for every other.
 *
 * Each stage gives back what it took on the way back, in reverse order (src/stages/stage.ts).
 * With request limits on, the token reservation is taken in the request-limits stage's store
 * call and adopted by the token-budget stage after the cache (src/stages/request-limits.ts).
 */
import type { Logger } from "pino";
import type { ResponseCache } from "./cache/response-cache.js";
import type { GatewayConfig, RouteConfig } from "./config/index.js";
import type { PathAnswer, RequestContext } from "./context.js";
import type { Metrics } from "./metrics/metrics.js";
import type { Forwarding } from "./proxy/fallback.js";
import type { ForwardHooks } from "./proxy/forwarder.js";
import { passThroughStage } from "./proxy/pass-through.js";
import type { ConcurrencyLimits } from "./ratelimit/concurrency.js";
import type { RequestLimits } from "./ratelimit/request-limits.js";
import type { TokenBudgets } from "./ratelimit/token-budget.js";
import { cacheStage } from "./stages/cache.js";
import { concurrencyStage } from "./stages/concurrency.js";
import { forwardStage } from "./stages/forward.js";
import { microBatchStage } from "./stages/micro-batch.js";
import { requestLimitsStage } from "./stages/request-limits.js";
import { routeStage } from "./stages/route.js";
import { RequestPath, type Stage } from "./stages/stage.js";
import { tokenBudgetStage } from "./stages/token-budget.js";
import type { Upstreams } from "./upstream/pool.js";

export type GatewayPath = RequestPath<RequestContext, PathAnswer>;
type GatewayStage = Stage<RequestContext, PathAnswer>;

export interface PathDeps {
  config: GatewayConfig;
  upstreams: Upstreams;
  metrics: Metrics;
  logger: Logger;
  authEnabled: boolean;
  limits: RequestLimits;
  budgets: TokenBudgets;
  concurrency: ConcurrencyLimits;
  cache: ResponseCache;
}

export function forwarding(deps: PathDeps): Forwarding {
  const hooks: ForwardHooks = {
    onFirstByte: (pool, backend, seconds) => deps.metrics.observeFirstByte(pool.name, backend.name, seconds),
  };
  return {
    upstreams: deps.upstreams,
    metrics: deps.metrics,
    hooks,
    stripAuthorization: deps.authEnabled,
    sendTimeout: deps.config.server.sendTimeout,
  };
}

export function openAIPath(deps: PathDeps, forward: Forwarding): GatewayPath {
  const { config } = deps;
  const stages: GatewayStage[] = [routeStage(deps.upstreams)];
  if (deps.limits.enabled) {
    // The token reservation rides in the limits' store call when the token-budget stage is on.
    const beside = deps.budgets.enabled
      ? { budgets: deps.budgets, defaultMaxTokens: config.tokens.defaultMaxTokens }
      : undefined;
    stages.push(requestLimitsStage(deps.limits, beside));
  }
  if (Object.values(config.pools).some((p) => p.cache.enabled)) {
    stages.push(
      cacheStage({
        cache: deps.cache,
        metrics: deps.metrics,
        hooks: forward.hooks,
        stripAuthorization: deps.authEnabled,
        sendTimeout: config.server.sendTimeout,
      }),
    );
  }
  if (deps.budgets.enabled) stages.push(tokenBudgetStage(deps.budgets, config.tokens.defaultMaxTokens));
  if (deps.concurrency.enabled) stages.push(concurrencyStage(deps.concurrency));
  if (Object.values(config.pools).some((p) => p.microBatch.enabled)) {
    stages.push(microBatchStage(forward, deps.metrics.microBatchEvents()));
  }
  stages.push(forwardStage(forward));
  return new RequestPath(stages, pathHooks(deps.logger));
}

/**
 * A job's submission (`Prefer: respond-async`): checked as its synchronous call would be (the
 * route, the request limits), then queued by `submit`. No token is reserved: the job's run
 * reserves them when it runs, through openAIPath.
 */
export function submissionPath(deps: PathDeps, submit: GatewayStage): GatewayPath {
  const stages: GatewayStage[] = [routeStage(deps.upstreams)];
  if (deps.limits.enabled) stages.push(requestLimitsStage(deps.limits));
  stages.push(submit);
  return new RequestPath(stages, pathHooks(deps.logger));
}

export function passThroughPathFor(deps: PathDeps, forward: Forwarding, route: RouteConfig): GatewayPath {
  const stages: GatewayStage[] = [];
  if (deps.limits.enabled) stages.push(requestLimitsStage(deps.limits));
  stages.push(passThroughStage(forward, route));
  return new RequestPath(stages, pathHooks(deps.logger));
}

function pathHooks(logger: Logger) {
  return {
    leaveFailed: (stage: string, err: unknown) =>
      logger.error({ stage, err }, "a stage failed on the way back"),
    abandoned: (answer: PathAnswer) => {
      if (answer.kind === "stream") answer.body.destroy();
    },
  };
}
