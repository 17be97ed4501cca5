#!/usr/bin/env node
/**
 * What the request-limits stage costs per request, against the buckets' own cost (the store
 * call alone: one takeAll of both buckets) and the floor (the request state alone). Two limits
 * per request, as in bench/overhead's floodgate+memory-limits: a tenant limit and a per-IP
 * limit, far above the load, on the memory store; and the same with a token reservation beside
 * them (stage+tokens), as the request-limits stage takes it when the tenant has a budget. Each variant is called directly with what the stage
 * hands it, without HTTP, so that only the limits' own cost is measured. In one
 * process, in rounds, the variants taking turns; reports CPU µs per request (median round).
 *
 * usage: npm run build && node bench/limits/run.mjs [--requests N] [--rounds N]
 */
import { parseArgs } from "node:util";
import { parseConfig } from "../../dist/src/config/index.js";
import { newContext } from "../../dist/src/context.js";
import { GuardedStore } from "../../dist/src/ratelimit/guarded-store.js";
import { bucketFor, limitKey, RequestLimits } from "../../dist/src/ratelimit/request-limits.js";
import { TokenBudgets } from "../../dist/src/ratelimit/token-budget.js";
import { MemoryStore } from "../../dist/src/store/index.js";

const { values } = parseArgs({
  options: { requests: { type: "string", default: "200000" }, rounds: { type: "string", default: "5" } },
});
const N = Number(values.requests);
const ROUNDS = Number(values.rounds);

const config = parseConfig(
  `auth: { keys: [{ key: "sk-bench-0123456789", tenant: bench }] }
tenants: { bench: { limits: { requests: { rate: 100000000, per: 1s }, tokens: { rate: 100000000, per: 1s } } } }
rateLimits: [{ name: per-ip, by: ip, rate: 100000000, per: 1s }]
pools: { p: { models: [m], backends: [{ url: "http://127.0.0.1:1" }] } }`,
  "bench",
);

async function variant(kind) {
  const store = new MemoryStore();
  const guard = new GuardedStore(store, store, { replicas: 1, failures: 3, resetTimeout: 2000 });
  let check = async () => undefined;
  if (kind === "stage") {
    const limits = new RequestLimits(config, guard);
    check = (subject) => limits.check(subject);
  } else if (kind === "stage+tokens") {
    const limits = new RequestLimits(config, guard);
    const budgets = new TokenBudgets(config, guard);
    const tenant = { id: "bench", ...config.tenants.bench };
    check = async (subject) => {
      const ask = budgets.ask(tenant, 30);
      const checked = await limits.check(subject, ask.take);
      budgets.answered(ask, checked.beside);
      await ask.held?.cancel();
    };
  } else if (kind === "buckets") {
    const defs = [
      { name: "per-ip", by: "ip", burst: 1e8, ratePerSec: 1e8, policy: "local", allowList: [] },
      {
        name: "tenant.requests[0]",
        by: "tenant",
        burst: 1e8,
        ratePerSec: 1e8,
        policy: "local",
        allowList: [],
      },
    ];
    check = (subject) =>
      guard.takeAll(
        defs.map((d) => ({
          spec: bucketFor(d, limitKey(d.by, subject)),
          cost: 1,
          limit: d.name,
          policy: d.policy,
        })),
      );
  }
  const call = async () => {
    const gw = newContext();
    gw.model = "m";
    await check({ ip: "127.0.0.1", tenant: "bench", keyId: "k", model: gw.model });
  };
  return { kind, call, close: () => guard.close() };
}

async function measure(v) {
  const start = process.cpuUsage();
  for (let i = 0; i < N; i++) await v.call();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / N;
}

const kinds = ["floor", "buckets", "stage", "stage+tokens"];
const variants = await Promise.all(kinds.map(variant));
for (const v of variants) await measure(v); // warm up
const rounds = Object.fromEntries(kinds.map((k) => [k, []]));
for (let r = 0; r < ROUNDS; r++) for (const v of variants) rounds[v.kind].push(await measure(v));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const floor = median(rounds.floor);
console.log(`${N} requests × ${ROUNDS} rounds, CPU µs per request (median round; spread min–max)`);
console.log("| variant | µs/req | over the floor | spread |");
console.log("| --- | ---: | ---: | ---: |");
for (const k of kinds) {
  const m = median(rounds[k]);
  const spread = `${Math.min(...rounds[k]).toFixed(1)}–${Math.max(...rounds[k]).toFixed(1)}`;
  console.log(
    `| ${k} | ${m.toFixed(1)} | ${k === "floor" ? "-" : `+${(m - floor).toFixed(1)}`} | ${spread} |`,
  );
}
await Promise.all(variants.map((v) => v.close()));
