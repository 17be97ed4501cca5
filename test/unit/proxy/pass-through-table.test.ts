import { describe, expect, it } from "vitest";
import type { RouteConfig } from "../../../src/config/index.js";
import { PassThroughTable } from "../../../src/proxy/pass-through.js";
import type { GatewayPath } from "../../../src/request-path.js";

const route = (prefix: string): RouteConfig => ({ prefix, pool: "p", stripPrefix: false, fallback: true });
const path = {} as GatewayPath;

describe("PassThroughTable", () => {
  const table = new PassThroughTable(
    new Map([
      [route("/tokenize"), path],
      [route("/tokenize/v2/"), path],
      [route("/metrics-extra"), path],
    ]),
  );

  it.each([
    ["/tokenize", "/tokenize"],
    ["/tokenize?x=1", "/tokenize"],
    ["/tokenize/a/b", "/tokenize"],
    ["/tokenize/v2/x", "/tokenize/v2"],
    ["/tokenizer", undefined],
    ["/metrics", undefined],
    ["/", undefined],
  ])("%s → %s (the longest prefix that contains it)", (url, prefix) => {
    expect(table.match(url)?.prefix).toBe(prefix);
  });

  it("an empty prefix takes everything the others do not", () => {
    const all = new PassThroughTable(
      new Map([
        [route("/"), path],
        [route("/tokenize"), path],
      ]),
    );
    expect(all.match("/anything")?.prefix).toBe("");
    expect(all.match("/tokenize/x")?.prefix).toBe("/tokenize");
  });
});
