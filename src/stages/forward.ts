/**
 * Forward: the request goes to its pool (and down the fallback chain while a pool cannot serve),
 * with the body as received unless a stage rewrote it. When no backend can serve and the cache
 * kept an expired entry for that case (staleIfError), the entry answers instead. On the way
 * back the exchange is settled, whatever is left of it (its backend slot, its timer).
 */
import type { PathAnswer, RequestContext } from "../context.js";
import { cannotServe, type Forwarding, fallbackChain, serve } from "../proxy/fallback.js";
import { cached } from "./cache.js";
import type { Stage } from "./stage.js";
import { tapStream } from "./stream-usage.js";

export function forwardStage(deps: Forwarding): Stage<RequestContext, PathAnswer> {
  return {
    name: "forward",
    async enter(state) {
      const pool = state.target;
      const incoming = state.incoming;
      // Every stream is asked for its usage: the token metrics count it (the client sees the
      // usage chunk only if it asked).
      if (state.stream && !state.tap) tapStream(state);
      const body = state.upstreamBody ?? state.body;
      if (!pool || !incoming || !body || !state.route) throw new Error("forward without a route");
      const path = state.route + queryOf(incoming.url);
      const tenant = state.tenant;
      let chain = tenant?.fallback === false ? [] : fallbackChain(deps.upstreams, pool);
      // A fallback pool is asked for its own model: one off the tenant's list is skipped.
      if (tenant?.models) chain = chain.filter((target) => tenant.mayUse(target.model));
      const rewritten = state.upstreamBody ? Buffer.from(JSON.stringify(state.upstreamBody)) : undefined;
      const tap = state.tap;
      const stale = state.staleForError;
      try {
        const result = await serve(deps, state, pool, chain, (target) => {
          // A fallback pool is asked for its model: the same request, re-encoded.
          const json = target ? { ...body, model: target.model } : body;
          return {
            path,
            body: target ? Buffer.from(JSON.stringify(json)) : (rewritten ?? incoming.rawBody ?? null),
            json,
            streamAny: false,
            tap,
          };
        });
        // The entry is this pool's: its retry.on says which failures a stale answer may cover.
        if (stale && result.kind === "buffered" && pool.config.retry.when.statuses.has(result.status)) {
          return cached(state, deps.metrics, stale, "STALE");
        }
        return result;
      } catch (err) {
        if (stale && cannotServe(err, state, pool.config.retry.when)) {
          return cached(state, deps.metrics, stale, "STALE");
        }
        throw err;
      }
    },
    leave(state) {
      state.exchange?.settle();
    },
  };
}

export function queryOf(url: string): string {
  const q = url.indexOf("?");
  return q === -1 ? "" : url.slice(q);
}
