/**
 * A small parser for the Prometheus text exposition format (version 0.0.4), enough to read the
 * load gauges inference engines publish at GET /metrics. Written by hand rather than pulled in:
 * prom-client only writes the format, and the grammar is one line per sample.
 *
 *   metric_name [ "{" label_name "=" `"` label_value `"` { "," ... } [ "," ] "}" ] value [ timestamp ]
 *
 * Tolerant by design: a scrape is advice for the balancer, so one odd line (a newer engine's
 * syntax, a truncated body) must not cost the whole reading. Comments (# HELP, # TYPE), blank
 * lines and lines that do not parse are skipped; every other sample is kept. An OpenMetrics
 * exemplar (`# {...}` after the value) is ignored rather than rejecting the sample.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parse Prometheus text exposition (version 0.0.4) into samples; tolerant: skips comments, blank and malformed lines; handles labels with escaped quotes/commas, +Inf/NaN, optional timestamps. */
export function parsePrometheusText(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const raw of text.split("\n")) {
    // Exposition is \n-separated, but a proxy or a Windows build may add \r.
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    const sample = parseLine(line);
    if (sample !== undefined) samples.push(sample);
  }
  return samples;
}

const FLOAT = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
const INF = /^[+-]?inf(?:inity)?$/i;
const NAN = /^[+-]?nan$/i;

/** Go's strconv.ParseFloat spellings that exposition uses: decimals, exponents, ±Inf, NaN. */
function parseValue(token: string): number | undefined {
  if (FLOAT.test(token)) return Number(token);
  if (INF.test(token)) return token.startsWith("-") ? Number.NEGATIVE_INFINITY : Number.POSITIVE_INFINITY;
  if (NAN.test(token)) return Number.NaN;
  return undefined;
}

function isSpace(c: string | undefined): boolean {
  return c === " " || c === "\t";
}

function skipSpaces(line: string, i: number): number {
  let j = i;
  while (isSpace(line[j])) j++;
  return j;
}

function isNameStart(c: string | undefined, allowColon: boolean): boolean {
  if (c === undefined) return false;
  return (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c === "_" || (allowColon && c === ":");
}

function isNameChar(c: string | undefined, allowColon: boolean): boolean {
  return isNameStart(c, allowColon) || (c !== undefined && c >= "0" && c <= "9");
}

/** End index of a metric name (colons allowed) or label name (no colons) starting at i; i when none. */
function scanName(line: string, i: number, allowColon: boolean): number {
  if (!isNameStart(line[i], allowColon)) return i;
  let j = i + 1;
  while (isNameChar(line[j], allowColon)) j++;
  return j;
}

function scanToken(line: string, i: number): number {
  let j = i;
  while (j < line.length && !isSpace(line[j])) j++;
  return j;
}

interface LabelsResult {
  labels: Record<string, string>;
  end: number;
}

/** Parses `{a="x",b="y\"z"}` starting at the `{`; undefined when malformed. */
function parseLabels(line: string, open: number): LabelsResult | undefined {
  const entries: [string, string][] = [];
  const seen = new Set<string>();
  let i = open + 1;
  for (;;) {
    i = skipSpaces(line, i);
    if (line[i] === "}") break; // empty set, or a trailing comma before the brace
    const nameEnd = scanName(line, i, false);
    if (nameEnd === i) return undefined;
    const name = line.slice(i, nameEnd);
    i = skipSpaces(line, nameEnd);
    if (line[i] !== "=") return undefined;
    i = skipSpaces(line, i + 1);
    if (line[i] !== '"') return undefined;
    i++;
    let value = "";
    let closed = false;
    while (i < line.length) {
      const c = line[i];
      if (c === '"') {
        closed = true;
        i++;
        break;
      }
      if (c === "\\" && i + 1 < line.length) {
        const next = line[i + 1];
        // The format defines \\, \" and \n; keep any other escape literally rather than fail.
        value += next === "n" ? "\n" : next === "\\" || next === '"' ? next : `\\${next}`;
        i += 2;
        continue;
      }
      value += c;
      i++;
    }
    if (!closed) return undefined;
    // A repeated label name is invalid exposition: which value would be meant is unknowable.
    if (seen.has(name)) return undefined;
    seen.add(name);
    entries.push([name, value]);
    i = skipSpaces(line, i);
    if (line[i] === ",") {
      i++;
      continue;
    }
    if (line[i] === "}") break;
    return undefined;
  }
  // fromEntries defines own properties, so a label named __proto__ cannot touch the prototype.
  return { labels: Object.fromEntries(entries), end: i + 1 };
}

function parseLine(line: string): Sample | undefined {
  let i = skipSpaces(line, 0);
  if (i >= line.length || line[i] === "#") return undefined;
  const nameEnd = scanName(line, i, true);
  if (nameEnd === i) return undefined;
  const name = line.slice(i, nameEnd);
  i = nameEnd;
  let labels: Record<string, string> = {};
  if (line[i] === "{") {
    const parsed = parseLabels(line, i);
    if (parsed === undefined) return undefined;
    labels = parsed.labels;
    i = parsed.end;
  } else if (!isSpace(line[i])) {
    return undefined; // e.g. "foo-bar 1": the name ran into a character names cannot hold
  }
  i = skipSpaces(line, i);
  const valueEnd = scanToken(line, i);
  const value = parseValue(line.slice(i, valueEnd));
  if (value === undefined) return undefined;
  i = skipSpaces(line, valueEnd);
  if (i < line.length && line[i] !== "#") {
    // Optional timestamp (ms since epoch); read to validate the line, not kept: a gauge's
    // freshness is when we scraped it.
    const tsEnd = scanToken(line, i);
    const ts = parseValue(line.slice(i, tsEnd));
    if (ts === undefined || !Number.isFinite(ts)) return undefined;
    i = skipSpaces(line, tsEnd);
  }
  // Anything left must be an OpenMetrics exemplar; other trailing text means a garbled line.
  if (i < line.length && line[i] !== "#") return undefined;
  return { name, labels, value };
}
