/** MemoryJobQueue on a fake clock: the JobQueue contract, and what only the memory queue has. */
import { describe, expect, it } from "vitest";
import { createJobQueue } from "../../../src/jobs/index.js";
import { MemoryJobQueue } from "../../../src/jobs/memory-queue.js";
import { describeJobQueue, job } from "./queue-contract.js";

function fakeClock() {
  let now = 1_700_000_000_000;
  return {
    now: () => now,
    pass: async (ms: number) => {
      now += ms;
    },
  };
}

describeJobQueue("MemoryJobQueue", async () => {
  const clock = fakeClock();
  const short = 1000;
  const queue = new MemoryJobQueue({ now: clock.now, expiredTtlMs: short });
  return { queue, peer: queue, now: clock.now, pass: clock.pass, short, close: () => queue.close() };
});

describe("MemoryJobQueue", () => {
  it("hands out copies: changing a record changes nothing in the queue", async () => {
    const queue = new MemoryJobQueue({ now: fakeClock().now });
    await queue.enqueue([job("j")], 1);
    const [claimed] = await queue.claim("A", 1000, 1);
    if (claimed === undefined) throw new Error("nothing claimed");
    claimed.state = "succeeded";
    claimed.request.body = "changed";
    expect(await queue.get("j")).toMatchObject({ state: "running", request: { body: '{"n":"j"}' } });
  });

  it("is what createJobQueue makes for store: memory", () => {
    const queue = createJobQueue({ type: "memory" } as Parameters<typeof createJobQueue>[0]);
    expect(queue).toBeInstanceOf(MemoryJobQueue);
  });
});
