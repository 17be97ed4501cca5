/** The `jobs` config section: its defaults, and errors that name the YAML path and the fix. */
import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../../src/config/index.js";
import { idleLookMs } from "../../../src/jobs/runner.js";

const MINIMAL = "pools: { x: { models: [m], backends: [{ url: http://127.0.0.1:9000 }] } }";

function errorOf(yaml: string): string {
  try {
    parseConfig(yaml, "gateway.yaml", {});
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error("config was accepted");
}

describe("jobs config", () => {
  it("is on by default, with the documented defaults", () => {
    const c = parseConfig(MINIMAL, "x", {});
    expect(c.jobs).toEqual({
      enabled: true,
      band: "batch",
      maxPerTenant: 1000,
      ttl: 24 * 3_600_000,
      lease: 30_000,
      concurrency: 64,
      pollInterval: 250,
    });
  });

  it("an idle replica woken by Redis looks again after 8 polls, at most lease / 3, at least one poll", () => {
    expect(idleLookMs(parseConfig(MINIMAL, "x", {}).jobs)).toBe(2000);
    expect(idleLookMs({ pollInterval: 50, lease: 2000 })).toBe(400);
    expect(idleLookMs({ pollInterval: 250, lease: 1500 })).toBe(500);
    expect(idleLookMs({ pollInterval: 1000, lease: 1500 })).toBe(1000);
  });

  it("takes durations with units", () => {
    const c = parseConfig(
      `${MINIMAL}\njobs: { band: background, ttl: 1h, lease: 2s, pollInterval: 50ms, concurrency: 4, maxPerTenant: 3 }`,
      "x",
      {},
    );
    expect(c.jobs).toMatchObject({
      band: "background",
      ttl: 3_600_000,
      lease: 2000,
      pollInterval: 50,
      concurrency: 4,
      maxPerTenant: 3,
    });
  });

  it("names the path of a bad value", () => {
    expect(errorOf(`${MINIMAL}\njobs: { lease: 30 }`)).toContain("jobs.lease");
    expect(errorOf(`${MINIMAL}\njobs: { band: urgent }`)).toContain("jobs.band");
    expect(errorOf(`${MINIMAL}\njobs: { concurrency: 0 }`)).toContain("jobs.concurrency");
    expect(errorOf(`${MINIMAL}\njobs: { maxPerTenant: -1 }`)).toContain("jobs.maxPerTenant");
    expect(errorOf(`${MINIMAL}\njobs: { lifetime: 1h }`)).toContain("jobs");
  });

  it("refuses a lease too short to renew and a poll that would keep the store busy, with the fix", () => {
    const lease = errorOf(`${MINIMAL}\njobs: { lease: 500ms }`);
    expect(lease).toContain("jobs.lease: a lease of 500ms is too short to be renewed reliably");
    expect(lease).toContain("make jobs.lease 1s or more");
    const poll = errorOf(`${MINIMAL}\njobs: { pollInterval: 1ms }`);
    expect(poll).toContain("jobs.pollInterval");
    expect(poll).toContain("10ms or more");
  });
});
