import { readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfigFile } from "../../../src/config/index.js";

const files = [
  "config/gateway.yaml",
  ...readdirSync("config/examples").map((f) => join("config/examples", f)),
];

describe("shipped configs stay valid", () => {
  it.each(files)("%s", (file) => {
    const config = loadConfigFile(file, { FLOODGATE_ADMIN_TOKEN: "a-long-enough-admin-token" });
    expect(Object.keys(config.pools).length).toBeGreaterThan(0);
  });
});
