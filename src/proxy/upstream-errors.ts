/** What an undici failure means to the client, given why (if at all) the gateway aborted it. */
import { errors, GatewayError } from "../errors.js";
import type { AbortReason } from "./exchange.js";

export function fromUpstreamError(err: unknown, abortReason: AbortReason | undefined): GatewayError {
  if (err instanceof GatewayError) return err;
  return classify(err, abortReason).causedBy(err);
}

function classify(err: unknown, abortReason: AbortReason | undefined): GatewayError {
  if (abortReason === "total") return errors.upstreamTimeout("total");
  const code = (err as { code?: unknown } | null)?.code;
  switch (code) {
    case "UND_ERR_CONNECT_TIMEOUT":
      return errors.upstreamTimeout("connect");
    case "UND_ERR_HEADERS_TIMEOUT":
      return errors.upstreamTimeout("first_byte");
    case "UND_ERR_BODY_TIMEOUT":
      return errors.upstreamTimeout("idle");
    case "UND_ERR_HEADERS_OVERFLOW":
    case "UND_ERR_RES_CONTENT_LENGTH_MISMATCH":
    case "UND_ERR_RES_EXCEEDED_MAX_SIZE":
      return errors.upstreamBadResponse();
    default:
      if (typeof code === "string" && code.startsWith("HPE_")) return errors.upstreamBadResponse();
      return errors.upstreamUnavailable();
  }
}
