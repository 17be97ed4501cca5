import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../../src/config/index.js";

const POOL = "models: [m], backends: [{ url: http://127.0.0.1:9000 }]";

function issuesOf(yaml: string): ConfigError {
  try {
    parseConfig(yaml, "gateway.yaml", {});
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error("config was accepted");
}

describe("pools.*.microBatch", () => {
  it("is off by default, with documented limits", () => {
    const c = parseConfig(`pools: { x: { ${POOL} } }`, "x", {});
    expect(c.pools.x?.microBatch).toEqual({
      enabled: false,
      maxBatchInputs: 64,
      maxBatchTokens: 8192,
      batchWindow: 5,
    });
    const on = parseConfig(
      `pools: { x: { ${POOL}, microBatch: { enabled: true, maxBatchInputs: 16, batchWindow: 0ms } } }`,
      "x",
      {},
    );
    expect(on.pools.x?.microBatch).toMatchObject({ enabled: true, maxBatchInputs: 16, batchWindow: 0 });
  });

  it("names the YAML path of a bad value and what would do", () => {
    const m = issuesOf(
      `pools: { x: { ${POOL}, microBatch: { maxBatchInputs: 0, maxBatchTokens: 1.5, batchWindow: 5, size: 3 } } }`,
    ).message;
    expect(m).toContain("pools.x.microBatch.maxBatchInputs: must be >= 1");
    expect(m).toContain("pools.x.microBatch.maxBatchTokens: must be integer, got 1.5");
    expect(m).toContain(
      'pools.x.microBatch.batchWindow: "5" is not valid (expected a duration such as 250ms',
    );
    expect(m).toContain(
      "pools.x.microBatch.size: unknown field (allowed here: enabled, maxBatchInputs, maxBatchTokens, batchWindow)",
    );
  });

  it("rejects a window as long as the interactive band's wait for a slot", () => {
    const m = issuesOf(`pools: { x: { ${POOL}, microBatch: { enabled: true, batchWindow: 2s } } }`).message;
    expect(m).toContain(
      "pools.x.microBatch.batchWindow: 2s is not below the interactive band's maxWait (1500ms)",
    );
  });
});
