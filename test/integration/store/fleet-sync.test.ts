/** The shared-slots script (FLEET_SYNC_LUA) against a real redis-server. */
import { afterAll, beforeAll, expect, it } from "vitest";
import { createRedisStore, type RedisStore } from "../../../src/store/redis-store.js";
import type { FleetState } from "../../../src/store/types.js";
import { eventually } from "../../helpers/eventually.js";
import { startRedis, type TestRedis } from "../../helpers/redis.js";
import { redisStoreConfig } from "./store-config.js";

let redis: TestRedis;
let store: RedisStore;
beforeAll(async () => {
  redis = await startRedis();
  store = createRedisStore(redisStoreConfig({ url: redis.url, keyPrefix: "fleet-test:" }));
});
afterAll(async () => {
  await store.close();
  await redis.stop();
});

const want = (claim: number, inFlight: number): FleetState => ({
  d: [0, 0, 0],
  b: { gpu: [claim, inFlight] },
});
const SLOTS = { gpu: 4 };

it("claims never sum above the slots; a shrinking claim counts what runs; a silent replica lapses", async () => {
  const lease = 60_000;
  expect((await store.syncFleet("fleet:p", "a", want(4, 0), SLOTS, lease)).granted.gpu).toBe(4);
  // b asks for everything: there is no room.
  const b1 = await store.syncFleet("fleet:p", "b", want(4, 0), SLOTS, lease);
  expect(b1.granted.gpu).toBe(0);
  expect(b1.others).toHaveLength(1);
  // a gives back two but runs three: it is granted two, recorded as three.
  expect((await store.syncFleet("fleet:p", "a", want(2, 3), SLOTS, lease)).granted.gpu).toBe(2);
  expect((await store.syncFleet("fleet:p", "b", want(4, 0), SLOTS, lease)).granted.gpu).toBe(1);
  // a's third request ends: b may grow into its slot.
  await store.syncFleet("fleet:p", "a", want(2, 2), SLOTS, lease);
  expect((await store.syncFleet("fleet:p", "b", want(4, 0), SLOTS, lease)).granted.gpu).toBe(2);

  // A replica that stops syncing lapses after its lease; its claims return to the fleet.
  await store.syncFleet("fleet:q", "dead", want(4, 4), SLOTS, 200);
  expect((await store.syncFleet("fleet:q", "live", want(4, 0), SLOTS, lease)).granted.gpu).toBe(0);
  await eventually(
    async () => (await store.syncFleet("fleet:q", "live", want(4, 0), SLOTS, lease)).granted.gpu === 4,
    { what: "the dead replica's claim to lapse" },
  );
  expect((await store.syncFleet("fleet:q", "live", want(4, 0), SLOTS, lease)).others).toEqual([]);
});
