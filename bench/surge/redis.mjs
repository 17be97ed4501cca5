/**
 * The three-replica target's Redis: a redis-server on a free port, spoken to over a bare RESP
 * socket (a fresh connection per call: only a few calls per run), and its INFO commandstats
 * turned into round trips.
 */
import { connect } from "node:net";

/** One command to a Redis server over RESP; resolves with a simple, integer or bulk reply. */
export function redisCommand(port, ...argv) {
  return new Promise((resolvePromise, reject) => {
    const socket = connect({ port, host: "127.0.0.1" });
    let buffer = Buffer.alloc(0);
    const fail = (err) => {
      socket.destroy();
      reject(err);
    };
    socket.setTimeout(2000, () => fail(new Error(`redis ${argv[0]}: no answer within 2 s`)));
    socket.on("error", fail);
    socket.on("connect", () => {
      socket.write(`*${argv.length}\r\n${argv.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join("")}`);
    });
    socket.on("data", (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      const end = buffer.indexOf("\r\n");
      if (end === -1) return;
      const head = buffer.toString("utf8", 0, end);
      let value = head.slice(1);
      if (head[0] === "-") return fail(new Error(`redis ${argv[0]}: ${value}`));
      if (head[0] === ":") value = Number(value);
      if (head[0] === "$") {
        const length = Number(value);
        if (length >= 0 && buffer.length < end + 2 + length) return; // more to come
        value = length < 0 ? null : buffer.toString("utf8", end + 2, end + 2 + length);
      }
      socket.destroy();
      resolvePromise(value);
    });
  });
}

/** The arguments of a redis-server that keeps nothing on disk and listens on loopback only. */
export function redisArgs(port, dir) {
  return ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].concat([
    "--dir",
    dir,
    "--daemonize",
    "no",
  ]);
}

/** Waits until the server answers PING (10 s at most). */
export async function waitRedis(proc, port, tail) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (proc.exited) throw new Error(`redis-server exited (${proc.exitCode}):\n${tail(proc.logPath)}`);
    try {
      if ((await redisCommand(port, "PING")) === "PONG") return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`redis-server not answering PING on port ${port} after 10 s:\n${tail(proc.logPath)}`);
}

/** Calls per command from INFO commandstats (the commands scripts run are counted too). */
export async function commandStats(port) {
  const info = await redisCommand(port, "INFO", "commandstats");
  const out = {};
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+).*?failed_calls=(\d+)/gm)) {
    out[m[1]] = { calls: Number(m[2]), failed: Number(m[3]) };
  }
  return out;
}

/**
 * The commands floodgate's scripts run inside Redis (src/store/lua-scripts.ts, the jobs
 * queue's scripts in src/jobs): commandstats counts them, but they cost the client no round
 * trip. GET is also sent directly (a cache blob) and counted here all the same; ZREM, sent
 * directly to release a lease, is left out, so a script's ZREM counts as a round trip (the
 * figure errs high).
 */
export const INSIDE_SCRIPTS = new Set([
  "time",
  "exists",
  "hgetall",
  "hget",
  "hdel",
  "hincrby",
  "hset",
  "hmget",
  "pexpire",
  "persist",
  "get",
  "del",
  "zadd",
  "zcard",
  "zcount",
  "zrange",
  "zrangebyscore",
  "zremrangebyscore",
  "zscore",
]);

/**
 * Round trips between two commandstats readings: every script call (EVALSHA, and EVAL for the
 * first call on a connection) and every other command a client sent, INFO left out (the
 * harness's own readings). `byCommand` keeps what they were.
 */
export function roundTrips(before, after) {
  const out = { scripts: 0, other: 0, failed: 0, byCommand: {} };
  for (const [name, { calls, failed }] of Object.entries(after)) {
    const n = calls - (before[name]?.calls ?? 0);
    const f = failed - (before[name]?.failed ?? 0);
    if (n === 0 || name === "info" || INSIDE_SCRIPTS.has(name)) continue;
    out.byCommand[name] = n;
    out.failed += f;
    if (name === "evalsha" || name === "eval") out.scripts += n;
    else out.other += n;
  }
  out.total = out.scripts + out.other;
  return out;
}
