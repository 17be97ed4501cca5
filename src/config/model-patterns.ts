/**
 * Model names and patterns, as a tenant's `models` lists them: a name matches itself, and `*`
 * matches any run of characters (`llama-3.1-*`). Nothing else is special, so a model name with
 * dots or brackets needs no escaping.
 */

/** Whether a model is on the list; every model when there is no list. */
export type ModelMatcher = (model: string) => boolean;

export function modelMatcher(patterns: readonly string[] | undefined): ModelMatcher {
  if (patterns === undefined) return () => true;
  const names = new Set(patterns.filter((p) => !p.includes("*")));
  const globs = patterns.filter((p) => p.includes("*"));
  if (globs.length === 0) return (model) => names.has(model);
  const glob = new RegExp(`^(?:${globs.map(globSource).join("|")})$`, "s");
  return (model) => names.has(model) || glob.test(model);
}

function globSource(pattern: string): string {
  return pattern
    .split("*")
    .map((part) => part.replace(/[\\^$.|?+()[\]{}]/g, "\\$&"))
    .join(".*");
}
