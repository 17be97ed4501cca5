/**
 * From raw request records to outcomes: what counts as served within SLO, late, a fast refusal
 * or a slow failure, and the goodput formula. Shared by the report and the charts, so that
 * re-rendering saved results applies the same rules.
 */

/** A refusal (429/503) whose response head came sooner than this after the send is "fast". */
export const FAST_REFUSAL_MS = 100;
/** Interactive tenants: the first token within 2 s of the send. */
const INTERACTIVE_SLO_MS = 2000;
/** batch: its band may queue up to 30 s (admission's default maxWait), plus 2 s to the first token. */
const BATCH_SLO_MS = 30_000 + 2000;
export const OUTCOMES = ["withinSlo", "late", "fastRefusal", "slowFailure"];
export const OUTCOME_LABELS = {
  withinSlo: "served within SLO",
  late: "served late",
  fastRefusal: "fast refusal",
  slowFailure: "slow failure",
};

export function sloMs(tenant) {
  return tenant === "batch" ? BATCH_SLO_MS : INTERACTIVE_SLO_MS;
}

/**
 * One request's outcome. Every duration is measured from the request's scheduled send time
 * (`at`), so a lagging load generator counts against the target, never in its favour.
 */
export function outcome(rec) {
  const served = rec.status === 200 && rec.done && !rec.error && rec.firstToken !== null;
  if (served) return rec.firstToken - rec.at <= sloMs(rec.tenant) ? "withinSlo" : "late";
  const refusal = rec.status === 429 || rec.status === 503;
  if (refusal && rec.headers - rec.at < FAST_REFUSAL_MS) return "fastRefusal";
  return "slowFailure";
}

/** What a failed request was, for the report's failure table: "503 no_backend_available", "timeout". */
export function failureKind(rec) {
  if (rec.error === "http") return `${rec.status} ${rec.code ?? ""}`.trim();
  if (rec.error) return rec.status ? `${rec.status} ${rec.error}` : rec.error;
  return rec.firstToken === null ? "200 without content" : "ok";
}

/** Nearest-rank percentile of unsorted numbers; null for none. */
export function percentile(values, p) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/**
 * Outcomes of one group of records (a tenant in a run, or the whole run).
 * Goodput = served within SLO / min(offered, C x T): C the measured capacity (completions/s),
 * T the seconds the target spent handing out useful work: from the first arrival to the last
 * first token of a request served within SLO, and at least the D seconds of arrivals. Below
 * capacity the target owes every request it was offered; above it, no more than the fleet
 * could have served while it was serving (a queue that drains after the arrivals stop is
 * owed for that time too).
 */
export function summarizeGroup(records, capacityPerSecond, servingSeconds) {
  const counts = Object.fromEntries(OUTCOMES.map((o) => [o, 0]));
  const ttfts = [];
  const retryAfter = [];
  const queueMs = [];
  /** How long each 429/503 took, fast or not: how close the refusals come to the 100 ms bound. */
  const refusalMs = [];
  const failures = {};
  for (const rec of records) {
    const o = outcome(rec);
    counts[o]++;
    if (o === "withinSlo" || o === "late") {
      ttfts.push(rec.firstToken - rec.at);
      if (rec.queueMs !== null) queueMs.push(rec.queueMs);
    } else {
      const kind = failureKind(rec);
      failures[kind] = (failures[kind] ?? 0) + 1;
    }
    if (rec.status === 429 || rec.status === 503) {
      refusalMs.push(rec.headers - rec.at);
      if (rec.retryAfterMs !== null) retryAfter.push(rec.retryAfterMs);
    }
  }
  const offered = records.length;
  const owed = Math.min(offered, capacityPerSecond * servingSeconds);
  return {
    offered,
    ...counts,
    owed: round(owed, 1),
    goodput: owed > 0 ? counts.withinSlo / owed : null,
    ttftP50: percentile(ttfts, 50),
    ttftP99: percentile(ttfts, 99),
    retryAfterCount: retryAfter.length,
    retryAfterP50: percentile(retryAfter, 50),
    queueMsCount: queueMs.length,
    queueMsP50: percentile(queueMs, 50),
    queueMsP99: percentile(queueMs, 99),
    refusalCount: refusalMs.length,
    refusalMsP99: percentile(refusalMs, 99),
    refusalMsMax: refusalMs.length ? Math.max(...refusalMs) : null,
    failures,
  };
}

/** T of the goodput formula: the run's span of useful work, at least its arrival window. */
export function servingSeconds(run) {
  let first = Number.POSITIVE_INFINITY;
  let last = Number.NEGATIVE_INFINITY;
  for (const r of run.records) {
    first = Math.min(first, r.at);
    if (outcome(r) === "withinSlo") last = Math.max(last, r.firstToken);
  }
  return Number.isFinite(last) ? Math.max(run.arrivalSeconds, (last - first) / 1000) : run.arrivalSeconds;
}

/** Per run: the total and each tenant, plus the load generator's send lag. */
export function summarizeRun(run, capacityPerSecond) {
  const tenants = {};
  const seconds = servingSeconds(run);
  for (const stream of run.streams) {
    const mine = run.records.filter((r) => r.tenant === stream.tenant);
    tenants[stream.tenant] = summarizeGroup(mine, capacityPerSecond, seconds);
  }
  const lags = run.records.map((r) => r.sent - r.at);
  return {
    target: run.target,
    scenario: run.scenario,
    total: summarizeGroup(run.records, capacityPerSecond, seconds),
    servingSeconds: round(seconds, 1),
    tenants,
    sendLagP99: percentile(lags, 99),
    sendLagMax: lags.length ? Math.max(...lags) : null,
    tokensOff: run.records.filter((r) => r.done && r.tokens !== run.maxTokens).length,
    // Each simulator's peak queue beyond its slots, sampled during the run (older results: none).
    peakQueue: run.queue?.peak ?? null,
    redis: run.redis ? redisPerRequest(run.redis, run.records.length, run.replicas?.length ?? 1) : null,
    replicas: run.replicas ?? null,
  };
}

/** Redis round trips of a run: in all, per request sent, and per replica and second. */
export function redisPerRequest(redis, requests, replicas) {
  return {
    ...redis,
    perRequest: requests > 0 ? redis.total / requests : null,
    scriptsPerRequest: requests > 0 ? redis.scripts / requests : null,
    perReplicaSecond: redis.seconds > 0 ? redis.total / replicas / redis.seconds : null,
  };
}

export function summarize(results) {
  const C = results.capacity.perSecond;
  return results.runs.map((run) => summarizeRun(run, C));
}

export function round(x, digits = 0) {
  if (x === null || x === undefined || Number.isNaN(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
