/**
 * `${NAME}` and `${NAME:-default}` for secrets, so they never sit in the file; `$${` is a literal
 * `${`. References are swapped for plain placeholder words before YAML parsing (so the DESIGN's
 * unquoted `{ key: ${TEAM_KEY} }` is valid YAML) and resolved afterwards inside each parsed
 * scalar: a value can never inject YAML structure, and a missing variable is reported at its path.
 */
import type { ConfigIssue } from "./issues.js";

interface Reference {
  name: string | undefined;
  fallback: string | undefined;
}

const REFERENCE = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}\n]*))?\}/g;
const PLACEHOLDER = /FLOODGATEENVREF(\d+)X/g;

export interface Extracted {
  text: string;
  refs: Reference[];
}

export function extractReferences(text: string): Extracted {
  const refs: Reference[] = [];
  const replaced = text.replace(
    REFERENCE,
    (_whole, name: string | undefined, fallback: string | undefined) => {
      refs.push({ name, fallback });
      return `FLOODGATEENVREF${refs.length - 1}X`;
    },
  );
  return { text: replaced, refs };
}

export function interpolateEnv(
  value: unknown,
  refs: readonly Reference[],
  env: NodeJS.ProcessEnv,
  issues: ConfigIssue[],
  path: (string | number)[] = [],
): unknown {
  if (typeof value === "string") return resolveString(value, refs, env, issues, path);
  if (Array.isArray(value))
    return value.map((item, i) => interpolateEnv(item, refs, env, issues, [...path, i]));
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) {
      out[resolveString(key, refs, env, issues, path)] = interpolateEnv(item, refs, env, issues, [
        ...path,
        key,
      ]);
    }
    return out;
  }
  return value;
}

function resolveString(
  text: string,
  refs: readonly Reference[],
  env: NodeJS.ProcessEnv,
  issues: ConfigIssue[],
  path: (string | number)[],
): string {
  if (!text.includes("FLOODGATEENVREF")) return text;
  return text.replace(PLACEHOLDER, (whole, index: string) => {
    const ref = refs[Number(index)];
    if (!ref) return whole;
    if (ref.name === undefined) return "${";
    const found = env[ref.name];
    if (found !== undefined && found !== "") return found;
    if (ref.fallback !== undefined) return ref.fallback;
    issues.push({
      path,
      message: `environment variable ${ref.name} is not set`,
      hint: `export ${ref.name}=... before starting, or write \${${ref.name}:-default}`,
    });
    return "";
  });
}
