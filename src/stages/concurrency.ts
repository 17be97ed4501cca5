/** Concurrency: a lease on one of the tenant's slots across replicas, held until the way back. */
import type { PathAnswer, RequestContext } from "../context.js";
import type { ConcurrencyLimits } from "../ratelimit/concurrency.js";
import type { Stage } from "./stage.js";

export function concurrencyStage(concurrency: ConcurrencyLimits): Stage<RequestContext, PathAnswer> {
  return {
    name: "concurrency",
    async enter(state) {
      const tenant = state.tenant;
      if (!tenant || !concurrency.has(tenant)) return undefined;
      state.lease = await concurrency.acquire(tenant);
      return undefined;
    },
    leave(state) {
      state.lease?.release();
    },
  };
}
