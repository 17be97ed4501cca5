/**
 * Concurrency: a lease on one of the tenant's slots across replicas, taken at dispatch (once a
 * backend slot is held) and held until the way back.
 */
import type { PathAnswer, RequestContext } from "../context.js";
import type { ConcurrencyLimits } from "../ratelimit/concurrency.js";
import type { Stage } from "./stage.js";

export function concurrencyStage(concurrency: ConcurrencyLimits): Stage<RequestContext, PathAnswer> {
  return {
    name: "concurrency",
    enter(state) {
      const tenant = state.tenant;
      if (!tenant || !concurrency.has(tenant)) return undefined;
      // Taken when a backend slot is held, not before the request waits for one: a request in
      // the admission queue holds none of its tenant's concurrency.
      state.dispatch = async () => {
        if (!state.lease) state.lease = await concurrency.acquire(tenant);
      };
      return undefined;
    },
    leave(state) {
      state.lease?.release();
    },
  };
}
