/**
 * The Lua run by the Redis store. Each script but TAKES_LUA touches exactly ONE key (KEYS[1]),
 * so it never spans hash slots and Redis Cluster never answers CROSSSLOT; keep it that way (a
 * second key would have to share the first one's hash tag). TAKES_LUA takes several buckets,
 * whose hash tags differ: the store runs it on one server (or Sentinel's master), never on a
 * Cluster, where it takes one bucket per call instead.
 *
 * Time is Redis `TIME` on the server running the script (the master: scripts write), never a
 * replica's or a gateway's clock: TIME followed by writes is allowed since scripts are
 * replicated by their effects (the default since Redis 5, the only mode in 7).
 *
 * Numbers: Redis truncates Lua numbers to integers in replies, so fractional results go back
 * as strings formatted with "%.17g" (17 significant digits round-trip any double exactly), and
 * state is stored the same way, so a value read back is the value written.
 */

/**
 * Shared by the bucket scripts: the clock (TIME, or the `now` the equivalence tests pass), a
 * bucket's tokens refilled to now (a missing bucket is full), and the write back, kept alive
 * until it would be full again (+1 s). Returns of `saved`: msToFull.
 */
const BUCKET_PRELUDE = `
local function clock(given)
  if given ~= nil and given ~= "" then return tonumber(given) end
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function refilled(key, now, rate, burst)
  local saved = redis.call("HMGET", key, "tokens", "ts")
  local tokens = tonumber(saved[1])
  local ts = tonumber(saved[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  return math.min(burst, tokens + math.max(0, now - ts) * rate / 1000), ts
end
local function saved(key, tokens, ts, now, rate, burst)
  local msToFull = math.max(0, burst - tokens) * 1000 / rate
  local expireMs = math.min(math.ceil(msToFull) + 1000, 1e13)
  redis.call("HSET", key, "tokens", string.format("%.17g", tokens), "ts", string.format("%.17g", math.max(ts, now)))
  redis.call("PEXPIRE", key, string.format("%.0f", expireMs))
  return msToFull
end
`;

/**
 * The token bucket of bucket.ts, step by step in the same order (see its header for the
 * formula); the constants 1e-9 (EPSILON_PER_TOKEN), 1000 (IDLE_MARGIN_MS) and 1e13
 * (MAX_EXPIRE_MS) must match it.
 *
 * KEYS[1]: hash {tokens, ts}. ARGV: op ("take" | "adjust"), amount, ratePerSec, burst,
 * [now ms]. `now` exists ONLY for the equivalence tests, which replay one sequence of clock
 * readings on both implementations; production never passes it and the script reads TIME.
 * Reply: {allowed 0|1, remaining, msToNext, msToFull}, the last three as strings.
 */
export const BUCKET_LUA = `${BUCKET_PRELUDE}
local key = KEYS[1]
local op = ARGV[1]
local amount = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local now = clock(ARGV[5])
local tokens, ts = refilled(key, now, rate, burst)
local epsilon = 1e-9 * math.max(1, burst)
local allowed = 1
local msToNext = 0
if op == "take" then
  local cost = math.max(0, amount)
  if tokens >= cost - epsilon then
    tokens = tokens - cost
  else
    allowed = 0
  end
  if cost > 0 then
    if allowed == 0 then msToNext = (cost - tokens) * 1000 / rate end
  elseif tokens < 1 - epsilon then
    msToNext = (1 - tokens) * 1000 / rate
  end
else
  tokens = math.min(burst, tokens - amount)
  if tokens < 1 - epsilon then msToNext = (1 - tokens) * 1000 / rate end
end
local msToFull = saved(key, tokens, ts, now, rate, burst)
return { allowed, string.format("%.17g", tokens), string.format("%.17g", msToNext), string.format("%.17g", msToFull) }
`;

/**
 * Several buckets in one call, for one request or for several at once (the store coalesces the
 * requests of one event-loop turn into one call, redis-store.ts): the groups are decided in
 * order, each as applyTakes of bucket.ts (see its header), each bucket stepped as BUCKET_LUA
 * steps a take, in the same order, with the same constants. A group reads its buckets after the
 * groups before it wrote theirs, so two requests on one bucket are decided as if one after the
 * other. KEYS: every group's buckets, group after group (each a hash {tokens, ts}; distinct
 * within a group). ARGV[1]: now in ms, "" to read TIME (the equivalence tests alone pass one);
 * ARGV[2]: the number of groups G; ARGV[3..G+2]: each group's number of buckets; then four per
 * key: cost, ratePerSec, burst, optional ("1": taken only if it fits and every required take of
 * its group fits; "0": required, all of the group's or none).
 * Reply, per group: {taken 0|1, then per bucket: allowed 0|1 (it fits), remaining, msToNext,
 * msToFull}, the last three as strings.
 */
export const TAKES_LUA = `${BUCKET_PRELUDE}
local now = clock(ARGV[1])
local groups = tonumber(ARGV[2])
local reply = {}
local k = 0
local a = 2 + groups
for g = 1, groups do
  local n = tonumber(ARGV[2 + g])
  local tokens, ts, cost, rate, burst, fits = {}, {}, {}, {}, {}, {}
  local taken = 1
  for i = 1, n do
    local b = a + (i - 1) * 4
    cost[i] = math.max(0, tonumber(ARGV[b + 1]))
    rate[i] = tonumber(ARGV[b + 2])
    burst[i] = tonumber(ARGV[b + 3])
    tokens[i], ts[i] = refilled(KEYS[k + i], now, rate[i], burst[i])
    fits[i] = tokens[i] >= cost[i] - 1e-9 * math.max(1, burst[i])
    if not fits[i] and ARGV[b + 4] ~= "1" then taken = 0 end
  end
  reply[#reply + 1] = taken
  for i = 1, n do
    local t = tokens[i]
    local r = rate[i]
    local epsilon = 1e-9 * math.max(1, burst[i])
    local allowed = 0
    local msToNext = 0
    if fits[i] then
      allowed = 1
      if taken == 1 then
        t = t - cost[i]
        if cost[i] <= 0 and t < 1 - epsilon then msToNext = (1 - t) * 1000 / r end
      end
    elseif cost[i] > 0 then
      msToNext = (cost[i] - t) * 1000 / r
    elseif t < 1 - epsilon then
      msToNext = (1 - t) * 1000 / r
    end
    local msToFull = saved(KEYS[k + i], t, ts[i], now, r, burst[i])
    reply[#reply + 1] = allowed
    reply[#reply + 1] = string.format("%.17g", t)
    reply[#reply + 1] = string.format("%.17g", msToNext)
    reply[#reply + 1] = string.format("%.17g", msToFull)
  end
  k = k + n
  a = a + n * 4
end
return reply
`;

/**
 * Shared by the lease scripts: the current time, and keeping the set alive exactly as long as
 * its last lease (+1 s), so a set whose holders all died vanishes on its own.
 */
const LEASE_PRELUDE = `
local key = KEYS[1]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function keepAlive()
  local last = redis.call("ZRANGE", key, -1, -1, "WITHSCORES")
  if last[2] ~= nil then
    redis.call("PEXPIRE", key, string.format("%.0f", math.ceil(tonumber(last[2]) - now) + 1000))
  end
end
redis.call("ZREMRANGEBYSCORE", key, "-inf", string.format("%.17g", now))
`;

/**
 * KEYS[1]: sorted set, member = lease id, score = expiry (ms, Redis TIME); a score ≤ now has
 * expired. ARGV: id, limit, ttlMs. Re-acquiring a held id renews it. Reply: {acquired, held}.
 */
export const LEASE_ACQUIRE_LUA = `${LEASE_PRELUDE}
local id = ARGV[1]
local limit = tonumber(ARGV[2])
local expiry = string.format("%.17g", now + tonumber(ARGV[3]))
local held = redis.call("ZCARD", key)
local acquired = 0
if redis.call("ZSCORE", key, id) then
  redis.call("ZADD", key, expiry, id)
  acquired = 1
elseif held < limit then
  redis.call("ZADD", key, expiry, id)
  acquired = 1
  held = held + 1
end
keepAlive()
return { acquired, held }
`;

/** ARGV: id, ttlMs. Moves the expiry of a live lease; an expired one is not re-created. Reply: 0|1. */
export const LEASE_RENEW_LUA = `${LEASE_PRELUDE}
local id = ARGV[1]
if not redis.call("ZSCORE", key, id) then
  return 0
end
redis.call("ZADD", key, "XX", string.format("%.17g", now + tonumber(ARGV[2])), id)
keepAlive()
return 1
`;

/**
 * KEYS[1]: a lock (string, value = owner, set by SET NX PX). ARGV: owner. Deletes it only if
 * `owner` still holds it: a holder whose lock expired and was taken by another must not free the
 * new holder's lock, and a GET then DEL from the client could interleave with that takeover.
 * Reply: 1 if deleted, else 0.
 */
export const LOCK_RELEASE_LUA = `
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
`;

/**
 * Backend slots shared by the replicas of a fleet (src/upstream/fleet.ts). KEYS[1]: a hash per
 * pool, one field per replica: its state as JSON {e: expiry ms, d: [queued per band],
 * b: {backend: [claim, inFlight]}}. ARGV: replica id, lease ms, this replica's state (with the
 * claim it wants per backend), the backends' slots as JSON {backend: maxConcurrency}.
 *
 * The invariant, kept atomically here: on each backend, the claims of the live replicas sum to
 * at most its slots. A replica's claim grows only into room no other live claim holds; it
 * shrinks at once to what it wants, but is recorded as no less than its requests in flight, so
 * that others see the slots truly in use. A replica that stops syncing (crashed, cut off) lapses
 * after the lease and its claims return to the fleet. Reply: [granted claims as JSON, the
 * other live replicas' states as JSON strings...].
 */
export const FLEET_SYNC_LUA = `
local key = KEYS[1]
local id = ARGV[1]
local lease = tonumber(ARGV[2])
local mine = cjson.decode(ARGV[3])
local slots = cjson.decode(ARGV[4])
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call("HGETALL", key)
local others = {}
local held = {}
local had = {}
for i = 1, #all, 2 do
  local state = cjson.decode(all[i + 1])
  if all[i] == id then
    had = state.b
  elseif state.e < now then
    redis.call("HDEL", key, all[i])
  else
    others[#others + 1] = all[i + 1]
    for name, v in pairs(state.b) do held[name] = (held[name] or 0) + v[1] end
  end
end
local granted = {}
for name, v in pairs(mine.b) do
  local want, inflight = v[1], v[2]
  local before = 0
  if had[name] then before = had[name][1] end
  local claim = want
  if want > before then
    local room = (slots[name] or 0) - (held[name] or 0)
    claim = math.max(math.min(before, want), math.min(want, room))
    if claim < 0 then claim = 0 end
  end
  granted[name] = claim
  mine.b[name] = { math.max(claim, inflight), inflight }
end
mine.e = now + lease
redis.call("HSET", key, id, cjson.encode(mine))
redis.call("PEXPIRE", key, lease * 4)
local reply = { cjson.encode(granted) }
for i = 1, #others do reply[#reply + 1] = others[i] end
return reply
`;
