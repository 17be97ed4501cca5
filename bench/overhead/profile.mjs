/**
 * A V8 CPU profile (`node --cpu-prof`) summarised for the overhead report: self time by
 * function, by package or area, by group (node's internals, native code, GC, undici, fastify,
 * pino, ioredis, floodgate's own modules by directory) and by floodgate module (file), and
 * floodgate's functions' inclusive time, all in µs per request over a measured window.
 * Also usable alone: node bench/overhead/profile.mjs FILE.cpuprofile REQUESTS
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/**
 * Packages counted with the one whose dependency they are: a reader asks what Fastify or the
 * logger costs, not what find-my-way or sonic-boom does.
 */
const PACKAGE_GROUPS = {
  fastify: [
    "fastify",
    "@fastify/ajv-compiler",
    "@fastify/error",
    "@fastify/fast-json-stringify-compiler",
    "@fastify/merge-json-schemas",
    "@fastify/proxy-addr",
    "@fastify/forwarded",
    "abstract-logging",
    "avvio",
    "fast-decode-uri-component",
    "fast-json-stringify",
    "fast-querystring",
    "find-my-way",
    "forwarded",
    "ipaddr.js",
    "light-my-request",
    "proxy-addr",
    "ret",
    "rfdc",
    "safe-regex2",
    "secure-json-parse",
    "toad-cache",
  ],
  pino: [
    "pino",
    "@pinojs/redact",
    "atomic-sleep",
    "fast-redact",
    "on-exit-leak-free",
    "pino-abstract-transport",
    "pino-std-serializers",
    "quick-format-unescaped",
    "real-require",
    "safe-stable-stringify",
    "sonic-boom",
    "thread-stream",
  ],
  ioredis: [
    "ioredis",
    "@ioredis/commands",
    "cluster-key-slot",
    "debug",
    "denque",
    "ms",
    "redis-errors",
    "redis-parser",
    "standard-as-callback",
  ],
  "prom-client": ["prom-client", "tdigest", "bintrees"],
};
const GROUP_OF = new Map(
  Object.entries(PACKAGE_GROUPS).flatMap(([group, packages]) => packages.map((p) => [p, group])),
);

/** The group names the report explains. */
export const GROUPS = {
  node: "node (JS internals: node:*)",
  native: "native code (C++ builtins: socket and log writes, HTTP parser, ...)",
  gc: "(garbage collector)",
  program: "(program: V8 and libuv outside JS)",
};

/**
 * Self time by function and by package, and floodgate's functions' inclusive time, within
 * [from, to] (µs, V8's monotonic clock), per request of `requests`.
 */
export function summarizeProfile(profile, from, to, requests) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Time per node: each sample stands for the interval up to the next one.
  const time = new Map();
  let at = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    at += profile.timeDeltas[i];
    const next = i + 1 < profile.samples.length ? at + profile.timeDeltas[i + 1] : profile.endTime;
    if (at < from || at > to) continue;
    const id = profile.samples[i];
    time.set(id, (time.get(id) ?? 0) + (next - at));
  }
  const idle = (id) => byId.get(id).callFrame.functionName === "(idle)";
  let busy = 0;
  let idleUs = 0;
  for (const [id, us] of time) {
    if (idle(id)) idleUs += us;
    else busy += us;
  }
  const self = new Map();
  const inclusive = new Map();
  const areas = new Map();
  const groups = new Map();
  const modules = new Map();
  const add = (map, key, us) => map.set(key, (map.get(key) ?? 0) + us);
  for (const [id, us] of time) {
    if (idle(id)) continue;
    const frame = byId.get(id).callFrame;
    add(self, frameKey(frame), us);
    add(areas, area(frame), us);
    add(groups, group(frame), us);
    const own = floodgatePath(frame.url);
    if (own) add(modules, own, us);
    const seen = new Set();
    for (let node = id; node !== undefined; node = parent.get(node)) {
      const f = byId.get(node).callFrame;
      if (!floodgatePath(f.url)) continue;
      const k = frameKey(f);
      if (seen.has(k)) continue;
      seen.add(k);
      add(inclusive, k, us);
    }
  }
  const perRequest = (us) => Math.round((us / requests) * 10) / 10;
  const top = (map, n, min = 0) =>
    [...map]
      .sort((a, b) => b[1] - a[1])
      .filter(([, us]) => perRequest(us) >= min)
      .slice(0, n)
      .map(([name, us]) => ({ name, pct: pct(us / busy), usPerRequest: perRequest(us) }));
  return {
    windowSeconds: Math.round((to - from) / 1000) / 1000,
    busyPct: pct(busy / (busy + idleUs)),
    busyUsPerRequest: perRequest(busy),
    requests,
    groups: top(groups, Number.POSITIVE_INFINITY),
    areas: top(areas, 20),
    modules: top(modules, Number.POSITIVE_INFINITY),
    selfTop: top(self, 25),
    // Every function worth 0.1 µs/req or more: the report diffs variants against the floor.
    self: top(self, 400, 0.1),
    floodgateInclusive: top(inclusive, 15),
  };
}

const pct = (x) => Math.round(x * 1000) / 10;

/** `dist/src/...` for one of floodgate's own files (a build's), else undefined. */
function floodgatePath(url) {
  const src = url?.indexOf("/dist/src/") ?? -1;
  return src === -1 ? undefined : url.slice(src + 1);
}

function frameKey(frame) {
  const name = frame.functionName || "(anonymous)";
  if (!frame.url) return name;
  return `${name} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
}

function shortUrl(url) {
  const nm = url.lastIndexOf("/node_modules/");
  if (nm !== -1) return url.slice(nm + "/node_modules/".length);
  const own = floodgatePath(url);
  if (own) return own;
  if (url.startsWith("file://")) return url.slice(url.lastIndexOf("/") + 1);
  return url;
}

function packageOf(url) {
  const nm = url.lastIndexOf("/node_modules/");
  if (nm === -1) return undefined;
  const rest = url.slice(nm + "/node_modules/".length).split("/");
  return rest[0].startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0];
}

/** A frame's package, node module (node:events, ...), floodgate, or V8's pseudo-frames. */
function area(frame) {
  const url = frame.url;
  if (!url) return frame.functionName.startsWith("(") ? frame.functionName : "(native)";
  const pkg = packageOf(url);
  if (pkg) return pkg;
  if (url.startsWith("wasm://")) return "undici (llhttp, wasm)";
  if (floodgatePath(url)) return "floodgate (dist/src)";
  if (url.startsWith("node:")) {
    const m = /^node:(internal\/)?([a-z_]+)/.exec(url);
    return `node:${m ? m[2] : url}`;
  }
  return shortUrl(url);
}

/**
 * A frame's group: node's JS internals, native code, GC, (program), a package with its own
 * dependencies (fastify, pino, ioredis, prom-client; others by name), floodgate's directory
 * under dist/src (`floodgate: proxy/`, `floodgate: app.js`), or the script's file.
 */
function group(frame) {
  const url = frame.url;
  if (!url) {
    if (frame.functionName === "(garbage collector)") return GROUPS.gc;
    if (frame.functionName === "(program)") return GROUPS.program;
    return frame.functionName.startsWith("(") ? frame.functionName : GROUPS.native;
  }
  const pkg = packageOf(url);
  if (pkg) return GROUP_OF.get(pkg) ?? pkg;
  // The only WebAssembly on these request paths is undici's HTTP parser (llhttp).
  if (url.startsWith("wasm://")) return "undici";
  const own = floodgatePath(url);
  if (own) {
    const parts = own.slice("dist/src/".length).split("/");
    return `floodgate: ${parts.length > 1 ? `${parts[0]}/` : parts[0]}`;
  }
  if (url.startsWith("node:")) return GROUPS.node;
  return shortUrl(url);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [file, requests] = process.argv.slice(2);
  if (!file || !requests) {
    console.error("usage: node bench/overhead/profile.mjs FILE.cpuprofile REQUESTS");
    process.exit(2);
  }
  const profile = JSON.parse(readFileSync(file, "utf8"));
  const summary = summarizeProfile(profile, profile.startTime, profile.endTime, Number(requests));
  const { self: _, ...rest } = summary;
  process.stdout.write(`${JSON.stringify(rest, null, 2)}\n`);
}
