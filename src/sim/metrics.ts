/**
 * Prometheus text exposition of the simulator, under vLLM's metric names so a gateway's load
 * signals (num_requests_running / waiting, gpu_cache_usage_perc) can be tested against it.
 * Written by hand rather than with prom-client: a dozen lines per scrape, no registry to keep.
 */

import type { SimStats } from "./stats.js";

export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

export function renderMetrics(modelName: string, stats: SimStats): string {
  const model = `model_name="${escapeLabel(modelName)}"`;
  const lines: string[] = [];
  const metric = (name: string, type: "gauge" | "counter", help: string, samples: [string, number][]) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}{${labels}} ${value}`);
  };
  metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", [
    [model, stats.running],
  ]);
  metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", [
    [model, stats.waiting],
  ]);
  metric("vllm:gpu_cache_usage_perc", "gauge", "GPU KV-cache usage. 1 means 100 percent usage.", [
    [model, stats.kvCacheUsage],
  ]);
  // vLLM >= 0.10 renamed the gauge; both names let a gateway be tested against either version.
  metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", [
    [model, stats.kvCacheUsage],
  ]);
  metric("vllm:request_success_total", "counter", "Count of successfully processed requests.", [
    [`finished_reason="stop",${model}`, stats.finishedStop],
    [`finished_reason="length",${model}`, stats.finishedLength],
  ]);
  metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", [
    [model, stats.promptTokens],
  ]);
  metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", [
    [model, stats.completionTokens],
  ]);
  // vLLM v1 declares the counters vllm:prefix_cache_queries and vllm:prefix_cache_hits, in
  // tokens; prometheus_client adds _total, so a real scrape reads these names.
  metric(
    "vllm:prefix_cache_queries_total",
    "counter",
    "Prefix cache queries, in terms of number of queried tokens.",
    [[model, stats.prefixCache.queries]],
  );
  metric(
    "vllm:prefix_cache_hits_total",
    "counter",
    "Prefix cache hits, in terms of number of cached tokens.",
    [[model, stats.prefixCache.hits]],
  );
  metric("sim_requests_received_total", "counter", "Inference requests received by the simulator.", [
    [model, stats.received],
  ]);
  metric(
    "sim_requests_aborted_total",
    "counter",
    "Requests whose client went away before the answer ended.",
    [[model, stats.aborted]],
  );
  metric("sim_requests_rejected_total", "counter", "Requests answered 503 server_busy (queue full).", [
    [`reason="busy",${model}`, stats.rejectedBusy],
  ]);
  metric("sim_faults_injected_total", "counter", "Faults injected, by kind.", [
    [`fault="error",${model}`, stats.errorsInjected],
    [`fault="drop",${model}`, stats.droppedMidStream],
    [`fault="hang",${model}`, stats.hung],
    [`fault="reset",${model}`, stats.connectionsReset],
  ]);
  lines.push("");
  return lines.join("\n");
}
