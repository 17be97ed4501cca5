/**
 * The state one simulated server shares with its request handlers, and the per-request record
 * that lets the server tell a client abort from a connection it dropped on purpose.
 */

import type { OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { BatchScheduler, SequenceSpec } from "./batch-scheduler.js";
import type { EmbeddingEngine } from "./embedding-engine.js";
import type { SimFaults } from "./faults.js";
import { sendError } from "./http-io.js";
import type { SimOptions } from "./options.js";
import { cachedPromptTokens, type PrefixCache } from "./prefix-cache.js";
import type { SimCounters } from "./stats.js";

export interface SimRuntime {
  readonly options: SimOptions;
  readonly counters: SimCounters;
  readonly scheduler: BatchScheduler;
  /** Runs /v1/embeddings calls, apart from the generation batch (see embedding-engine.ts). */
  readonly embeddings: EmbeddingEngine;
  /** Null while prefix caching is off (prefixCacheBlocks 0). */
  readonly prefixCache: PrefixCache | null;
  /** All batching times are zero: answer synchronously, no timers. */
  readonly instant: boolean;
  /** Embeddings calls cost nothing: answer them synchronously. */
  readonly embedInstant: boolean;
  faults(): SimFaults;
  /** 0, 1, 2, ... per server; mixed into non-deterministic generations. */
  nextRequestNumber(): number;
  /** Unique response id with an OpenAI-style prefix (chatcmpl, cmpl, embd). */
  newId(prefix: string): string;
}

export interface RequestLife {
  /** Runs if the client goes away before the response is complete: cancel timers, free the slot. */
  onAbort: (() => void) | null;
  /** Set before the server destroys the connection itself, so that is not counted as a client abort. */
  closedByServer: boolean;
  /** Headers every answer to this request carries (x-request-id echo). */
  headers: OutgoingHttpHeaders;
}

export const SERVER_BUSY = {
  status: 503,
  message: "server busy, try again later",
  type: "server_error",
  code: "server_busy",
} as const;

/**
 * Looks a prompt up in the prefix cache and inserts its blocks; counts the query and the hit in
 * prompt tokens and returns the tokens whose prefill is skipped. 0 while prefix caching is off.
 */
export function consultPrefixCache(rt: SimRuntime, promptKey: string, promptTokens: number): number {
  if (rt.prefixCache === null) return 0;
  const hits = cachedPromptTokens(promptTokens, rt.prefixCache.process(promptKey));
  rt.counters.prefixCache.queries += promptTokens;
  rt.counters.prefixCache.hits += hits;
  return hits;
}

/**
 * Queues work on the batch scheduler, or answers 503 server_busy when the queue is full.
 * Returns false when rejected. The slot is freed at once if the client aborts.
 */
export function submitOrReject(
  rt: SimRuntime,
  res: ServerResponse,
  life: RequestLife,
  spec: SequenceSpec,
): boolean {
  const handle = rt.scheduler.submit(spec);
  if (handle === null) {
    rt.counters.rejectedBusy++;
    sendError(res, SERVER_BUSY, life.headers);
    return false;
  }
  life.onAbort = () => {
    rt.scheduler.abort(handle);
  };
  return true;
}

/**
 * Ends the connection mid-body, after whatever was already written reaches the client, the way
 * a crashing or restarted backend cuts a response short.
 */
export function dropConnection(rt: SimRuntime, res: ServerResponse, life: RequestLife): void {
  life.closedByServer = true;
  rt.counters.droppedMidStream++;
  life.onAbort?.();
  life.onAbort = null;
  const socket = res.socket;
  if (socket === null) {
    res.destroy();
    return;
  }
  socket.destroySoon();
}
