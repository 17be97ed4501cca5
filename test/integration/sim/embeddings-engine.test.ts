import { describe, expect, it } from "vitest";
import { startSim } from "../../../src/sim/index.js";
import { eventually } from "../../helpers/eventually.js";
import { call } from "./sim-http.js";

describe("sim embeddings engine over HTTP", () => {
  it("runs one embeddings call at a time, queues the rest, and frees a slot when a client leaves", async () => {
    // Calls that would take a minute: the state is read while they are held, never timed.
    const sim = await startSim({ embedCallMs: 60_000 });
    const controller = new AbortController();
    try {
      const pending = [1, 2, 3].map((i) =>
        call(`${sim.url}/v1/embeddings`, {
          body: { input: [`text ${i}`, "more"] },
          signal: controller.signal,
        }).catch(() => null),
      );
      await eventually(() => sim.stats().running === 1 && sim.stats().waiting === 2, {
        what: "one call running, two waiting",
      });
      expect(sim.stats()).toMatchObject({ embeddingCalls: 3, embeddingInputs: 6 });
      controller.abort();
      await Promise.all(pending);
      await eventually(
        () => sim.stats().running === 0 && sim.stats().waiting === 0 && sim.stats().aborted === 3,
      );
      expect(sim.stats().completed).toBe(0);
    } finally {
      await sim.close();
    }
  });

  it("answers 503 server_busy once the engine's queue is full", async () => {
    const sim = await startSim({ embedCallMs: 60_000, maxQueue: 1 });
    const controller = new AbortController();
    try {
      const held = [1, 2].map(() =>
        call(`${sim.url}/v1/embeddings`, { body: { input: "x" }, signal: controller.signal }).catch(
          () => null,
        ),
      );
      await eventually(() => sim.stats().running === 1 && sim.stats().waiting === 1);
      const refused = await call(`${sim.url}/v1/embeddings`, { body: { input: "x" } });
      expect(refused.status).toBe(503);
      expect(refused.body).toMatchObject({ error: { code: "server_busy" } });
      expect(sim.stats().rejectedBusy).toBe(1);
      controller.abort();
      await Promise.all(held);
    } finally {
      await sim.close();
    }
  });

  it("answers at once with every embeddings cost zero, counting calls and inputs", async () => {
    const sim = await startSim({ embedCallMs: 0, embedPerInputMs: 0, prefillMsPerToken: 0 });
    try {
      const res = await call(`${sim.url}/v1/embeddings`, { body: { input: [[1, 2, 3], [4]] } });
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ usage: { prompt_tokens: 4, total_tokens: 4 } });
      expect(sim.stats()).toMatchObject({ embeddingCalls: 1, embeddingInputs: 2, completed: 1 });
    } finally {
      await sim.close();
    }
  });
});
