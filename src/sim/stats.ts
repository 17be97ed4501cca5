/**
 * Counters of one simulated server, read by tests through SimServer.stats() and GET /sim/stats,
 * and by the /metrics renderer.
 */

export interface SimCounters {
  /** Inference requests received (chat, completions, embeddings), whatever became of them. */
  received: number;
  /** Answered in full. */
  completed: number;
  /** The client went away before the answer was complete. */
  aborted: number;
  /** Answered 503 server_busy because the waiting queue was full. */
  rejectedBusy: number;
  /** Answered with an injected error status (errorRate). */
  errorsInjected: number;
  /** Connections destroyed mid-body by dropMidStreamAfterTokens. */
  droppedMidStream: number;
  /** Requests held open by the hang fault. */
  hung: number;
  /** Connections reset on accept by resetConnections. */
  connectionsReset: number;
  promptTokens: number;
  completionTokens: number;
  /** Embeddings calls accepted by the embeddings engine, and the inputs they held. */
  embeddingCalls: number;
  embeddingInputs: number;
  finishedStop: number;
  finishedLength: number;
  /**
   * Prefix-cache lookups in prompt tokens (vllm:prefix_cache_queries / _hits): queries are the
   * prompt tokens looked up, hits the ones found cached. Both stay 0 while prefix caching is off.
   */
  prefixCache: { queries: number; hits: number };
  /** Epoch ms of the last client abort; null before the first. */
  lastAbortAt: number | null;
}

export interface SimStats extends SimCounters {
  /** Sequences holding a batch slot (prefilling or decoding), and embeddings calls running. */
  running: number;
  /** Sequences queued for a slot, and embeddings calls queued for the embeddings engine. */
  waiting: number;
  /** Fraction 0..1 of the KV cache in use. */
  kvCacheUsage: number;
  /** The counters above, and the blocks the prefix cache holds now. */
  prefixCache: { queries: number; hits: number; blocks: number };
}

export function createCounters(): SimCounters {
  return {
    received: 0,
    completed: 0,
    aborted: 0,
    rejectedBusy: 0,
    errorsInjected: 0,
    droppedMidStream: 0,
    hung: 0,
    connectionsReset: 0,
    promptTokens: 0,
    completionTokens: 0,
    embeddingCalls: 0,
    embeddingInputs: 0,
    finishedStop: 0,
    finishedLength: 0,
    prefixCache: { queries: 0, hits: 0 },
    lastAbortAt: null,
  };
}
