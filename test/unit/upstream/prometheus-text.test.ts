import { describe, expect, it } from "vitest";
import { parsePrometheusText } from "../../../src/upstream/prometheus-text.js";

describe("parsePrometheusText", () => {
  it("reads plain samples, labelled samples, HELP/TYPE comments and blank lines", () => {
    const text = [
      "# HELP http_requests_total The total number of HTTP requests.",
      "# TYPE http_requests_total counter",
      'http_requests_total{method="post",code="200"} 1027 1395066363000',
      'http_requests_total{method="post",code="400"}    3 1395066363000',
      "",
      "   ",
      "# A free-form comment",
      "process_open_fds 12",
      "",
    ].join("\n");
    expect(parsePrometheusText(text)).toEqual([
      { name: "http_requests_total", labels: { method: "post", code: "200" }, value: 1027 },
      { name: "http_requests_total", labels: { method: "post", code: "400" }, value: 3 },
      { name: "process_open_fds", labels: {}, value: 12 },
    ]);
  });

  it("keeps colons in metric names (vllm:, sglang:, llamacpp: recording-rule style names)", () => {
    const [s] = parsePrometheusText('vllm:num_requests_waiting{model_name="m"} 4.0\n');
    expect(s).toEqual({ name: "vllm:num_requests_waiting", labels: { model_name: "m" }, value: 4 });
  });

  it('unescapes \\" \\\\ and \\n in label values, and keeps commas, braces and = inside quotes', () => {
    const text = String.raw`msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\"",odd="a,b}c=d{"} 1.458255915e9`;
    expect(parsePrometheusText(text)).toEqual([
      {
        name: "msdos_file_access_time_seconds",
        labels: {
          path: "C:\\DIR\\FILE.TXT",
          error: 'Cannot find file:\n"FILE.TXT"',
          odd: "a,b}c=d{",
        },
        value: 1.458255915e9,
      },
    ]);
  });

  it('reads +Inf, -Inf and NaN values, and le="+Inf" bucket labels', () => {
    const samples = parsePrometheusText(
      ['rpc_duration_seconds_bucket{le="+Inf"} +Inf', "neg -Inf", "unknown NaN", "also_inf Inf"].join("\n"),
    );
    expect(samples.map((s) => s.value)).toEqual([
      Number.POSITIVE_INFINITY,
      Number.NEGATIVE_INFINITY,
      Number.NaN,
      Number.POSITIVE_INFINITY,
    ]);
    expect(samples[0]?.labels).toEqual({ le: "+Inf" });
  });

  it("reads exponents, signs and leading dots; accepts and drops timestamps (negative too)", () => {
    const samples = parsePrometheusText(
      ["a 1e3", "b -2.5E-2 -1395066363000", "c .5", "d +7 1700000000000", "e 3."].join("\n"),
    );
    expect(samples.map((s) => [s.name, s.value])).toEqual([
      ["a", 1000],
      ["b", -0.025],
      ["c", 0.5],
      ["d", 7],
      ["e", 3],
    ]);
  });

  it("tolerates CRLF line endings, tabs, spaces around labels, a trailing comma and empty braces", () => {
    const text = 'x{ a = "1" , b="2", } 5\r\ny{} 6\r\nz\t7\t123\r\n';
    expect(parsePrometheusText(text)).toEqual([
      { name: "x", labels: { a: "1", b: "2" }, value: 5 },
      { name: "y", labels: {}, value: 6 },
      { name: "z", labels: {}, value: 7 },
    ]);
  });

  it("ignores an OpenMetrics exemplar after the value", () => {
    const [s] = parsePrometheusText('foo_bucket{le="0.5"} 3 # {trace_id="abc"} 0.4 1.6e9');
    expect(s).toEqual({ name: "foo_bucket", labels: { le: "0.5" }, value: 3 });
  });

  it("skips garbage and malformed lines but keeps the good ones around them", () => {
    const text = [
      "good_before 1",
      "garbage line here",
      "no_value",
      'no_value_labels{a="b"}',
      "bad_value abc",
      'unterminated{a="b} 1',
      "missing_quotes{a=b} 1",
      '{a="b"} 1',
      "9starts_with_digit 1",
      "dash-name 1",
      'dup{a="1",a="2"} 1',
      "bad_ts 1 soon",
      "too_many 1 2 3",
      'no_comma{a="1" b="2"} 1',
      "\u0000\u0001binary",
      "good_after 2",
    ].join("\n");
    expect(parsePrometheusText(text)).toEqual([
      { name: "good_before", labels: {}, value: 1 },
      { name: "good_after", labels: {}, value: 2 },
    ]);
  });

  it("treats a label named __proto__ as a plain label", () => {
    const [s] = parsePrometheusText('m{__proto__="x"} 1');
    expect(Object.getPrototypeOf(s?.labels)).toBe(Object.prototype);
    expect(Object.keys(s?.labels ?? {})).toEqual(["__proto__"]);
  });

  it("returns no samples for an empty or comment-only body", () => {
    expect(parsePrometheusText("")).toEqual([]);
    expect(parsePrometheusText("# HELP x y\n# TYPE x gauge\n")).toEqual([]);
  });
});
