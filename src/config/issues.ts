/** A problem found in a config, located by its YAML path (and line, when the source is known). */
export interface ConfigIssue {
  path: (string | number)[];
  message: string;
  hint?: string;
  line?: number;
  column?: number;
}

export function formatPath(path: readonly (string | number)[]): string {
  let out = "";
  for (const part of path) {
    if (typeof part === "number") out += `[${part}]`;
    else out += out === "" ? part : `.${part}`;
  }
  return out === "" ? "(top level)" : out;
}

/** What a valid config allows but its author probably did not mean: reported, never fatal. */
export interface ConfigWarning {
  path: (string | number)[];
  message: string;
  hint?: string;
}

/** `path: message (hint)`, as `floodgate check` prints it and the gateway logs it at start. */
export function formatWarning(warning: ConfigWarning): string {
  const hint = warning.hint ? ` (${warning.hint})` : "";
  return `${formatPath(warning.path)}: ${warning.message}${hint}`;
}

export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly issues: ConfigIssue[],
  ) {
    super(formatIssues(source, issues));
    this.name = "ConfigError";
  }
}

export function formatIssues(source: string, issues: readonly ConfigIssue[]): string {
  const lines = issues.map((issue) => {
    const where = issue.line === undefined ? source : `${source}:${issue.line}:${issue.column ?? 1}`;
    const hint = issue.hint ? ` (${issue.hint})` : "";
    return `  ${where}  ${formatPath(issue.path)}: ${issue.message}${hint}`;
  });
  const count = issues.length === 1 ? "1 error" : `${issues.length} errors`;
  return `invalid config, ${count}:\n${lines.join("\n")}`;
}
