import { describe, expect, it } from "vitest";
import { answerTtl } from "../../../src/jobs/runner.js";
import type { JobRecord } from "../../../src/jobs/types.js";

function record(extra: Partial<JobRecord>): JobRecord {
  return {
    id: "job_1",
    tenant: "t",
    request: { url: "/v1/chat/completions", body: "{}" },
    runAt: 0,
    group: undefined,
    seq: undefined,
    customId: undefined,
    expiresAt: undefined,
    state: "running",
    createdAt: 0,
    startedAt: 0,
    finishedAt: undefined,
    attempts: 1,
    result: undefined,
    ...extra,
  };
}

describe("answerTtl", () => {
  const ttl = 3_600_000;
  it("keeps an async request's answer jobs.ttl from its end", () => {
    expect(answerTtl(record({}), ttl)).toBe(ttl);
    expect(answerTtl(record({ expiresAt: Date.now() + 10 * ttl }), ttl)).toBe(ttl);
  });

  it("keeps a batch line's answer until its batch's window closes, plus jobs.ttl", () => {
    const left = 20 * ttl;
    const kept = answerTtl(record({ group: "batch_1", expiresAt: Date.now() + left }), ttl);
    // Date.now() moved on a little between the two reads: the window left is at most `left`.
    expect(kept).toBeLessThanOrEqual(ttl + left);
    expect(kept).toBeGreaterThan(ttl + left - 60_000);
    expect(answerTtl(record({ group: "batch_1", expiresAt: Date.now() - 1000 }), ttl)).toBe(ttl);
  });
});
