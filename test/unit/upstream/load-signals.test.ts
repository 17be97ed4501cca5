import { describe, expect, it } from "vitest";
import type { Engine } from "../../../src/config/index.js";
import {
  engineHasMetrics,
  extractSignal,
  type LoadSignal,
  loadPenalty,
  prefixCacheRatio,
  UNKNOWN_PENALTY,
} from "../../../src/upstream/load-signals.js";
import { parsePrometheusText } from "../../../src/upstream/prometheus-text.js";

// Exposition texts shaped like each engine's real /metrics output (HELP/TYPE lines, histograms,
// several model_name / engine label sets), trimmed to a few families.

/** vLLM v1 (>= 0.10) serving two models: publishes the new and the deprecated KV gauge. */
const VLLM_NEW = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 4.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.62
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.91
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.1
vllm:gpu_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.1
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 41.2
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 530.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 530.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="meta-llama/Llama-3.1-8B-Instruct"} 500.0
`;

/** vLLM < 0.10 (V0 engine): only the old KV gauge, swapped requests, no engine label. */
const VLLM_OLD = `# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",gpu_memory_utilization="0.9"} 1.0
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="mistralai/Mistral-7B-Instruct-v0.3"} 7.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="mistralai/Mistral-7B-Instruct-v0.3"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="mistralai/Mistral-7B-Instruct-v0.3"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="mistralai/Mistral-7B-Instruct-v0.3"} 0.3375
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{model_name="mistralai/Mistral-7B-Instruct-v0.3"} 0.0
`;

/** SGLang --enable-metrics with data-parallel attention: one label set per dp rank. */
const SGLANG = `# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 8.128902e+06
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{dp_rank="0",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 28.0
sglang:num_running_reqs{dp_rank="1",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 30.0
# HELP sglang:num_used_tokens The number of used tokens.
# TYPE sglang:num_used_tokens gauge
sglang:num_used_tokens{dp_rank="0",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 123859.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{dp_rank="0",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 0.28
sglang:token_usage{dp_rank="1",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 0.85
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{dp_rank="0",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 86.5
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{dp_rank="0",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 2.0
sglang:num_queue_reqs{dp_rank="1",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 5.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{dp_rank="0",model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 0.0075
`;

/** TGI's router (Rust metrics-exporter-prometheus): no labels on the gauges, no KV gauge. */
const TGI = `# TYPE tgi_request_count counter
tgi_request_count 1843
# TYPE tgi_request_success counter
tgi_request_success 1840
# TYPE tgi_queue_size gauge
tgi_queue_size 6
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 32
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 61440
# TYPE tgi_request_duration summary
tgi_request_duration{quantile="0.5"} 1.2051
tgi_request_duration{quantile="0.99"} 5.904
tgi_request_duration_sum 2871.3
tgi_request_duration_count 1840
`;

/** llama.cpp server with --metrics, a build that still publishes the KV usage ratio. */
const LLAMACPP = `# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 33065
# HELP llamacpp:prompt_seconds_total Prompt process time
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 235.743
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 7801
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.95
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 15565
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 4
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
`;

/** Newer llama.cpp builds dropped the KV gauges from /metrics. */
const LLAMACPP_NO_KV = `# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
`;

const AT = 12_345;
const signalOf = (engine: Engine, text: string) => extractSignal(engine, parsePrometheusText(text), AT);

describe("engineHasMetrics", () => {
  it("is true for engines that publish Prometheus load gauges, false for ollama and openai", () => {
    expect(engineHasMetrics("vllm")).toBe(true);
    expect(engineHasMetrics("sglang")).toBe(true);
    expect(engineHasMetrics("tgi")).toBe(true);
    expect(engineHasMetrics("llamacpp")).toBe(true);
    expect(engineHasMetrics("ollama")).toBe(false);
    expect(engineHasMetrics("openai")).toBe(false);
  });
});

describe("extractSignal", () => {
  it("vLLM v1: sums waiting/running over models, max of kv_cache_usage_perc (preferred over gpu_)", () => {
    expect(signalOf("vllm", VLLM_NEW)).toEqual({ waiting: 5, running: 16, kvCacheUsage: 0.91, at: AT });
  });

  it("vLLM V0: falls back to gpu_cache_usage_perc", () => {
    expect(signalOf("vllm", VLLM_OLD)).toEqual({ waiting: 0, running: 7, kvCacheUsage: 0.3375, at: AT });
  });

  it("SGLang: num_queue_reqs / num_running_reqs summed over dp ranks, token_usage max", () => {
    expect(signalOf("sglang", SGLANG)).toEqual({
      waiting: 7,
      running: 58,
      kvCacheUsage: 0.85,
      prefixCacheHitRatio: 0.0075,
      at: AT,
    });
  });

  it("vLLM prefix-cache counters: summed over label sets, the ratio taken between two readings", () => {
    const page = (hits: number, queries: number) => `vllm:num_requests_running{model_name="m",engine="0"} 1
vllm:prefix_cache_hits_total{model_name="m",engine="0"} ${hits / 2}
vllm:prefix_cache_hits_total{model_name="m",engine="1"} ${hits / 2}
vllm:prefix_cache_queries_total{model_name="m",engine="0"} ${queries / 2}
vllm:prefix_cache_queries_total{model_name="m",engine="1"} ${queries / 2}
`;
    const first = signalOf("vllm", page(1000, 4000));
    expect(first?.prefixCache).toEqual({ hits: 1000, queries: 4000 });
    expect(first && prefixCacheRatio(undefined, first)).toBeUndefined();
    const second = signalOf("vllm", page(2800, 6000));
    if (!first || !second) throw new Error("no signal");
    // 1,800 of 2,000 prompt tokens looked up since the first reading were cached.
    first.prefixCacheHitRatio = 0.25;
    expect(prefixCacheRatio(first, second)).toBeCloseTo(0.9, 10);
    // No prompt since: the last ratio stands. Counters that went back (a restart): unknown.
    second.prefixCacheHitRatio = 0.9;
    expect(prefixCacheRatio(second, signalOf("vllm", page(2800, 6000)) as LoadSignal)).toBe(0.9);
    expect(prefixCacheRatio(second, signalOf("vllm", page(10, 20)) as LoadSignal)).toBeUndefined();
  });

  it("vLLM's older prefix-cache gauge when the counters are absent", () => {
    const s = signalOf("vllm", "vllm:num_requests_waiting 0\nvllm:gpu_prefix_cache_hit_rate 0.42\n");
    expect(s?.prefixCacheHitRatio).toBe(0.42);
    expect(s?.prefixCache).toBeUndefined();
  });

  it("TGI: tgi_queue_size / tgi_batch_current_size, no KV usage", () => {
    expect(signalOf("tgi", TGI)).toEqual({ waiting: 6, running: 32, kvCacheUsage: undefined, at: AT });
  });

  it("llama.cpp: requests_deferred / requests_processing / kv_cache_usage_ratio", () => {
    expect(signalOf("llamacpp", LLAMACPP)).toEqual({ waiting: 1, running: 4, kvCacheUsage: 0.95, at: AT });
  });

  it("llama.cpp without the KV gauge: kvCacheUsage undefined", () => {
    expect(signalOf("llamacpp", LLAMACPP_NO_KV)).toEqual({
      waiting: 0,
      running: 2,
      kvCacheUsage: undefined,
      at: AT,
    });
  });

  it("is undefined when the engine's metrics are absent (wrong engine configured, or empty page)", () => {
    expect(signalOf("vllm", TGI)).toBeUndefined();
    expect(signalOf("tgi", VLLM_NEW)).toBeUndefined();
    expect(signalOf("sglang", LLAMACPP)).toBeUndefined();
    expect(signalOf("llamacpp", SGLANG)).toBeUndefined();
    expect(signalOf("vllm", "")).toBeUndefined();
    expect(
      signalOf("vllm", "# HELP vllm:num_requests_waiting x\n# TYPE vllm:num_requests_waiting gauge\n"),
    ).toBeUndefined();
  });

  it("is undefined for engines without metrics, whatever the text", () => {
    expect(signalOf("ollama", VLLM_NEW)).toBeUndefined();
    expect(signalOf("openai", VLLM_NEW)).toBeUndefined();
  });

  it("takes a missing count as 0 when another of the engine's metrics is present", () => {
    expect(signalOf("vllm", 'vllm:kv_cache_usage_perc{model_name="m"} 0.5')).toEqual({
      waiting: 0,
      running: 0,
      kvCacheUsage: 0.5,
      at: AT,
    });
  });

  it("ignores NaN and ±Inf samples, and clamps negatives and usage above 1", () => {
    const text = [
      'vllm:num_requests_waiting{model_name="a"} NaN',
      'vllm:num_requests_waiting{model_name="b"} 2',
      'vllm:num_requests_running{model_name="a"} +Inf',
      'vllm:num_requests_running{model_name="b"} -3',
      'vllm:kv_cache_usage_perc{model_name="a"} 1.7',
    ].join("\n");
    expect(signalOf("vllm", text)).toEqual({ waiting: 2, running: 0, kvCacheUsage: 1, at: AT });
    expect(signalOf("tgi", "tgi_queue_size NaN\ntgi_batch_current_size NaN")).toBeUndefined();
  });
});

describe("loadPenalty", () => {
  const reading = (waiting: number, kvCacheUsage: number | undefined, at = 1_000): LoadSignal => ({
    waiting,
    running: 8,
    kvCacheUsage,
    at,
  });

  it("is 1 for an idle engine, whatever its running batch", () => {
    expect(loadPenalty(reading(0, 0), 1_000, 5_000)).toBe(1);
    expect(loadPenalty(reading(0, 0.8), 1_000, 5_000)).toBe(1);
    expect(loadPenalty(reading(0, undefined), 1_000, 5_000)).toBe(1);
  });

  it("adds one per queued request", () => {
    expect(loadPenalty(reading(3, 0.2), 1_000, 5_000)).toBe(4);
  });

  it("ramps from 0 at 80% KV usage to +2 at a full cache", () => {
    expect(loadPenalty(reading(0, 0.9), 1_000, 5_000)).toBeCloseTo(2, 10);
    expect(loadPenalty(reading(0, 1), 1_000, 5_000)).toBeCloseTo(3, 10);
    expect(loadPenalty(reading(2, 0.95), 1_000, 5_000)).toBeCloseTo(4.5, 10);
  });

  it("is UNKNOWN_PENALTY (2) with no reading: unknown is not idle", () => {
    expect(UNKNOWN_PENALTY).toBe(2);
    expect(loadPenalty(undefined, 1_000, 5_000)).toBe(UNKNOWN_PENALTY);
  });

  it("is UNKNOWN_PENALTY once the reading is older than staleAfterMs, not before", () => {
    const r = reading(10, 1, 1_000);
    expect(loadPenalty(r, 6_000, 5_000)).toBeCloseTo(13, 10); // exactly staleAfterMs old: still used
    expect(loadPenalty(r, 6_001, 5_000)).toBe(UNKNOWN_PENALTY);
  });

  it("never drops below 1, even for a nonsensical reading", () => {
    expect(loadPenalty(reading(-5, -1), 1_000, 5_000)).toBe(1);
    expect(loadPenalty(reading(Number.NaN, Number.NaN), 1_000, 5_000)).toBe(1);
  });
});
