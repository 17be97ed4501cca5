/**
 * The surge benchmarks' fleet: three `floodgate sim` backends (8, 8 and 4 slots, fixed seeds,
 * the simulator's default queue and timings), their summed counters, the wait until they are
 * idle, and the capacity C measured against them in the same run. Shared by run.mjs (the load
 * ladder and the mixes) and deferred.mjs (interactive traffic beside a batch).
 */

import { freePort, sleep, startServer, waitReady } from "../lib/processes.mjs";
import { round } from "./analyze.mjs";
import { closedLoop, MAX_TOKENS, MODEL, newClient } from "./load.mjs";

export const FLEET = [
  { name: "sim-a", slots: 8, seed: 11 },
  { name: "sim-b", slots: 8, seed: 12 },
  { name: "sim-c", slots: 4, seed: 13 },
];
/** The simulator's default timing (src/sim/cli.ts), for the report's "ideal" capacity. */
export const SIM_TIMING = { decodeStepMs: 15, decodeMsPerSeq: 0.3 };

/** Starts the fleet from `main` (a build's dist/src/main.js) and waits until each answers. */
export async function startFleet(main, cwd) {
  const fleet = [];
  for (const b of FLEET) {
    const port = await freePort();
    const proc = startServer(
      b.name,
      process.execPath,
      [
        main,
        "sim",
        "--port",
        String(port),
        "--model",
        MODEL,
        "--slots",
        String(b.slots),
        "--seed",
        String(b.seed),
      ],
      cwd,
    );
    fleet.push({ ...b, url: `http://127.0.0.1:${port}`, port, proc });
  }
  for (const b of fleet) await waitReady(b.proc, `${b.url}/health`);
  return fleet;
}

/** The simulators' counters summed (received, completed, rejectedBusy, ...) and their load now. */
export async function fleetStats(fleet) {
  const all = await Promise.all(
    fleet.map(async (b) => (await fetch(`${b.url}/sim/stats`, { signal: AbortSignal.timeout(5000) })).json()),
  );
  const sum = (k) => all.reduce((a, s) => a + s[k], 0);
  return {
    received: sum("received"),
    completed: sum("completed"),
    rejectedBusy: sum("rejectedBusy"),
    aborted: sum("aborted"),
    running: sum("running"),
    busy: sum("running") + sum("waiting"),
  };
}

/** Waits `pauseSeconds`, then until no simulator runs or queues anything (30 s at most). */
export async function drain(fleet, pauseSeconds) {
  await sleep(pauseSeconds * 1000);
  const deadline = Date.now() + 30_000;
  while ((await fleetStats(fleet)).busy > 0 && Date.now() < deadline) await sleep(250);
}

/**
 * C: each simulator with its slot count plus one in flight, all three at once. The one extra
 * waits in the simulator's queue and takes a slot the moment one frees (the simulator hands a
 * freed slot over at once), so no slot idles between a client's requests, which with exactly
 * the slot count lose about a decode step per request and read C ~4% low.
 */
export async function measureCapacity(fleet, { warmupS, windowS }) {
  const dispatcher = newClient();
  const perSim = await Promise.all(
    fleet.map(async (b) => {
      const r = await closedLoop({ dispatcher, url: b.url, concurrency: b.slots + 1, warmupS, windowS });
      return { name: b.name, slots: b.slots, perSecond: round(r.perSecond, 3), failed: r.failed };
    }),
  );
  await dispatcher.close();
  const ideal = FLEET.reduce(
    (a, b) =>
      a + b.slots / ((MAX_TOKENS * (SIM_TIMING.decodeStepMs + SIM_TIMING.decodeMsPerSeq * b.slots)) / 1000),
    0,
  );
  return {
    perSecond: round(
      perSim.reduce((a, s) => a + s.perSecond, 0),
      3,
    ),
    perSim,
    ideal: round(ideal, 3),
    windowSeconds: windowS,
  };
}
