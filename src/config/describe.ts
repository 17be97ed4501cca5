/**
 * What a config would run, as `floodgate check` prints it: one line per listener, tenant, limit,
 * pool and route, with the settings an operator checks before a deploy (limits as configured,
 * whether the cache and admission queue are on, where a pool falls back to).
 */
import type { GatewayConfig, PoolConfig, RateSpecConfig, TenantConfig } from "./schema.js";
import { formatDuration, formatRate } from "./units.js";

export function describe(config: GatewayConfig): string {
  const lines = [
    `listen  ${config.listen.host}:${config.listen.port}`,
    config.admin.enabled
      ? `admin   ${config.admin.host}:${config.admin.port} (${config.admin.token ? "token set" : "no token: /admin/* off"})`
      : "admin   off",
    `store   ${config.store.type}`,
    `auth    ${config.auth ? `${config.auth.keys.length} keys, ${Object.keys(config.tenants).length} tenants` : "open (no keys)"}`,
    jobsLine(config),
  ];
  for (const [name, tenant] of Object.entries(config.tenants))
    lines.push(`tenant ${name}: ${tenantLine(tenant)}`);
  for (const l of config.rateLimits) {
    const models = l.models ? `, models ${l.models.join(", ")}` : "";
    const allow = l.allowList.length > 0 ? `; never limited: ${l.allowList.join(", ")}` : "";
    const onError = l.onStoreError === "local" ? "" : `; store down: ${l.onStoreError}`;
    lines.push(
      `limit ${l.name}: ${formatRate(l.rate, l.per, l.burst)} by ${l.by}${models}${allow}${onError}`,
    );
  }
  for (const [name, pool] of Object.entries(config.pools)) {
    const t = pool.timeouts;
    lines.push(
      `pool ${name}: models ${pool.models.join(", ")}; ${pool.balancer}; timeouts connect ${formatDuration(t.connect)}, first byte ${formatDuration(t.firstByte)}, idle ${formatDuration(t.idle)}, total ${formatDuration(t.total)}`,
    );
    lines.push(`  ${cacheLine(pool)}`, `  ${admissionLine(pool)}`);
    const batching = pool.microBatch;
    if (batching.enabled) {
      lines.push(
        `  embeddings micro-batching: up to ${batching.maxBatchInputs} inputs or ${batching.maxBatchTokens} tokens a call, window ${formatDuration(batching.batchWindow)}`,
      );
    }
    const chain = fallbackLine(config, pool);
    if (chain) lines.push(`  ${chain}`);
    for (const b of pool.backends) {
      const cap = b.maxConcurrency === undefined ? "" : `, max ${b.maxConcurrency} in flight`;
      lines.push(`  ${b.url} (${b.engine}, weight ${b.weight}${cap}${b.backup ? ", backup" : ""})`);
    }
  }
  for (const r of config.routes)
    lines.push(`route ${r.prefix}/* -> pool ${r.pool}${r.stripPrefix ? " (prefix stripped)" : ""}`);
  return lines.join("\n");
}

function tenantLine(tenant: TenantConfig): string {
  const parts = [`${tenant.priority}, weight ${tenant.weight}${tenant.fallback ? "" : ", no fallback"}`];
  if (tenant.models) parts.push(`models ${tenant.models.join(", ")}`);
  const { requests, tokens, concurrency, onStoreError } = tenant.limits;
  const rate = (spec: RateSpecConfig) => formatRate(spec.rate, spec.per, spec.burst);
  if (requests)
    parts.push(`requests ${(Array.isArray(requests) ? requests : [requests]).map(rate).join(" and ")}`);
  if (tokens) parts.push(`tokens ${rate(tokens)}`);
  if (concurrency !== undefined) parts.push(`concurrency ${concurrency}`);
  if (!requests && !tokens && concurrency === undefined) parts.push("no limits");
  else if (onStoreError !== "local") parts.push(`store down: ${onStoreError}`);
  return parts.join("; ");
}

function cacheLine(pool: PoolConfig): string {
  const c = pool.cache;
  if (!c.enabled) return "cache off";
  const stale = [
    c.staleWhileRevalidate > 0 ? `stale-while-revalidate ${formatDuration(c.staleWhileRevalidate)}` : "",
    c.staleIfError > 0 ? `stale-if-error ${formatDuration(c.staleIfError)}` : "",
  ].filter((s) => s !== "");
  return `cache on: ttl ${formatDuration(c.ttl)}, ${c.rule}, scope ${c.scope}${stale.length > 0 ? `, ${stale.join(", ")}` : ""}`;
}

function admissionLine(pool: PoolConfig): string {
  const a = pool.admission;
  if (!a.enabled) return "admission off (a full pool answers 503 at once)";
  const waits = Object.entries(a.bands)
    .map(([band, b]) => `${band} ${formatDuration(b.maxWait)}`)
    .join(", ");
  return `admission on: maxQueue ${a.maxQueue}; longest waits ${waits}${a.overflow === "fallback" ? "; full: fallback" : ""}`;
}

/** The chain as the gateway walks it: each target with the model it is asked for. */
function fallbackLine(config: GatewayConfig, pool: PoolConfig): string | undefined {
  if (pool.fallback.length === 0) return undefined;
  const targets = pool.fallback.map((entry) => {
    const name = typeof entry === "string" ? entry : entry.pool;
    const model = (typeof entry === "string" ? undefined : entry.model) ?? config.pools[name]?.models[0];
    return model === undefined ? name : `${name} (${model})`;
  });
  return `fallback -> ${targets.join(" -> ")}`;
}

function jobsLine(config: GatewayConfig): string {
  const j = config.jobs;
  if (!j.enabled) return "jobs    off (Prefer: respond-async served synchronously)";
  const where =
    config.store.type === "redis" ? "shared by the replicas" : "this replica only, lost on restart";
  return `jobs    async requests on: ${where}; band ${j.band}, ${j.concurrency} at once, ${j.maxPerTenant} unfinished per tenant, lease ${formatDuration(j.lease)}, answers kept ${formatDuration(j.ttl)}`;
}
