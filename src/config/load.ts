/**
 * YAML text → validated, defaulted, decoded GatewayConfig. Every problem is collected (not just
 * the first) and reported by YAML path and line, with what was expected.
 */
import { readFileSync } from "node:fs";
import { TransformDecode } from "@sinclair/typebox/value";
import { Ajv, type ErrorObject } from "ajv";
import { isMap, isScalar, LineCounter, type Node, parseDocument } from "yaml";
import { extractReferences, interpolateEnv } from "./env.js";
import { ConfigError, type ConfigIssue } from "./issues.js";
import { ConfigSchema, type GatewayConfig } from "./schema.js";
import { checkSemantics } from "./semantics.js";

const ajv = new Ajv({ allErrors: true, useDefaults: true, verbose: true, strict: true, coerceTypes: true });
ajv.addKeyword("x-hint");
const validate = ajv.compile(ConfigSchema);

export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new ConfigError(file, [{ path: [], message: `cannot read the file: ${reason}` }]);
  }
  return parseConfig(text, file, env);
}

export function parseConfig(
  text: string,
  source = "config",
  env: NodeJS.ProcessEnv = process.env,
): GatewayConfig {
  const lineCounter = new LineCounter();
  const extracted = extractReferences(text);
  const doc = parseDocument(extracted.text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    // Later syntax errors are mostly echoes of the first: three are enough to fix the file.
    throw new ConfigError(
      source,
      doc.errors.slice(0, 3).map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return { path: [], message: `YAML: ${e.message.split("\n")[0]}`, line: pos.line, column: pos.col };
      }),
    );
  }
  const issues: ConfigIssue[] = [];
  const raw = interpolateEnv(doc.toJS() ?? {}, extracted.refs, env, issues);
  const explicitWaits = explicitMaxWaits(raw);
  cacheBlocksOn(raw);
  if (!validate(raw)) {
    // A missing variable already explains why its value fails the schema: say it once.
    const envPaths = new Set(issues.map((i) => i.path.join("\u0000")));
    issues.push(...ajvIssues(validate.errors ?? []).filter((i) => !envPaths.has(i.path.join("\u0000"))));
  }
  if (issues.length === 0) {
    // Ajv has just validated `raw` against this very schema: decoding only applies the transforms.
    const decoded = TransformDecode(ConfigSchema, [], raw) as GatewayConfig;
    fitDefaultWaits(decoded, explicitWaits);
    issues.push(...checkSemantics(decoded));
    if (issues.length === 0) return decoded;
  }
  for (const issue of issues) locate(issue, doc.contents, lineCounter);
  issues.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
  throw new ConfigError(source, issues);
}

/**
 * A pool's `cache:` block turns its cache on unless it says `enabled: false`: an operator who
 * wrote `cache: { ttl: 10m }` meant a cache (without the block, it stays off).
 */
function cacheBlocksOn(raw: unknown): void {
  const pools = (raw as { pools?: unknown } | null)?.pools;
  if (pools === null || typeof pools !== "object") return;
  for (const pool of Object.values(pools)) {
    const cache = (pool as { cache?: unknown } | null)?.cache;
    if (cache !== null && typeof cache === "object" && !Array.isArray(cache) && !("enabled" in cache)) {
      (cache as { enabled?: boolean }).enabled = true;
    }
  }
}

/** The admission bands whose maxWait the file sets, as "pool/band" (before defaults fill the rest). */
function explicitMaxWaits(raw: unknown): Set<string> {
  const out = new Set<string>();
  const pools = (raw as { pools?: unknown } | null)?.pools;
  if (pools === null || typeof pools !== "object") return out;
  for (const [name, pool] of Object.entries(pools)) {
    const bands = (pool as { admission?: { bands?: unknown } } | null)?.admission?.bands;
    if (bands === null || typeof bands !== "object") continue;
    for (const [band, settings] of Object.entries(bands)) {
      if ((settings as { maxWait?: unknown } | null)?.maxWait !== undefined) out.add(`${name}/${band}`);
    }
  }
  return out;
}

/**
 * A band's default maxWait that does not fit below its pool's total timeout (a pool configured
 * with a short one) becomes half of it: a waiting request keeps half its time to be served. A
 * maxWait the file sets is left as written, for the semantic check to judge.
 */
function fitDefaultWaits(config: GatewayConfig, explicit: Set<string>): void {
  for (const [name, pool] of Object.entries(config.pools)) {
    const total = pool.timeouts.total;
    for (const [band, settings] of Object.entries(pool.admission.bands)) {
      if (!explicit.has(`${name}/${band}`) && settings.maxWait >= total)
        settings.maxWait = Math.floor(total / 2);
    }
  }
}

function pointerToPath(pointer: string): (string | number)[] {
  if (pointer === "") return [];
  return pointer
    .slice(1)
    .split("/")
    .map((part) => part.replace(/~1/g, "/").replace(/~0/g, "~"))
    .map((part) => (/^\d+$/.test(part) ? Number(part) : part));
}

function ajvIssues(errors: ErrorObject[]): ConfigIssue[] {
  const { kept, unions } = collapseUnions(errors);
  const seen = new Set<string>();
  const out: ConfigIssue[] = [];
  for (const e of kept) {
    const issue = unions.has(e) ? describeUnion(e) : describe(e);
    const key = `${issue.path.join("\u0000")}|${issue.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(issue);
  }
  return out;
}

/**
 * Ajv reports a value that fits no branch of a union (anyOf, oneOf) once per branch and once
 * more for the union. When the value has the shape of one branch only (an object where a limit
 * or a list of limits is accepted), that branch's errors are the real ones: the others go. When
 * it fits none, or several, the union's error alone stays, described as one line.
 */
function collapseUnions(errors: ErrorObject[]): { kept: ErrorObject[]; unions: Set<ErrorObject> } {
  const dropped = new Set<ErrorObject>();
  const unions = new Set<ErrorObject>();
  const outermostFirst = errors
    .filter((e) => e.keyword === "anyOf" || e.keyword === "oneOf")
    .sort((a, b) => a.schemaPath.length - b.schemaPath.length);
  for (const union of outermostFirst) {
    if (dropped.has(union)) continue;
    const prefix = `${union.schemaPath}/`;
    const branches = new Map<string, ErrorObject[]>();
    // One schema path serves every entry of a record or list: the value's path tells them apart.
    const within = (e: ErrorObject) =>
      e.instancePath === union.instancePath || e.instancePath.startsWith(`${union.instancePath}/`);
    for (const e of errors) {
      if (!e.schemaPath.startsWith(prefix) || !within(e)) continue;
      const branch = e.schemaPath.slice(prefix.length).split("/")[0] ?? "";
      branches.set(branch, [...(branches.get(branch) ?? []), e]);
    }
    const shapeMismatch = (errs: ErrorObject[]) =>
      errs.some((e) => e.keyword === "type" && e.instancePath === union.instancePath);
    const fitting = [...branches.values()].filter((errs) => !shapeMismatch(errs));
    const [only] = fitting;
    if (fitting.length === 1 && only) {
      dropped.add(union);
      for (const errs of branches.values()) if (errs !== only) for (const e of errs) dropped.add(e);
    } else {
      unions.add(union);
      for (const errs of branches.values()) for (const e of errs) dropped.add(e);
    }
  }
  return { kept: errors.filter((e) => !dropped.has(e)), unions };
}

/** One line for a value no branch of a union accepts: the value, and what each branch takes. */
function describeUnion(e: ErrorObject): ConfigIssue {
  const schema = (e.parentSchema ?? {}) as Record<string, unknown>;
  const branches = Array.isArray(e.schema) ? (e.schema as Record<string, unknown>[]) : [];
  const hint =
    typeof schema["x-hint"] === "string" ? schema["x-hint"] : branches.map(describeShape).join(" or ");
  return {
    path: pointerToPath(e.instancePath),
    message: `${JSON.stringify(e.data)} is not valid`,
    hint: `expected ${hint}`,
  };
}

function describeShape(schema: Record<string, unknown>): string {
  if (typeof schema["x-hint"] === "string") return schema["x-hint"];
  switch (schema.type) {
    case "object":
      return "a mapping";
    case "array":
      return "a list";
    case "string":
      return Array.isArray(schema.enum) ? `one of ${schema.enum.join(", ")}` : "a string";
    case "number":
    case "integer":
      return "a number";
    case "boolean":
      return "true or false";
    default:
      return "a value of another shape";
  }
}

function describe(e: ErrorObject): ConfigIssue {
  const path = pointerToPath(e.instancePath);
  const schema = (e.parentSchema ?? {}) as Record<string, unknown>;
  const hint = typeof schema["x-hint"] === "string" ? schema["x-hint"] : undefined;
  switch (e.keyword) {
    case "additionalProperties": {
      const field = String((e.params as { additionalProperty: string }).additionalProperty);
      const known = Object.keys((schema.properties as Record<string, unknown> | undefined) ?? {});
      if (schema.patternProperties) {
        return {
          path: [...path, field],
          message: `"${field}" is not a valid name`,
          hint: "names use letters, digits, '.', '_' or '-', at most 64",
        };
      }
      const guess = closest(field, known);
      return {
        path: [...path, field],
        message: "unknown field",
        hint: guess ? `did you mean "${guess}"?` : `allowed here: ${known.join(", ")}`,
      };
    }
    case "required": {
      const field = String((e.params as { missingProperty: string }).missingProperty);
      return { path: [...path, field], message: "is required" };
    }
    case "enum": {
      const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
      const message = `must be one of: ${allowed.join(", ")}; got ${JSON.stringify(e.data)}`;
      return hint ? { path, message, hint } : { path, message };
    }
    case "pattern":
      return {
        path,
        message: `${JSON.stringify(e.data)} is not valid`,
        hint: hint ? `expected ${hint}` : `expected to match ${String(schema.pattern)}`,
      };
    case "type":
      if (hint) return { path, message: `${JSON.stringify(e.data)} is not valid`, hint: `expected ${hint}` };
      return { path, message: `${e.message ?? "has the wrong type"}, got ${JSON.stringify(e.data)}` };
    default:
      return { path, message: `${e.message ?? "is not valid"}${hint ? `, expected ${hint}` : ""}` };
  }
}

function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(word.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost);
    }
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

/** Find the deepest YAML node that exists along the issue's path, for a line number. */
function locate(issue: ConfigIssue, root: unknown, lineCounter: LineCounter): void {
  if (issue.line !== undefined) return;
  let node: unknown = root;
  let offset: number | undefined = rangeStart(node);
  for (const part of issue.path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(part));
      if (!pair) break;
      offset = rangeStart(pair.key) ?? offset;
      node = pair.value;
      if (pair.value !== null && isScalar(pair.value)) offset = rangeStart(pair.value) ?? offset;
    } else if (node !== null && typeof node === "object" && "items" in node && Array.isArray(node.items)) {
      const item: unknown = node.items[Number(part)];
      if (item === undefined) break;
      node = item;
      offset = rangeStart(item) ?? offset;
    } else {
      break;
    }
  }
  if (offset !== undefined) {
    const pos = lineCounter.linePos(offset);
    issue.line = pos.line;
    issue.column = pos.col;
  }
}

function rangeStart(node: unknown): number | undefined {
  const range = (node as Node | null | undefined)?.range;
  return range ? range[0] : undefined;
}
