-- wrk script: POST a small non-streamed chat completion; print a JSON summary at the end.
-- run.mjs may set BENCH_BODY (another body, e.g. with "temperature": 0 for the cache-hit run)
-- and BENCH_AUTHORIZATION (an Authorization header, for the runs with an API key); without
-- them every target gets the same request as always.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then wrk.headers["Authorization"] = authorization end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"durationUs":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latencyUs":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
