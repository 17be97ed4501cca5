import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfigFile } from "../../../src/config/index.js";

const files = [
  "config/gateway.yaml",
  ...readdirSync("config/examples").map((f) => join("config/examples", f)),
];

/** What an operator exports before starting a shipped config. */
const ENV = { FLOODGATE_ADMIN_TOKEN: "9d2f6a1c0b8e4d7f3a5c9e1b7d0f2a4c", TEAM_A_KEY: "sk-team-a-0123456789" };

describe("shipped configs stay valid", () => {
  it.each(files)("%s", (file) => {
    const config = loadConfigFile(file, ENV);
    expect(Object.keys(config.pools).length).toBeGreaterThan(0);
  });
});

describe("shipped configs hold no usable credentials", () => {
  it.each(files)("%s: without the environment, no key and no admin token", (file) => {
    let config: ReturnType<typeof loadConfigFile>;
    try {
      config = loadConfigFile(file, {});
    } catch (err) {
      // Refused, naming each variable it needs: nothing in the file stands in for them.
      expect(err).toBeInstanceOf(ConfigError);
      for (const issue of (err as ConfigError).issues) expect(issue.message).toMatch(/^environment variable/);
      return;
    }
    expect(config.auth).toBeUndefined();
    expect(config.admin.token).toBeUndefined();
  });

  it("config/gateway.yaml names its variables when they are unset", () => {
    const err = (() => {
      try {
        loadConfigFile("config/gateway.yaml", {});
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ConfigError);
    const message = (err as ConfigError).message;
    expect(message).toContain("admin.token: environment variable FLOODGATE_ADMIN_TOKEN is not set");
    expect(message).toContain("auth.keys[0].key: environment variable TEAM_A_KEY is not set");
  });

  it("docker-compose.yml requires the admin token instead of defaulting it", () => {
    const compose = readFileSync("docker-compose.yml", "utf8");
    expect(compose).toContain("FLOODGATE_ADMIN_TOKEN: ${FLOODGATE_ADMIN_TOKEN:?");
    expect(compose).not.toMatch(/\$\{[A-Z_]+:-/);
  });
});
