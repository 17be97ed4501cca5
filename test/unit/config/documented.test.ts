import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ConfigSchema } from "../../../src/config/schema.js";

/** Every field name the schema knows, found by walking objects, records, arrays and unions. */
function fieldNames(schema: unknown, path: string, out: Map<string, string>): void {
  if (schema === null || typeof schema !== "object") return;
  const s = schema as Record<string, unknown>;
  if (s.properties && typeof s.properties === "object") {
    for (const [name, sub] of Object.entries(s.properties as Record<string, unknown>)) {
      if (!out.has(name)) out.set(name, `${path}.${name}`);
      fieldNames(sub, `${path}.${name}`, out);
    }
  }
  if (s.patternProperties && typeof s.patternProperties === "object") {
    for (const sub of Object.values(s.patternProperties as Record<string, unknown>))
      fieldNames(sub, `${path}.*`, out);
  }
  if (s.items) fieldNames(s.items, `${path}[]`, out);
  for (const key of ["anyOf", "oneOf"]) {
    if (Array.isArray(s[key])) for (const branch of s[key] as unknown[]) fieldNames(branch, path, out);
  }
}

describe("config/gateway.yaml documents every field", () => {
  const text = readFileSync("config/gateway.yaml", "utf8");
  const names = new Map<string, string>();
  fieldNames(ConfigSchema, "", names);

  it.each([...names])("%s (%s)", (name) => {
    expect(text).toMatch(new RegExp(`(^|[\\s{,#])${name}:`, "m"));
  });
});
