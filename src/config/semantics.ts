/** Checks that a schema cannot express: references between sections, uniqueness, URL shapes. */
import { createHash } from "node:crypto";
import type { ConfigIssue, ConfigWarning } from "./issues.js";
import { modelMatcher } from "./model-patterns.js";
import type { GatewayConfig } from "./schema.js";
import { formatDuration } from "./units.js";

/** Reachable from this host only: 127.0.0.0/8, ::1 (also IPv4-mapped), localhost. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  if (h === "localhost" || h === "::1") return true;
  return /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** The shortest admin token accepted off loopback: 32 random characters cannot be guessed. */
const MIN_EXPOSED_TOKEN = 32;

/** Tokens copied from an example rather than generated, compared as lowercase letters and digits. */
const PLACEHOLDER_TOKENS = new Set([
  "admin",
  "admintoken",
  "changeme",
  "changemetoalongsecret",
  "default",
  "dummy",
  "example",
  "letmein",
  "mysecret",
  "password",
  "placeholder",
  "replaceme",
  "sample",
  "secret",
  "supersecret",
  "test",
  "token",
  "yoursecrethere",
  "yourtokenhere",
]);
/** Phrases no generated secret contains, however long the text around them. */
const PLACEHOLDER_PHRASES = ["changeme", "replaceme", "yoursecret", "yourtoken", "placeholder", "xxxx"];

/** Why an admin token is too weak to face the network, or undefined when it is not. */
function weakTokenReason(token: string): string | undefined {
  if (isPlaceholderToken(token)) return "is a well-known placeholder";
  if (token.length < MIN_EXPOSED_TOKEN)
    return `is ${token.length} characters, fewer than ${MIN_EXPOSED_TOKEN}`;
  return undefined;
}

export function isPlaceholderToken(token: string): boolean {
  const t = token.toLowerCase().replace(/[^a-z0-9]/g, "");
  // One character repeated (xxxx..., 0000...), or nothing but punctuation.
  if (/^(.)?\1*$/.test(t)) return true;
  // A placeholder word, repeated to pass a length check, maybe with digits after it.
  const core = t.replace(/\d+$/, "");
  for (const word of PLACEHOLDER_TOKENS) {
    if (core !== "" && core.length % word.length === 0 && core === word.repeat(core.length / word.length))
      return true;
  }
  return PLACEHOLDER_PHRASES.some((phrase) => t.includes(phrase));
}

export function checkSemantics(config: GatewayConfig): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const modelOwner = new Map<string, string>();
  // A live replica must renew its slot claims several times within a lease, or a busy moment
  // would let them lapse while its requests run.
  const slots = config.store.slots;
  if (slots.sync * 3 > slots.lease) {
    issues.push({
      path: ["store", "slots", "lease"],
      message: `a lease of ${slots.lease} ms is less than three syncs (${slots.sync} ms each)`,
      hint: "make store.slots.lease at least 3 × store.slots.sync (e.g. sync 100ms, lease 3s)",
    });
  }

  // A running job's lease is renewed every lease / 3: shorter than a second, one slow moment of
  // the event loop would let it lapse and the job would run twice.
  if (config.jobs.lease < 1000) {
    issues.push({
      path: ["jobs", "lease"],
      message: `a lease of ${formatDuration(config.jobs.lease)} is too short to be renewed reliably`,
      hint: "make jobs.lease 1s or more (default 30s)",
    });
  }
  if (config.jobs.pollInterval < 10) {
    issues.push({
      path: ["jobs", "pollInterval"],
      message: `a poll interval of ${formatDuration(config.jobs.pollInterval)} would keep the store busy`,
      hint: "make jobs.pollInterval 10ms or more (default 250ms); a job submitted on a replica is claimed there at once anyway",
    });
  }

  for (const [poolName, pool] of Object.entries(config.pools)) {
    pool.models.forEach((model, i) => {
      const owner = modelOwner.get(model);
      if (owner !== undefined) {
        issues.push({
          path: ["pools", poolName, "models", i],
          message: `model "${model}" is already served by pool "${owner}"`,
          hint: "a model name selects exactly one pool",
        });
      } else {
        modelOwner.set(model, poolName);
      }
    });
    const names = new Set<string>();
    pool.backends.forEach((backend, i) => {
      const path = ["pools", poolName, "backends", i];
      let url: URL;
      try {
        url = new URL(backend.url);
      } catch {
        issues.push({ path: [...path, "url"], message: `"${backend.url}" is not a URL` });
        return;
      }
      if (url.search || url.hash || url.username || url.password) {
        issues.push({
          path: [...path, "url"],
          message: "must not carry a query, fragment or credentials",
          hint: "put credentials in headers: { authorization: 'Bearer ${KEY}' }",
        });
      }
      if (backend.discovery !== "none" && /^[\d.]+$|^\[/.test(url.hostname)) {
        issues.push({
          path: [...path, "url"],
          message: `discovery ${backend.discovery} needs a DNS name, not an address`,
          hint: "use discovery: none for a fixed address",
        });
      }
      if (backend.discovery === "srv" && url.port) {
        issues.push({
          path: [...path, "url"],
          message: "an SRV name takes its ports from DNS",
          hint: "write it without a port, e.g. http://_http._tcp.vllm.default.svc",
        });
      }
      const name = backendName(backend.url, backend.name);
      if (names.has(name)) {
        issues.push({ path, message: `two backends named "${name}"`, hint: "give each a distinct name:" });
      }
      names.add(name);
      if (backend.enginePriority && backend.engine !== "vllm") {
        issues.push({
          path: [...path, "enginePriority"],
          message: `only vLLM takes a request priority; this backend's engine is ${backend.engine}`,
          hint: "set engine: vllm (started with --scheduling-policy priority), or remove enginePriority",
        });
      }
    });
    for (const [band, settings] of Object.entries(pool.admission.bands)) {
      if (settings.maxWait >= pool.timeouts.total) {
        issues.push({
          path: ["pools", poolName, "admission", "bands", band, "maxWait"],
          message: `${formatDuration(settings.maxWait)} is not below the pool's total timeout (${formatDuration(pool.timeouts.total)})`,
          hint: "a request that waits that long has no time left to be served: lower maxWait or raise timeouts.total",
        });
      }
    }
    const batching = pool.microBatch;
    const interactiveWait = pool.admission.bands.interactive.maxWait;
    if (batching.enabled && batching.batchWindow >= interactiveWait) {
      issues.push({
        path: ["pools", poolName, "microBatch", "batchWindow"],
        message: `${formatDuration(batching.batchWindow)} is not below the interactive band's maxWait (${formatDuration(interactiveWait)})`,
        hint: "a request would spend its whole wait for a slot waiting for company: a few milliseconds (5ms) is enough",
      });
    }
    pool.fallback.forEach((entry, i) => {
      const target = typeof entry === "string" ? entry : entry.pool;
      const path = ["pools", poolName, "fallback", i];
      const targetPool = config.pools[target];
      if (target === poolName) {
        issues.push({ path, message: "a pool cannot fall back to itself" });
      } else if (!targetPool) {
        issues.push({ path, message: `no pool named "${target}"`, hint: poolsHint(config) });
      } else if (
        typeof entry !== "string" &&
        entry.model !== undefined &&
        !targetPool.models.includes(entry.model)
      ) {
        issues.push({
          path: [...path, "model"],
          message: `pool "${target}" does not serve model "${entry.model}"`,
          hint: `it serves: ${targetPool.models.join(", ")}`,
        });
      }
    });
    const affinity = pool.affinity;
    if (affinity.cacheTokens > 0 && affinity.by !== "prefix") {
      issues.push({
        path: ["pools", poolName, "affinity", "cacheTokens"],
        message: `the cache model follows prompt prefixes; this pool's affinity is by ${affinity.by}`,
        hint: "set by: prefix, or remove cacheTokens",
      });
    } else if (affinity.prefillTokensPerSecond > 0 && affinity.cacheTokens === 0) {
      issues.push({
        path: ["pools", poolName, "affinity", "prefillTokensPerSecond"],
        message: "the wait it sets is for the backends holding a prefix, which only the cache model knows",
        hint: "set cacheTokens to each engine's prefix cache in tokens, or remove prefillTokensPerSecond",
      });
    }
    if (pool.backends.every((b) => b.backup)) {
      issues.push({
        path: ["pools", poolName, "backends"],
        message: "every backend is a backup",
        hint: "at least one backend must have backup: false",
      });
    }
  }

  const prefixes = new Set<string>();
  config.routes.forEach((route, i) => {
    if (!(route.pool in config.pools)) {
      issues.push({
        path: ["routes", i, "pool"],
        message: `no pool named "${route.pool}"`,
        hint: poolsHint(config),
      });
    }
    if (prefixes.has(route.prefix))
      issues.push({ path: ["routes", i, "prefix"], message: "prefix listed twice" });
    prefixes.add(route.prefix);
  });

  // A period of 0 divides by zero in the bucket: every request it covers would fail.
  const zeroPer = (path: (string | number)[], spec: { per: number }) => {
    if (spec.per <= 0) {
      issues.push({ path: [...path, "per"], message: "must be longer than 0", hint: "per: 1s, or 1m" });
    }
  };
  config.rateLimits.forEach((limit, i) => {
    zeroPer(["rateLimits", i], limit);
  });
  const served = [...modelOwner.keys()];
  for (const [name, tenant] of Object.entries(config.tenants)) {
    // A name no pool serves is a typo or a pool since removed: the tenant would silently lose it.
    tenant.models?.forEach((pattern, i) => {
      if (served.some(modelMatcher([pattern]))) return;
      issues.push({
        path: ["tenants", name, "models", i],
        message: pattern.includes("*")
          ? `"${pattern}" matches no model any pool serves`
          : `no pool serves model "${pattern}"`,
        hint: `models served: ${served.join(", ")}`,
      });
    });
    const path = ["tenants", name, "limits"];
    const requests = tenant.limits.requests;
    if (Array.isArray(requests)) {
      requests.forEach((spec, i) => {
        zeroPer([...path, "requests", i], spec);
      });
    } else if (requests) zeroPer([...path, "requests"], requests);
    const tokens = tenant.limits.tokens;
    if (tokens) {
      zeroPer([...path, "tokens"], tokens);
    }
  }
  const wildcard = (host: string) => host === "0.0.0.0" || host === "::" || host === "";
  const sameAddress =
    config.listen.host === config.admin.host || wildcard(config.listen.host) || wildcard(config.admin.host);
  if (
    config.admin.enabled &&
    config.admin.port !== 0 &&
    config.admin.port === config.listen.port &&
    sameAddress
  ) {
    issues.push({
      path: ["admin", "port"],
      message: `is the same port as listen.port (${config.listen.port}): the second listener could not start`,
      hint: "give the admin listener its own port, e.g. 9090",
    });
  }

  const limitNames = new Set<string>();
  config.rateLimits.forEach((limit, i) => {
    if (limitNames.has(limit.name)) {
      issues.push({
        path: ["rateLimits", i, "name"],
        message: `a limit named "${limit.name}" is listed twice`,
      });
    }
    limitNames.add(limit.name);
  });

  const hashes = new Set<string>();
  config.auth?.keys.forEach((entry, i) => {
    const path = ["auth", "keys", i];
    if ((entry.key === undefined) === (entry.sha256 === undefined)) {
      issues.push({
        path,
        message: "needs exactly one of key or sha256",
        hint: "key: ${TEAM_KEY} or sha256: <hex>",
      });
      return;
    }
    const hash = entry.sha256 ?? sha256Hex(entry.key ?? "");
    if (hashes.has(hash)) issues.push({ path, message: "the same key is listed twice" });
    hashes.add(hash);
    if (!(entry.tenant in config.tenants)) {
      issues.push({
        path: [...path, "tenant"],
        message: `no tenant named "${entry.tenant}"`,
        hint: `add it under tenants: { ${entry.tenant}: {} }`,
      });
    }
  });

  if (
    config.store.type === "redis" &&
    !config.store.url &&
    !config.store.nodes &&
    !config.store.sentinels &&
    !config.store.sentinels
  ) {
    issues.push({
      path: ["store"],
      message: "a redis store needs url, nodes or sentinels",
      hint: "url: redis://127.0.0.1:6379",
    });
  }
  if (config.server.headersTimeout > config.server.requestTimeout) {
    // Node refuses to start a server whose head may take longer than the whole request.
    issues.push({
      path: ["server", "headersTimeout"],
      message: `(${config.server.headersTimeout} ms) must not exceed server.requestTimeout (${config.server.requestTimeout} ms)`,
      hint: "lower headersTimeout, or raise requestTimeout to at least as much",
    });
  }
  const token = config.admin.token;
  if (config.admin.enabled && !isLoopback(config.admin.host)) {
    // Off loopback, whoever can reach the port can try the token: it must be unguessable.
    const weak = token === undefined ? undefined : weakTokenReason(token);
    if (token === undefined) {
      issues.push({
        path: ["admin", "token"],
        message: `is required when the admin listener binds ${config.admin.host}`,
        hint: "set token: ${FLOODGATE_ADMIN_TOKEN}, or bind admin.host to 127.0.0.1",
      });
    } else if (weak !== undefined) {
      issues.push({
        path: ["admin", "token"],
        message: `${weak}, and the admin listener binds ${config.admin.host}: anyone who can reach it could guess the token and drain backends or purge the cache`,
        hint: `use a random secret of ${MIN_EXPOSED_TOKEN}+ characters, e.g. FLOODGATE_ADMIN_TOKEN=$(openssl rand -hex 32), or bind admin.host to 127.0.0.1`,
      });
    }
  }
  return issues;
}

/** Settings that are valid but leave the gateway open or refuse what clients would expect to pass. */
export function configWarnings(config: GatewayConfig): ConfigWarning[] {
  const warnings: ConfigWarning[] = [];
  if (!config.auth && !isLoopback(config.listen.host)) {
    warnings.push({
      path: ["auth"],
      message: `none, and listen.host ${config.listen.host} is not a loopback address: anyone who can reach port ${config.listen.port} can use the GPUs`,
      hint: "add auth.keys, or set listen.host: 127.0.0.1",
    });
  }
  const defaultMax = config.tokens.defaultMaxTokens;
  for (const [name, tenant] of Object.entries(config.tenants)) {
    const tokens = tenant.limits.tokens;
    if (!tokens) continue;
    // A request without max_tokens reserves its prompt plus defaultMaxTokens: a bucket no larger
    // can never hold that, so each such request gets a 429 for a number its client never sent.
    const budget = tokens.burst ?? tokens.rate;
    if (budget <= defaultMax) {
      warnings.push({
        path: ["tenants", name, "limits", "tokens"],
        message: `a budget of ${budget} tokens is not above tokens.defaultMaxTokens (${defaultMax}), which every request without max_tokens reserves: each such request is refused with a 429`,
        hint: `raise burst (or rate) above ${defaultMax}, lower tokens.defaultMaxTokens, or have clients send max_tokens`,
      });
    }
  }
  return warnings;
}

function poolsHint(config: GatewayConfig): string {
  return `pools defined: ${Object.keys(config.pools).join(", ")}`;
}

export function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** A backend's name in logs and metric labels: its configured name, else host:port. */
export function backendName(url: string, name?: string): string {
  if (name) return name;
  const u = new URL(url);
  const port = u.port || (u.protocol === "https:" ? "443" : "80");
  return `${u.hostname}:${port}`;
}
