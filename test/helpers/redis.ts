/**
 * Real redis-server processes for tests: one server, or a Redis Cluster of masters, on free
 * loopback ports, with no persistence, in temp dirs removed on stop. Never the machine's own
 * Redis on 6379. Every test file that starts one stops it in afterAll.
 *
 * redis-server cannot listen on port 0 and report the port, so a port is probed free first; on
 * a busy machine another process may take it before the server binds. The server then exits
 * ("Address already in use"), or a stranger answers on that port: either way the start is
 * retried on a fresh port.
 */

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./ports.js";

const REDIS_SERVER = "/usr/bin/redis-server";
const REDIS_CLI = "/usr/bin/redis-cli";

export interface TestRedis {
  url: string;
  port: number;
  /** SIGTERM, wait for exit, remove the temp dir. */
  stop(): Promise<void>;
  /** SIGKILL: the server dies without a word, as in a crash. */
  kill(): Promise<void>;
  /** Starts it again on the same port (after kill or stop), empty. */
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT: a server that accepts bytes and never answers (hung, or partitioned). */
  pause(): void;
  resume(): void;
  cli(...args: string[]): Promise<string>;
}

export interface TestSentinel {
  /** host:port, as the store config writes sentinels. */
  address: string;
  stop(): Promise<void>;
}

export interface TestRedisCluster {
  nodes: string[];
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A port the OS just handed out, free again once the probe closes. */
async function isFree(port: number): Promise<boolean> {
  try {
    await freePort(port);
    return true;
  } catch {
    return false;
  }
}

/** One PING over raw TCP: no client library, so a half-started server cannot confuse it. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once("error", () => done(false));
    socket.once("data", (data) => done(data.toString().startsWith("+PONG")));
    socket.connect(port, "127.0.0.1", () => socket.write("PING\r\n"));
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check()) return;
    await sleep(25);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function cli(port: number, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI, ["-h", "127.0.0.1", "-p", String(port), ...args], (error, stdout, stderr) => {
      if (error) reject(new Error(`redis-cli ${args.join(" ")}: ${error.message} ${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

/** The port was taken between the probe and the bind: try again on another. */
class PortTaken extends Error {}

/** Fresh ports tried before giving up. */
const PORT_ATTEMPTS = 5;

/** The pid of the server answering on `port`, so that a stranger on a reused port is told apart. */
async function serverPid(port: number): Promise<number> {
  const info = await cli(port, ["info", "server"]);
  return Number(/^process_id:(\d+)/m.exec(info)?.[1]);
}

/** Waits until the child answers PING on `port` itself; PortTaken if it could not bind it. */
async function answering(
  child: ChildProcess,
  port: number,
  what: string,
  output: () => string,
): Promise<void> {
  let exited = child.exitCode !== null || child.signalCode !== null;
  child.once("exit", () => {
    exited = true;
  });
  try {
    await waitFor(`${what} on ${port}`, async () => {
      if (exited) {
        const log = output();
        if (/address already in use/i.test(log)) throw new PortTaken(`${what}: port ${port} was taken`);
        throw new Error(`${what} on ${port} exited: ${log}`);
      }
      return ping(port);
    });
    if ((await serverPid(port)) !== child.pid) {
      throw new PortTaken(`${what}: another server answers on ${port}`);
    }
  } catch (error) {
    child.kill("SIGKILL");
    await exitOf(child);
    throw error;
  }
}

/** `start` on a fresh free port, again on another while the port turns out to be taken. */
async function onFreshPort<T>(start: (port: number) => Promise<T>): Promise<{ port: number; value: T }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return { port, value: await start(port) };
    } catch (error) {
      if (!(error instanceof PortTaken) || attempt === PORT_ATTEMPTS) throw error;
    }
  }
}

function exitOf(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

async function spawnServer(port: number, dir: string, extra: string[]): Promise<ChildProcess> {
  const child = spawn(
    REDIS_SERVER,
    [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
      "--daemonize",
      "no",
      "--loglevel",
      "warning",
      ...extra,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  // The log goes to stdout; a failed bind is reported there.
  let output = "";
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  await answering(child, port, "redis-server", () => output);
  return child;
}

export async function startRedis(extra: string[] = []): Promise<TestRedis> {
  const dir = await mkdtemp(join(tmpdir(), "floodgate-redis-"));
  const started = await onFreshPort((port) => spawnServer(port, dir, extra));
  const port = started.port;
  let child = started.value;
  const signal = async (sig: NodeJS.Signals) => {
    child.kill(sig);
    await exitOf(child);
  };
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop: async () => {
      child.kill("SIGCONT");
      await signal("SIGTERM");
      await rm(dir, { recursive: true, force: true });
    },
    kill: () => signal("SIGKILL"),
    restart: async () => {
      if (child.exitCode === null && child.signalCode === null) await signal("SIGKILL");
      child = await spawnServer(port, dir, extra);
    },
    pause: () => {
      child.kill("SIGSTOP");
    },
    resume: () => {
      child.kill("SIGCONT");
    },
    cli: (...args: string[]) => cli(port, args),
  };
}

/** `count` free ports whose cluster bus port (port + 10000) is free too. */
async function clusterPorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  while (ports.length < count) {
    const port = await freePort();
    if (port + 10000 <= 65535 && !ports.includes(port) && (await isFree(port + 10000))) ports.push(port);
  }
  return ports;
}

export async function startRedisCluster(masters = 3): Promise<TestRedisCluster> {
  const dir = await mkdtemp(join(tmpdir(), "floodgate-cluster-"));
  const children: ChildProcess[] = [];
  const kill = async () => {
    for (const child of children) child.kill("SIGTERM");
    await Promise.all(children.map(exitOf));
    children.length = 0;
  };
  const stop = async () => {
    await kill();
    await rm(dir, { recursive: true, force: true });
  };
  let ports: number[] = [];
  try {
    for (let attempt = 1; children.length < masters; attempt++) {
      ports = await clusterPorts(masters);
      try {
        for (const port of ports) {
          children.push(
            await spawnServer(port, dir, [
              "--cluster-enabled",
              "yes",
              "--cluster-config-file",
              join(dir, `nodes-${port}.conf`),
              "--cluster-node-timeout",
              "2000",
            ]),
          );
        }
      } catch (error) {
        await kill();
        if (!(error instanceof PortTaken) || attempt === PORT_ATTEMPTS) throw error;
      }
    }
    await new Promise<void>((resolve, reject) => {
      execFile(
        REDIS_CLI,
        [
          "--cluster",
          "create",
          ...ports.map((p) => `127.0.0.1:${p}`),
          "--cluster-replicas",
          "0",
          "--cluster-yes",
        ],
        (error, _stdout, stderr) => (error ? reject(new Error(`cluster create: ${stderr}`)) : resolve()),
      );
    });
    await waitFor("cluster_state:ok on every node", async () => {
      const infos = await Promise.all(ports.map((p) => cli(p, ["cluster", "info"])));
      return infos.every((info) => info.includes("cluster_state:ok"));
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return { nodes: ports.map((p) => `redis://127.0.0.1:${p}`), stop };
}

/** One Sentinel (quorum 1) watching a master on masterPort under `name`. */
export async function startSentinel(masterPort: number, name = "mymaster"): Promise<TestSentinel> {
  const dir = await mkdtemp(join(tmpdir(), "floodgate-sentinel-"));
  const config = join(dir, "sentinel.conf");
  let started: { port: number; value: ChildProcess } | undefined;
  try {
    started = await onFreshPort(async (candidate) => {
      // Sentinel rewrites its config file, so it lives in the temp dir.
      await writeFile(
        config,
        [
          `port ${candidate}`,
          "bind 127.0.0.1",
          `dir ${dir}`,
          `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`,
          `sentinel down-after-milliseconds ${name} 2000`,
          "",
        ].join("\n"),
      );
      const sentinel = spawn(REDIS_SERVER, [config, "--sentinel"], { stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      const collect = (chunk: Buffer) => {
        output += chunk.toString();
      };
      sentinel.stdout?.on("data", collect);
      sentinel.stderr?.on("data", collect);
      await answering(sentinel, candidate, "sentinel", () => output);
      return sentinel;
    });
    const { port } = started;
    await waitFor(`sentinel on ${port} to know ${name}`, async () => {
      const master = await cli(port, ["sentinel", "get-master-addr-by-name", name]);
      return master.includes(String(masterPort));
    });
  } catch (error) {
    if (started !== undefined) {
      started.value.kill("SIGKILL");
      await exitOf(started.value);
    }
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  const { port, value: child } = started;
  return {
    address: `127.0.0.1:${port}`,
    stop: async () => {
      child.kill("SIGTERM");
      await exitOf(child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
