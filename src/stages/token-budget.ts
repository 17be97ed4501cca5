/**
 * Token budget: the request's estimated tokens (prompt plus the most it may generate) are
 * reserved in the tenant's bucket before it goes upstream; on the way back the reservation
 * settles to the answer's real usage (refunded in full when no answer came, kept when the usage
 * is unknown: a stream cut off, a client gone mid-stream).
 *
 * A reservation the request-limits stage already took (or refused) in its store call is adopted
 * here (no store call); otherwise it is taken here.
 */
import type { PathAnswer, RequestContext } from "../context.js";
import { tokenHeaders } from "../ratelimit/headers.js";
import type { Reservation, TokenBudgets } from "../ratelimit/token-budget.js";
import { estimateTokens, usageTotal } from "../tokens/estimate.js";
import { setHeaders } from "./route.js";
import type { Stage } from "./stage.js";
import { tapStream } from "./stream-usage.js";

export function tokenBudgetStage(
  budgets: TokenBudgets,
  defaultMaxTokens: number,
): Stage<RequestContext, PathAnswer> {
  return {
    name: "token-budget",
    enter(state) {
      const tenant = state.tenant;
      if (!tenant || !budgets.has(tenant) || !state.body || !state.route) return undefined;
      const ask = state.tokenAsk;
      if (ask?.outcome !== undefined) return held(state, budgets.adopt(ask));
      const estimate = estimateTokens(state.route, state.body, defaultMaxTokens);
      return budgets
        .reserve(tenant, estimate.total, estimate.defaulted ? defaultMaxTokens : undefined)
        .then((reservation) => held(state, reservation));
    },
    leave(state) {
      void state.reservation?.settle(usedTokens(state));
    },
  };
}

function held(state: RequestContext, reservation: Reservation | undefined): undefined {
  if (reservation) {
    state.reservation = reservation;
    setHeaders(state, tokenHeaders(reservation.state));
    tapStream(state);
  }
  return undefined;
}

/** Tokens the answer used: its usage; 0 for no answer; undefined (keep all) when unknown. */
function usedTokens(state: RequestContext): number | undefined {
  const answer = state.answer;
  if (!answer || answer.kind === "cached") return 0;
  if (answer.kind === "stream") return answer.tap?.total;
  if (answer.status >= 300) return 0;
  return usageTotal(answer.json?.usage);
}
