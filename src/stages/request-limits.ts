/**
 * Request limits: every limit that applies (by IP, key, tenant, model, global) counts the
 * request; the tightest one's state goes into the response headers. A refusal is a 429 thrown
 * here (the limits are taken all or none: a refused request takes nothing).
 *
 * On the OpenAI routes, the tenant's token reservation is taken in the same store call when a
 * limit applies (one call on a cache miss for the limits and the tokens together); the
 * token-budget stage, after the response cache, adopts it or refuses the request by it, and a
 * request answered before that stage (a cache hit) gets it back unseen on the way back. Without
 * the token-budget stage in the path, or with no limit applying, that stage reserves on its own.
 */
import type { PathAnswer, RequestContext } from "../context.js";
import { requestHeaders } from "../ratelimit/headers.js";
import type { LimitCheck, RequestLimits } from "../ratelimit/request-limits.js";
import type { TokenAsk, TokenBudgets } from "../ratelimit/token-budget.js";
import { estimateTokens } from "../tokens/estimate.js";
import type { Stage } from "./stage.js";

export interface BesideLimits {
  budgets: TokenBudgets;
  defaultMaxTokens: number;
}

export function requestLimitsStage(
  limits: RequestLimits,
  tokens?: BesideLimits,
): Stage<RequestContext, PathAnswer> {
  const budgets = tokens?.budgets;
  const defaultMaxTokens = tokens?.defaultMaxTokens ?? 0;
  return {
    name: "request-limits",
    enter(state) {
      // A job's run: its submission was counted (the token-budget stage reserves by itself).
      if (state.deferred) return undefined;
      let ask: TokenAsk | undefined;
      const tenant = state.tenant;
      if (budgets !== undefined && tenant !== undefined && budgets.has(tenant) && state.body && state.route) {
        const estimate = estimateTokens(state.route, state.body, defaultMaxTokens);
        ask = budgets.ask(tenant, estimate.total, estimate.defaulted ? defaultMaxTokens : undefined);
      }
      const checked = limits.check(
        { ip: state.incoming?.ip ?? "", tenant: tenant?.id, keyId: state.keyId, model: state.model },
        ask?.take,
      );
      if (checked instanceof Promise) return checked.then((c) => apply(state, c, ask));
      apply(state, checked, ask);
      return undefined;
    },
    leave(state) {
      // Taken here and never adopted by the token-budget stage: the request did not need it.
      const held = state.tokenAsk?.held;
      if (held !== undefined) void held.cancel();
    },
  };

  function apply(state: RequestContext, checked: LimitCheck, ask: TokenAsk | undefined): undefined {
    if (checked.state !== undefined) {
      const headers = requestHeaders(checked.state, checked.limitText);
      // A fresh object: adopted, not copied (setHeaders copies what it is given first).
      state.headers = state.headers === undefined ? headers : Object.assign(state.headers, headers);
    }
    if (ask !== undefined && checked.beside !== undefined) {
      budgets?.answered(ask, checked.beside);
      state.tokenAsk = ask;
    }
    return undefined;
  }
}
