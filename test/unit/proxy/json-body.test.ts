import { describe, expect, it } from "vitest";
import { depthExceeds, jsonBodyProblem } from "../../../src/proxy/json-body.js";

const nested = (depth: number, open = "[", close = "]") => `${open.repeat(depth)}${close.repeat(depth)}`;

describe("jsonBodyProblem", () => {
  it.each([
    ["flat object", '{"a":1,"b":[1,2,3]}', 2, false],
    ["at the limit", nested(10), 10, false],
    ["one past the limit", nested(11), 10, true],
    ["objects count too", `${'{"a":'.repeat(11)}1${"}".repeat(11)}`, 10, true],
    ["brackets inside strings are text", `{"s":"${"[".repeat(50)}"}`, 2, false],
    ["escaped quotes keep the string open", `{"s":"\\"${"[".repeat(50)}\\\\"}`, 2, false],
    ["siblings do not add up", `[${Array(40).fill("[1]").join(",")}]`, 2, false],
  ])("%s", (_name, text, limit, exceeds) => {
    expect(depthExceeds(Buffer.from(text), limit)).toBe(exceeds);
  });

  it("a 200 KB body nested 100,000 deep is refused in one pass", () => {
    const body = Buffer.from(`{"model":"m","messages":${nested(100_000)}}`);
    expect(jsonBodyProblem(body, 64)).toMatch(/nested deeper than 64/);
  });

  it("refuses invalid UTF-8, takes valid multi-byte text", () => {
    expect(jsonBodyProblem(Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d]), 64)).toMatch(/UTF-8/);
    expect(jsonBodyProblem(Buffer.from('{"a":"héllo 😀"}'), 64)).toBeUndefined();
  });
});
