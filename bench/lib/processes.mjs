/**
 * What the benchmarks share on the server side: child processes that are tracked and always
 * ended (on exit, error, SIGINT and SIGTERM), optionally pinned to a core (taskset), commands
 * run to their end (load generators), free ports, finding a binary, waiting for a server to
 * answer, and nginx in front of a list of local ports. One benchmark per process: the state
 * (the children, the temp dir) is the module's.
 */
import { spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import os from "node:os";
import { join } from "node:path";

const children = new Set();
/** Every process id this module started, ended or not: CPU used by any other is interference. */
export const spawnedPids = new Set();
let tmp;

/** Whether `core` options pin processes: taskset is installed and there are two cores or more. */
export const PINNING =
  os.availableParallelism() >= 2 && spawnSync("taskset", ["-V"], { stdio: "ignore" }).status === 0;

/** The command line that runs `command` on `core` (taskset execs it: same pid), or as is. */
export function pinned(core, command, commandArgs) {
  return PINNING && core !== undefined
    ? ["taskset", ["-c", String(core), command, ...commandArgs]]
    : [command, commandArgs];
}

function track(name, child, logPath) {
  spawnedPids.add(child.pid);
  const proc = { name, child, logPath, exited: false, exitCode: null };
  children.add(proc);
  child.on("exit", (code, signal) => {
    proc.exited = true;
    proc.exitCode = code ?? signal;
    children.delete(proc);
  });
  return proc;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A temp dir for the servers' logs and files, removed on exit, and handlers that end every
 * child on exit and on SIGINT/SIGTERM. Returns the dir.
 */
export function setUp(prefix) {
  tmp = mkdtempSync(join(os.tmpdir(), prefix));
  process.on("exit", () => {
    for (const p of children) if (!p.exited) p.child.kill("SIGKILL");
    rmSync(tmp, { recursive: true, force: true });
  });
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.on(signal, () => {
      console.error(`\n${signal}: stopping the benchmark's processes`);
      stopAll().finally(() => process.exit(130));
    });
  }
  return tmp;
}

/**
 * Starts a long-running server; its output goes to a log file in the temp dir. Options: `core`
 * pins it (taskset, when PINNING), `stdout` sends its stdout elsewhere (e.g. /dev/null; stderr
 * stays in the log).
 */
export function startServer(name, command, commandArgs, cwd = process.cwd(), { core, stdout } = {}) {
  const logPath = join(tmp, `${name}.log`);
  const out = openSync(stdout ?? logPath, "a");
  const err = stdout ? openSync(logPath, "a") : out;
  const [cmd, cmdArgs] = pinned(core, command, commandArgs);
  const child = spawn(cmd, cmdArgs, { cwd, stdio: ["ignore", out, err] });
  closeSync(out);
  if (err !== out) closeSync(err);
  return track(name, child, logPath);
}

/**
 * Runs a command to its end (killed after `timeoutSeconds`), tracked like a server, and
 * resolves with its stdout and stderr; rejects when it exits with another code than 0.
 */
export function runToEnd(
  command,
  commandArgs,
  { cwd = process.cwd(), env = process.env, core, timeoutSeconds = 60 } = {},
) {
  const [cmd, cmdArgs] = pinned(core, command, commandArgs);
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, cmdArgs, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    const watchdog = setTimeout(() => child.kill("SIGKILL"), timeoutSeconds * 1000);
    track(command, child, undefined);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => {
      stdout += c;
    });
    child.stderr.on("data", (c) => {
      stderr += c;
    });
    child.on("error", (err) => {
      clearTimeout(watchdog);
      reject(err);
    });
    child.on("exit", (code, signal) => {
      clearTimeout(watchdog);
      if (code === 0) resolvePromise({ stdout, stderr });
      else reject(new Error(`${command} exited with ${code ?? signal}: ${stderr.trim() || stdout.trim()}`));
    });
  });
}

/** SIGTERM, then SIGKILL after 5 s. */
export async function stop(proc) {
  if (proc.exited) return;
  const exited = new Promise((r) => proc.child.once("exit", r));
  proc.child.kill("SIGTERM");
  const timeout = new Promise((r) => setTimeout(() => r("timeout"), 5000).unref());
  if ((await Promise.race([exited, timeout])) === "timeout" && !proc.exited) {
    proc.child.kill("SIGKILL");
    await exited;
  }
}

/**
 * The processes started and not yet exited (for their logs when a benchmark fails); servers have
 * a `logPath`, commands run to their end do not.
 */
export function running() {
  return [...children];
}

export async function stopAll() {
  await Promise.all([...children].map((p) => stop(p)));
}

export function freePort() {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePromise(port));
    });
  });
}

/** The first of `candidates` that exists (a path) or is on the PATH (a name). */
export function findBinary(candidates) {
  for (const c of candidates) {
    if (c.includes("/")) {
      if (existsSync(c)) return c;
    } else {
      const found = spawnSync("sh", ["-c", `command -v ${c}`], { encoding: "utf8" }).stdout.trim();
      if (found) return found;
    }
  }
  return undefined;
}

/** The last 20 lines of a log. */
export function tail(path) {
  try {
    return readFileSync(path, "utf8").split("\n").slice(-20).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Until `url` answers below 500 (15 s at most); throws with the log's tail if the server exits. */
export async function waitReady(proc, url) {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (proc.exited)
      throw new Error(`${proc.name} exited (${proc.exitCode}) before it was ready:\n${tail(proc.logPath)}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status < 500) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`${proc.name} not ready at ${url} after 15 s:\n${tail(proc.logPath)}`);
}

/**
 * nginx in front of `servers` (ports on 127.0.0.1, or { port, weight }): `balance` is its
 * upstream directive (`least_conn;`, or none for round-robin). One worker, access log off,
 * HTTP/1.1 upstream keepalive 256; streams pass unbuffered.
 */
export function nginxConf(dir, port, servers, balance) {
  const line = (s) =>
    typeof s === "number"
      ? `    server 127.0.0.1:${s} max_fails=0;`
      : `    server 127.0.0.1:${s.port} weight=${s.weight} max_fails=0;`;
  return `# written by floodgate's bench/
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  client_max_body_size 16m;
  upstream fleet {
${balance ? `    ${balance}\n` : ""}${servers.map(line).join("\n")}
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://fleet;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 120s;
    }
  }
}
`;
}

/** nginx (nginxConf) on a free port, ready; `core` pins it (taskset). */
export async function startNginx(binary, servers, balance, name = "nginx", { core } = {}) {
  const dir = join(tmp, name);
  mkdirSync(dir);
  const port = await freePort();
  const conf = nginxConf(dir, port, servers, balance);
  writeFileSync(join(dir, "nginx.conf"), conf);
  const proc = startServer(
    name,
    binary,
    ["-p", dir, "-c", join(dir, "nginx.conf"), "-e", join(dir, "error.log")],
    process.cwd(),
    { core },
  );
  const url = `http://127.0.0.1:${port}`;
  // Any answer will do (a simulator 404s an unknown path): nginx is up and passing through.
  await waitReady(proc, `${url}/health`);
  const version = spawnSync(binary, ["-v"], { encoding: "utf8" })
    .stderr.trim()
    .replace(/^nginx version: /, "");
  return { name, url, proc, version, conf };
}
