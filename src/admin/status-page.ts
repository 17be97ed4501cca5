/**
 * The status page the admin listener serves at /status: one self-contained HTML document, inline
 * CSS and JS only (no build step, no CDN, no fonts). The document holds no data: the script asks
 * for the admin token, keeps it in sessionStorage, and every 2 s reads /admin/status (bearer token)
 * and /metrics, computing request, shed and limit rates from consecutive scrapes. Everything is
 * rendered with DOM APIs and textContent, and the CSP allows only this script and this style
 * (by hash), same-origin fetches, and no Trusted Types policy, so no HTML sink can take a string.
 */
import { createHash } from "node:crypto";

const STYLE = `
:root {
  color-scheme: light dark;
  --bg: #f4f6f9; --card: #ffffff; --text: #1b2430; --muted: #5d6b7e; --line: #e1e6ed;
  --head: #f7f9fb; --accent: #2f6fde; --on-accent: #ffffff;
  --ok: #12703d; --ok-bg: #e2f5e9; --warn: #8a5300; --warn-bg: #fdf0d5;
  --bad: #b42318; --bad-bg: #fde5e2; --idle: #4a5565; --idle-bg: #eceff3;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #10141a; --card: #181e27; --text: #e6ebf2; --muted: #9aa7b8; --line: #2a3340;
    --head: #1d2430; --accent: #6ea0ff; --on-accent: #0b1220;
    --ok: #6fdc9a; --ok-bg: #143524; --warn: #f3c05b; --warn-bg: #3a2c0c;
    --bad: #ff8a7e; --bad-bg: #43191a; --idle: #b5c0cf; --idle-bg: #252d39;
  }
}
* { box-sizing: border-box; }
html { background: var(--bg); }
body {
  margin: 0; color: var(--text); background: var(--bg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-variant-numeric: tabular-nums;
}
.top {
  display: flex; align-items: center; justify-content: space-between; gap: 16px; flex-wrap: wrap;
  padding: 14px 28px; background: var(--card); border-bottom: 1px solid var(--line);
}
.brand { display: flex; align-items: baseline; gap: 10px; }
.brand h1 { margin: 0; font-size: 19px; letter-spacing: -0.01em; }
.brand .sub { color: var(--muted); }
.meta { display: flex; align-items: center; gap: 12px; color: var(--muted); }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; background: var(--idle); margin-right: 6px; }
.dot.live { background: var(--ok); }
.dot.stale { background: var(--warn); }
main { max-width: 1240px; margin: 0 auto; padding: 22px 28px 8px; }
footer { max-width: 1240px; margin: 0 auto; padding: 4px 28px 28px; color: var(--muted); font-size: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; margin-bottom: 18px; }
button {
  font: inherit; border-radius: 6px; padding: 6px 14px; cursor: pointer;
  border: 1px solid var(--accent); background: var(--accent); color: var(--on-accent);
}
button.secondary { background: transparent; color: var(--accent); }
button:focus-visible, input:focus-visible { outline: 3px solid color-mix(in srgb, var(--accent) 45%, transparent); outline-offset: 1px; }
.login { max-width: 520px; margin: 40px auto; padding: 22px 24px; }
.login h2 { margin: 0 0 6px; font-size: 17px; }
.login p { margin: 0 0 14px; color: var(--muted); }
.login label { display: block; font-weight: 600; margin-bottom: 6px; }
.login .row { display: flex; gap: 8px; }
.login input {
  flex: 1; font: inherit; padding: 6px 10px; border-radius: 6px;
  border: 1px solid var(--line); background: var(--bg); color: var(--text);
}
.login input[aria-invalid="true"] { border-color: var(--bad); }
.login .error { margin: 12px 0 0; padding: 8px 12px; border-radius: 6px; color: var(--bad); background: var(--bad-bg); font-weight: 600; }
.banner { margin: 0 0 18px; padding: 10px 14px; border-radius: 8px; color: var(--warn); background: var(--warn-bg); font-weight: 600; }
[hidden] { display: none !important; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; margin: 0 0 18px; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; }
.tile dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; }
.tile dd { margin: 4px 0 0; }
.big { display: block; font-size: 24px; font-weight: 650; letter-spacing: -0.01em; }
.small { display: block; color: var(--muted); font-size: 12px; }
.tile.bad { border-color: var(--bad); }
.tile.bad .big { color: var(--bad); }
.tile.warn .big { color: var(--warn); }
.pool-head { display: flex; align-items: baseline; justify-content: space-between; flex-wrap: wrap; gap: 8px 16px; padding: 14px 18px 6px; }
.pool-head h2 { margin: 0; font-size: 17px; }
.pool-head h2 .pill { margin-left: 8px; vertical-align: 2px; }
.pool-head .models { color: var(--muted); }
.facts { display: flex; flex-wrap: wrap; gap: 6px 26px; margin: 0; padding: 4px 18px 12px; }
.facts div { display: flex; gap: 6px; align-items: baseline; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; font-weight: 600; }
.table-wrap { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: 9px 14px; border-top: 1px solid var(--line); vertical-align: middle; white-space: nowrap; }
thead th { background: var(--head); color: var(--muted); font-size: 12px; font-weight: 600; text-transform: uppercase; letter-spacing: 0.04em; }
tbody th { font-weight: 600; }
thead tr, tbody tr { border-left: 3px solid transparent; }
tbody tr.row-bad { border-left-color: var(--bad); }
tbody tr.row-warn { border-left-color: var(--warn); }
td.num, th.num { text-align: right; }
.url { display: block; font-weight: 400; color: var(--muted); font-size: 12px; }
.tag { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 4px; font-size: 11px; font-weight: 600; color: var(--idle); background: var(--idle-bg); }
.pill { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.ok { color: var(--ok); background: var(--ok-bg); }
.warn { color: var(--warn); background: var(--warn-bg); }
.bad { color: var(--bad); background: var(--bad-bg); }
.idle { color: var(--idle); background: var(--idle-bg); }
.muted { color: var(--muted); }
meter { width: 70px; height: 10px; margin-right: 8px; vertical-align: middle; }
.sr-only { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
.empty { padding: 14px 18px; color: var(--muted); }
`;

const SCRIPT = String.raw`
"use strict";
(function () {
  var KEY = "floodgate.adminToken";
  var PERIOD_MS = 2000;
  var DASH = "\u2014";
  var $ = function (id) { return document.getElementById(id); };
  var token = sessionStorage.getItem(KEY) || "";
  var timer = 0;
  var generation = 0;
  var previous = null;

  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (key) {
        var value = props[key];
        if (value === undefined || value === null || value === false) return;
        if (key === "class") node.className = value;
        else if (key === "text") node.textContent = String(value);
        else node.setAttribute(key, value === true ? "" : String(value));
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      [].concat(arguments[i]).forEach(function (child) {
        if (child === null || child === undefined || child === false) return;
        node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
      });
    }
    return node;
  }
  function pill(text, tone, field) { return el("span", { class: "pill " + tone, "data-field": field, text: text }); }
  function fmtInt(n) { return Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : DASH; }
  function fmtRate(n) {
    if (!Number.isFinite(n)) return DASH;
    return (n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1)) + "/s";
  }
  function fmtPct(ratio) { return Number.isFinite(ratio) ? (ratio * 100).toFixed(ratio >= 0.995 || ratio === 0 ? 0 : 1) + "%" : DASH; }
  function fmtMs(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return DASH;
    return ms >= 1000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms) + " ms";
  }

  // Prometheus text format: the samples of the families asked for.
  var LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/y;
  function unescapeLabel(s) { return s.replace(/\\(.)/g, function (_, c) { return c === "n" ? "\n" : c; }); }
  function parseMetrics(text, names) {
    var out = {};
    names.forEach(function (n) { out[n] = []; });
    text.split("\n").forEach(function (line) {
      if (line === "" || line.charAt(0) === "#") return;
      var space = line.indexOf(" ");
      var brace = line.indexOf("{");
      var name, labels = {}, rest;
      if (brace >= 0 && (space < 0 || brace < space)) {
        name = line.slice(0, brace);
        if (!out[name]) return;
        var i = brace + 1;
        while (i < line.length && line.charAt(i) !== "}") {
          LABEL.lastIndex = i;
          var m = LABEL.exec(line);
          if (!m) return;
          labels[m[1]] = unescapeLabel(m[2]);
          i = LABEL.lastIndex;
        }
        rest = line.slice(i + 1);
      } else {
        name = line.slice(0, space);
        if (!out[name]) return;
        rest = line.slice(space + 1);
      }
      var value = Number(rest.trim().split(/\s+/)[0]);
      if (Number.isFinite(value)) out[name].push({ labels: labels, value: value });
    });
    return out;
  }

  function isShed(l) { return l.code === "503" && (/^queue_/.test(l.error || "") || l.error === "no_backend_available"); }
  function counts() { return { total: 0, shed: 0, limited: 0 }; }
  function summarize(text) {
    var s = parseMetrics(text, ["floodgate_requests_total", "floodgate_cache_requests_total"]);
    var all = counts(), pools = {}, cache = { hit: 0, stale: 0, miss: 0, bypass: 0 };
    s.floodgate_requests_total.forEach(function (x) {
      var p = pools[x.labels.pool || ""] || (pools[x.labels.pool || ""] = counts());
      [all, p].forEach(function (c) {
        c.total += x.value;
        if (isShed(x.labels)) c.shed += x.value;
        if (x.labels.code === "429") c.limited += x.value;
      });
    });
    s.floodgate_cache_requests_total.forEach(function (x) {
      if (x.labels.result in cache) cache[x.labels.result] += x.value;
    });
    return { at: performance.now(), all: all, pools: pools, cache: cache };
  }
  function rates(now, before) {
    if (!before) return null;
    var seconds = (now.at - before.at) / 1000;
    if (!(seconds > 0)) return null;
    var one = function (a, b) {
      if (!b || a.total < b.total) return null;
      return { total: (a.total - b.total) / seconds, shed: (a.shed - b.shed) / seconds, limited: (a.limited - b.limited) / seconds };
    };
    var pools = {};
    Object.keys(now.pools).forEach(function (name) { pools[name] = one(now.pools[name], before.pools[name] || counts()); });
    return { all: one(now.all, before.all), pools: pools };
  }

  // Fetching.
  function Refused(message) { this.message = message; }
  function getStatus() {
    var headers;
    try { headers = new Headers({ authorization: "Bearer " + token }); }
    catch (_) { return Promise.reject(new Refused("admin token refused: it holds characters a header cannot carry")); }
    return fetch("/admin/status", { headers: headers, cache: "no-store", credentials: "omit" }).then(function (res) {
      if (res.status === 401) throw new Refused("admin token refused: check admin.token and type it again");
      if (res.status === 403) throw new Refused("The admin API is off on this gateway: set admin.token in its config");
      if (!res.ok) throw new Error("/admin/status answered " + res.status);
      return res.json();
    });
  }
  function getMetrics() {
    return fetch("/metrics", { cache: "no-store", credentials: "omit" }).then(function (res) {
      if (!res.ok) throw new Error("/metrics answered " + res.status);
      return res.text();
    });
  }

  function schedule() { clearTimeout(timer); timer = setTimeout(refresh, PERIOD_MS); }
  function refresh() {
    var mine = generation;
    Promise.allSettled([getStatus(), getMetrics()]).then(function (results) {
      if (mine !== generation) return;
      var status = results[0], metrics = results[1];
      if (status.status === "rejected" && status.reason instanceof Refused) {
        refuse(status.reason.message);
        return;
      }
      if (status.status === "rejected" || metrics.status === "rejected") {
        var why = (status.status === "rejected" ? status.reason : metrics.reason);
        showBanner("Cannot read the gateway (" + (why && why.message ? why.message : String(why)) + "): showing the last reading, retrying every 2 s.");
        setLive("stale", "Last updated " + ($("updated").dataset.time || DASH) + " (refresh failed)");
      } else {
        var now = summarize(metrics.value);
        var r = rates(now, previous);
        previous = now;
        showBanner("");
        render(status.value, now, r);
        var time = new Date().toLocaleTimeString();
        $("updated").dataset.time = time;
        setLive("live", "Updated " + time);
      }
      schedule();
    });
  }
  function setLive(kind, text) {
    $("live-dot").className = "dot " + kind;
    $("updated").textContent = text;
  }
  function showBanner(text) {
    $("banner").textContent = text;
    $("banner").hidden = text === "";
  }

  // Token handling.
  function start() {
    generation++;
    previous = null;
    $("login").hidden = true;
    $("login-error").hidden = true;
    $("token").removeAttribute("aria-invalid");
    $("forget").hidden = false;
    setLive("", "Connecting\u2026");
    refresh();
  }
  function signOut() {
    generation++;
    clearTimeout(timer);
    token = "";
    sessionStorage.removeItem(KEY);
    $("overview").hidden = true;
    $("pools").replaceChildren();
    $("forget").hidden = true;
    showBanner("");
    setLive("", "Not connected");
    $("login").hidden = false;
  }
  function refuse(message) {
    signOut();
    $("login-error").textContent = message;
    $("login-error").hidden = false;
    $("token").setAttribute("aria-invalid", "true");
    $("token").focus();
    $("token").select();
  }
  $("login-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var value = $("token").value.trim();
    if (value === "") {
      $("login-error").textContent = "Type the admin token (admin.token in the gateway's config).";
      $("login-error").hidden = false;
      $("token").focus();
      return;
    }
    token = value;
    sessionStorage.setItem(KEY, token);
    $("token").value = "";
    start();
  });
  $("forget").addEventListener("click", function () {
    signOut();
    $("login-error").hidden = true;
    $("token").focus();
  });

  // Rendering.
  function setTile(name, big, small, tone) {
    var tile = document.querySelector('[data-tile="' + name + '"]');
    tile.className = "tile" + (tone ? " " + tone : "");
    tile.querySelector(".big").textContent = big;
    tile.querySelector(".small").textContent = small;
  }
  function render(status, now, r) {
    $("overview").hidden = false;
    var all = r && r.all;
    setTile("requests", all ? fmtRate(all.total) : DASH, fmtInt(now.all.total) + " total", "");
    var shedShare = all && all.total > 0 ? all.shed / all.total : NaN;
    setTile("shed", all ? fmtRate(all.shed) : DASH,
      fmtInt(now.all.shed) + " total" + (shedShare > 0 ? " \u00b7 " + fmtPct(shedShare) + " of offered" : ""),
      all && all.shed > 0 ? "bad" : "");
    setTile("limited", all ? fmtRate(all.limited) : DASH, fmtInt(now.all.limited) + " total",
      all && all.limited > 0 ? "warn" : "");
    var c = now.cache, served = c.hit + c.stale, lookups = served + c.miss;
    setTile("cache", lookups > 0 ? fmtPct(served / lookups) : DASH,
      lookups > 0 ? fmtInt(served) + " of " + fmtInt(lookups) + " lookups" : "no cacheable requests yet", "");
    var store = status.store;
    if (store) {
      setTile("store", store.kind, store.degraded ? "degraded: limits on the local fallback" : "ok", store.degraded ? "bad" : "");
    } else {
      setTile("store", DASH, "not reported", "");
    }
    var fleet = status.fleet;
    if (fleet) {
      setTile("fleet", fmtInt(fleet.replicas) + (fleet.replicas === 1 ? " replica" : " replicas"),
        "this one: " + fleet.replica + (fleet.storeDown ? " \u00b7 store down: fixed shares" : ""), fleet.storeDown ? "bad" : "");
    } else {
      setTile("fleet", "off", "slots not shared between replicas", "");
    }
    var pools = status.pools || [];
    $("pools").replaceChildren.apply($("pools"), pools.length === 0
      ? [el("p", { class: "card empty", text: "No pools configured." })]
      : pools.map(function (pool, i) {
        // A pool with no request counted yet has a rate of zero once there are two scrapes.
        var rate = r ? r.pools[pool.name] || (r.all ? { total: 0, shed: 0, limited: 0 } : null) : null;
        return renderPool(pool, i, rate);
      }));
  }

  function fact(label, value, field) {
    return el("div", null, el("dt", { text: label }), el("dd", { "data-field": field, text: value }));
  }
  function renderPool(pool, index, rate) {
    var titleId = "pool-" + index + "-title";
    var a = pool.admission || {};
    var w = a.waiting || {};
    var queued = (w.interactive || 0) + (w.batch || 0) + (w.background || 0);
    var head = el("div", { class: "pool-head" },
      el("h2", { id: titleId }, "Pool ", el("span", { "data-field": "pool-name", text: pool.name }),
        pool.panic ? el("span", { class: "pill bad", text: "panic" }) : null),
      el("span", { class: "models", text: (pool.models || []).join(", ") + " \u00b7 " + pool.balancer }));
    var facts = el("dl", { class: "facts" },
      fact("Requests", rate ? fmtRate(rate.total) : DASH, "requests-rate"),
      fact("Shed", rate ? fmtRate(rate.shed) : DASH, "shed-rate"),
      fact("Admission queue", a.enabled === false ? "off" : queued === 0 ? "empty" :
        fmtInt(queued) + " waiting (interactive " + fmtInt(w.interactive || 0) + ", batch " + fmtInt(w.batch || 0) +
        ", background " + fmtInt(w.background || 0) + ")", "queue"),
      fact("Slots in use", fmtInt(a.slotsInUse) + " / " + (Number.isFinite(a.slotCapacity) ? fmtInt(a.slotCapacity) : "\u221e"), "slots"),
      fact("Drain rate", a.drainMeasured ? (a.drainPerSecond || 0).toFixed(1) + "/s" : "not measured", "drain"),
      fact("Est. wait", fmtMs(a.estimatedWaitMs && a.estimatedWaitMs.interactive), "wait"),
      fact("Retries", fmtInt(pool.retries && pool.retries.inFlight) + " / " + fmtInt(pool.retries && pool.retries.limit), "retries"),
      fact("Affinity", affinityText(pool.affinity), "affinity"));
    facts.setAttribute("aria-label", "Pool " + pool.name + " summary");
    var rows = (pool.backends || []).map(renderBackend);
    var table = el("table", { "aria-labelledby": titleId },
      el("caption", { class: "sr-only", text: "Backends of pool " + pool.name }),
      el("thead", null, el("tr", null,
        el("th", { scope: "col", text: "Backend" }),
        el("th", { scope: "col", text: "Health" }),
        el("th", { scope: "col", text: "Breaker" }),
        el("th", { scope: "col", class: "num", text: "Ejections" }),
        el("th", { scope: "col", text: "In flight / slots" }),
        el("th", { scope: "col", class: "num", text: "Engine queue" }),
        el("th", { scope: "col", text: "KV cache" }),
        el("th", { scope: "col", class: "num", text: "Prefix hits", title: "the engine's prefix-cache hit ratio" }),
        el("th", { scope: "col", text: "Drained" }))),
      el("tbody", null, rows));
    return el("section", { class: "card pool", "data-pool": pool.name, "aria-labelledby": titleId },
      head, facts, el("div", { class: "table-wrap" }, table));
  }

  // Where the pool's keyed requests went since start: their home backend, a successor because
  // the home was past its load bound, another backend because the home could not serve, or
  // (with cache models) where a prefix nobody held was placed.
  function affinityText(affinity) {
    if (!affinity) return "off";
    var d = affinity.decisions || {};
    var total = (d.home || 0) + (d.spilled || 0) + (d.home_unavailable || 0) + (d.placed || 0);
    if (total === 0) return "by " + affinity.by + " \u00b7 no requests yet";
    return "by " + affinity.by + " \u00b7 home " + fmtPct(d.home / total) + ", spilled " +
      fmtPct(d.spilled / total) + ", home unavailable " + fmtPct(d.home_unavailable / total) +
      (d.placed ? ", placed " + fmtPct(d.placed / total) : "");
  }

  function renderBackend(b) {
    var breaker = b.breaker === "closed" ? pill("closed", "ok", "breaker")
      : b.breaker === "half_open" ? pill("half-open", "warn", "breaker")
      : pill("open" + (b.probeInMs > 0 ? " \u00b7 probe in " + fmtMs(b.probeInMs) : ""), "bad", "breaker");
    var slots = b.maxConcurrency;
    var inflight = el("td", { "data-field": "in-flight" });
    if (slots) inflight.append(el("meter", { min: 0, max: slots, value: Math.min(b.inFlight, slots), "aria-hidden": "true" }));
    inflight.append(fmtInt(b.inFlight) + " / " + (slots ? fmtInt(slots) : "\u221e"));
    if (b.fleetInFlight !== null && b.fleetInFlight !== undefined) {
      inflight.append(el("span", { class: "url", text: "fleet " + fmtInt(b.fleetInFlight) + " \u00b7 share " + fmtInt(b.share) }));
    }
    var load = b.engineLoad;
    var queue = el("td", { class: "num", "data-field": "engine-queue" });
    if (load) {
      queue.append(fmtInt(load.waiting) + " waiting");
      queue.append(el("span", { class: "url", text: fmtInt(load.running) + " running" }));
    } else {
      queue.append(el("span", { class: "muted", title: "no reading from the engine", text: DASH }));
    }
    var kv = el("td", { "data-field": "kv" });
    if (load && load.kvCacheUsage !== null && load.kvCacheUsage !== undefined) {
      kv.append(el("meter", { min: 0, max: 1, value: load.kvCacheUsage, low: 0.75, high: 0.9, optimum: 0, "aria-hidden": "true" }), fmtPct(load.kvCacheUsage));
    } else {
      kv.append(el("span", { class: "muted", text: DASH }));
    }
    var prefix = el("td", { class: "num", "data-field": "prefix-cache" });
    if (load && load.prefixCacheHitRatio !== null && load.prefixCacheHitRatio !== undefined) {
      prefix.append(fmtPct(load.prefixCacheHitRatio));
    } else {
      prefix.append(el("span", { class: "muted", title: "the engine publishes no prefix-cache counters", text: DASH }));
    }
    var bad = !b.healthy || b.breaker === "open";
    var warn = b.drained || b.breaker === "half_open";
    return el("tr", { "data-backend": b.name, class: bad ? "row-bad" : warn ? "row-warn" : null },
      el("th", { scope: "row" },
        el("span", { "data-field": "name", text: b.name }),
        b.backup ? el("span", { class: "tag", text: "backup" }) : null,
        b.weight !== 1 ? el("span", { class: "tag", text: "weight " + b.weight }) : null,
        el("span", { class: "url", text: b.url + " \u00b7 " + b.engine })),
      el("td", null, b.healthy ? pill("healthy", "ok", "health") : pill("unhealthy", "bad", "health")),
      el("td", null, breaker),
      el("td", { class: "num", "data-field": "ejections", text: fmtInt(b.ejections) }),
      inflight, queue, kv, prefix,
      el("td", null, b.drained ? pill("drained", "warn", "drained") : pill("no", "idle", "drained")));
  }

  if (token) start();
  else $("token").focus();
})();
`;

const sha256 = (text: string) => `'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`;

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>floodgate status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header class="top">
  <div class="brand"><h1>floodgate</h1><span class="sub">gateway status</span></div>
  <div class="meta">
    <span><span id="live-dot" class="dot" aria-hidden="true"></span><span id="updated" role="status">Not connected</span></span>
    <button id="forget" class="secondary" type="button" hidden>Change token</button>
  </div>
</header>
<main>
  <noscript><p class="banner">This page needs JavaScript: it reads /admin/status and /metrics from this listener.</p></noscript>
  <section id="login" class="card login" aria-labelledby="login-title">
    <h2 id="login-title">Sign in with the admin token</h2>
    <p>The status comes from the admin API. The token is kept in this browser tab only (sessionStorage) and sent to this listener alone, as a bearer token.</p>
    <form id="login-form" novalidate>
      <label for="token">Admin token</label>
      <div class="row">
        <input id="token" name="token" type="password" autocomplete="current-password" spellcheck="false" required aria-describedby="login-error">
        <button type="submit">Show status</button>
      </div>
      <p id="login-error" class="error" role="alert" hidden></p>
    </form>
  </section>
  <p id="banner" class="banner" role="alert" hidden></p>
  <section id="overview" aria-label="Gateway overview" hidden>
    <dl class="tiles">
      <div class="tile" data-tile="requests"><dt>Requests</dt><dd><span class="big"></span><span class="small"></span></dd></div>
      <div class="tile" data-tile="shed" title="503 with queue_* or no_backend_available: refused for want of capacity"><dt>Shed (503)</dt><dd><span class="big"></span><span class="small"></span></dd></div>
      <div class="tile" data-tile="limited"><dt>Rate limited (429)</dt><dd><span class="big"></span><span class="small"></span></dd></div>
      <div class="tile" data-tile="cache"><dt>Cache hit ratio</dt><dd><span class="big"></span><span class="small"></span></dd></div>
      <div class="tile" data-tile="store"><dt>Store</dt><dd><span class="big"></span><span class="small"></span></dd></div>
      <div class="tile" data-tile="fleet"><dt>Fleet</dt><dd><span class="big"></span><span class="small"></span></dd></div>
    </dl>
  </section>
  <div id="pools"></div>
</main>
<footer>Reads /admin/status and /metrics on this listener every 2 s. Rates are computed in this page from two consecutive scrapes of this replica.</footer>
<script>${SCRIPT}</script>
</body>
</html>
`;

/** Only this page's own script and style run; it may fetch from this listener and nothing else. */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "require-trusted-types-for 'script'",
  "trusted-types 'none'",
].join("; ");

export const STATUS_PAGE_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  "content-type": "text/html; charset=utf-8",
  "content-security-policy": STATUS_PAGE_CSP,
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-resource-policy": "same-origin",
});
