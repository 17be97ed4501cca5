/**
 * The Lua of RedisJobQueue: every transition of a job is one script, atomic on Redis TIME (the
 * master's clock, never a replica's), so two gateway replicas can never both take a job, end
 * it twice, or count it twice.
 *
 * Keys (P = `${keyPrefix}jobs:{${name}}:`, passed as KEYS[1]; every key starts with P and so
 * shares its hash tag, one Cluster slot: the scripts build the other key names from P):
 *   P job:<id>            hash, the job: id tenant url body group seq customId runAt expiresAt
 *                         state createdAt startedAt finishedAt attempts, owner and leaseUntil
 *                         while running, status headers (JSON) result once ended
 *   P ready               zset, queued jobs by runAt
 *   P leased              zset, running jobs by lease expiry
 *   P deadlines           zset, unfinished jobs with an expiresAt, by expiresAt
 *   P tenants             hash, tenant -> unfinished (queued + running) jobs
 *   P reservations        hash, token -> {t: tenant, n: jobs still to add, x: expiry} (cjson):
 *                         the cap held for an enqueue written in several calls
 *   P group:<g>:lines     zset, the group's job ids by seq
 *   P group:<g>:counts    hash, total completed failed cancelled lastFinishedAt
 * and one pub/sub channel, P wake: ENQUEUE_LUA and RELEASE_LUA publish on it when a job they
 * write is due now, so that idle replicas claim at once instead of polling (the runner).
 * A job's record expires (PEXPIRE) ttl after it ends; the indexes never hold an ended job but
 * `lines`, whose ids outlive their records: readers skip (and drop) an id without a record. A
 * group's two keys expire ttl after its last job ended, once none is unfinished.
 *
 * Every script: KEYS[1] = P, ARGV[1] = ms to keep the record of a job that expired, then its
 * own arguments. Every script first sweeps (at most SWEEP_MAX jobs a call, so a batch whose
 * window closed does not stall Redis): unfinished jobs past expiresAt end `expired`; and a
 * script about given jobs ends each of them that is past its expiresAt (expire_if_due), so no
 * answer about a job shows it unfinished past its window, whatever the sweep has left.
 *
 * Numbers: times are whole ms; a Lua number goes back to Redis through fmt ("%.0f"), never
 * tostring (which writes 1e+12 notation past 14 digits).
 */

const PRELUDE = `
local P = KEYS[1]
local EXPIRED_TTL = ARGV[1]
local SWEEP_MAX = 200
local t = redis.call("TIME")
local NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format("%.0f", n) end
local function job_key(id) return P .. "job:" .. id end
local function group_key(group, part) return P .. "group:" .. group .. ":" .. part end
local function unfinished(state) return state == "queued" or state == "running" end

-- What a tenant's cap counts: its own jobs (async requests) apart from its batch lines, so that
-- a large batch never fills the cap of the tenant's async requests (counted, not capped).
local function counted(tenant, group)
  if group and group ~= "" then return tenant .. "\\0lines" end
  return tenant
end

local function add_unfinished(tenant, delta)
  if redis.call("HINCRBY", P .. "tenants", tenant, delta) <= 0 then
    redis.call("HDEL", P .. "tenants", tenant)
  end
end

-- The one place a job ends: indexes, the tenant's count, the group's counts, the expiry.
local function end_job(id, state, ttl)
  local key = job_key(id)
  local saved = redis.call("HMGET", key, "tenant", "group")
  redis.call("HSET", key, "state", state, "finishedAt", fmt(NOW))
  redis.call("HDEL", key, "owner", "leaseUntil")
  redis.call("PEXPIRE", key, ttl)
  redis.call("ZREM", P .. "ready", id)
  redis.call("ZREM", P .. "leased", id)
  redis.call("ZREM", P .. "deadlines", id)
  add_unfinished(counted(saved[1], saved[2]), -1)
  local group = saved[2]
  if not group then return end
  local counts = group_key(group, "counts")
  local field = "failed"
  if state == "succeeded" then field = "completed" elseif state == "cancelled" then field = "cancelled" end
  redis.call("HINCRBY", counts, field, 1)
  redis.call("HSET", counts, "lastFinishedAt", fmt(NOW))
  local c = redis.call("HMGET", counts, "total", "completed", "failed", "cancelled")
  local ended = (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0) + (tonumber(c[4]) or 0)
  if ended >= (tonumber(c[1]) or 0) then
    redis.call("PEXPIRE", counts, ttl)
    redis.call("PEXPIRE", group_key(group, "lines"), ttl)
  end
end

local function sweep()
  local due = redis.call("ZRANGEBYSCORE", P .. "deadlines", "-inf", fmt(NOW), "LIMIT", 0, SWEEP_MAX)
  for _, id in ipairs(due) do end_job(id, "expired", EXPIRED_TTL) end
end

-- One job past its window ends now, whatever the sweep's backlog: a call about a job never
-- sees it unfinished past its expiresAt.
local function expire_if_due(id)
  local s = redis.call("HMGET", job_key(id), "state", "expiresAt")
  if unfinished(s[1]) and s[2] and tonumber(s[2]) <= NOW then end_job(id, "expired", EXPIRED_TTL) end
end

-- The job's owner when it is running (a lapsed lease is still its holder's until a claim).
local function held(id, owner)
  expire_if_due(id)
  local s = redis.call("HMGET", job_key(id), "state", "owner")
  return s[1] == "running" and s[2] == owner
end

-- The tenant's jobs held by live reservations (expired ones are dropped).
local function reserved(tenant)
  local all = redis.call("HGETALL", P .. "reservations")
  local n = 0
  for i = 1, #all, 2 do
    local r = cjson.decode(all[i + 1])
    if r.x <= NOW then redis.call("HDEL", P .. "reservations", all[i])
    elseif r.t == tenant then n = n + r.n end
  end
  return n
end

-- Idle replicas claim at once (src/jobs/runner.ts): a job is due now. pcall: a user whose ACL
-- denies the channel still submits (the replicas then find the job at their next look).
local function wake()
  redis.pcall("PUBLISH", P .. "wake", "1")
end

local function count_of(tenant)
  return tonumber(redis.call("HGET", P .. "tenants", tenant) or "0")
end

sweep()
`;

/**
 * ARGV: tenant, cap, token, holdMs, then 8 per job: id url body group seq customId runAt
 * expiresAt ("" when absent). Token "": the cap is checked here, for these jobs. Otherwise the
 * jobs come out of the reservation `token` (which must still be there) and push its expiry to
 * holdMs from now. Nothing is written unless every job is: an id that exists refuses the call.
 * A wake when any of the jobs is due now.
 * Reply: {1, unfinished} added; {0, unfinished} over the cap; {-1, id} the id exists;
 * {-2, 0} the reservation is gone. `unfinished`: the tenant's jobs, reserved ones included.
 */
export const ENQUEUE_LUA = `${PRELUDE}
local tenant, cap, token, holdMs = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local FIRST, PER_JOB = 6, 8
local n = (#ARGV - FIRST + 1) / PER_JOB
-- One call is all lines of groups or none (checkNewJobs): the first job says which count.
local count = counted(tenant, ARGV[FIRST + 3])
for i = FIRST, #ARGV, PER_JOB do
  if redis.call("EXISTS", job_key(ARGV[i])) == 1 then return {-1, ARGV[i]} end
end
if token == "" then
  local before = count_of(count) + reserved(count)
  if n > 0 and before + n > cap then return {0, before} end
else
  local saved = redis.call("HGET", P .. "reservations", token)
  if not saved then return {-2, 0} end
  local r = cjson.decode(saved)
  if r.n - n <= 0 then
    redis.call("HDEL", P .. "reservations", token)
  else
    r.n = r.n - n
    r.x = NOW + holdMs
    redis.call("HSET", P .. "reservations", token, cjson.encode(r))
  end
end
-- The indexes are written once per call, not once per job: one ZADD of many members.
local ready, deadlines, groups = {}, {}, {}
for i = FIRST, #ARGV, PER_JOB do
  local id, url, body, group, seq, customId, runAt, expiresAt = unpack(ARGV, i, i + PER_JOB - 1)
  if runAt == "" then runAt = fmt(NOW) end
  local fields = {"id", id, "tenant", tenant, "url", url, "body", body, "runAt", runAt, "state", "queued",
    "createdAt", fmt(NOW), "attempts", "0"}
  if customId ~= "" then table.insert(fields, "customId") table.insert(fields, customId) end
  if expiresAt ~= "" then
    table.insert(fields, "expiresAt") table.insert(fields, expiresAt)
    table.insert(deadlines, expiresAt) table.insert(deadlines, id)
  end
  if group ~= "" then
    local g = groups[group]
    if g == nil then
      g = {total = tonumber(redis.call("HGET", group_key(group, "counts"), "total") or "0"), lines = {}}
      groups[group] = g
    end
    -- A line without a number goes after the group's others.
    if seq == "" then seq = fmt(g.total) end
    g.total = g.total + 1
    table.insert(g.lines, seq) table.insert(g.lines, id)
    table.insert(fields, "group") table.insert(fields, group)
    table.insert(fields, "seq") table.insert(fields, seq)
  end
  redis.call("HSET", job_key(id), unpack(fields))
  table.insert(ready, runAt) table.insert(ready, id)
end
if #ready > 0 then redis.call("ZADD", P .. "ready", unpack(ready)) end
for i = 1, #ready, 2 do
  if tonumber(ready[i]) <= NOW then wake() break end
end
if #deadlines > 0 then redis.call("ZADD", P .. "deadlines", unpack(deadlines)) end
for group, g in pairs(groups) do
  local counts, lines = group_key(group, "counts"), group_key(group, "lines")
  redis.call("ZADD", lines, unpack(g.lines))
  redis.call("HSET", counts, "total", fmt(g.total))
  redis.call("PERSIST", counts)
  redis.call("PERSIST", lines)
end
add_unfinished(count, n)
return {1, count_of(count) + reserved(count)}
`;

/**
 * Holds the cap for an enqueue too large for one call. ARGV: the count (the tenant, or its
 * lines: countKey in redis-queue.ts), cap, token, n, holdMs.
 * Reply: {1, unfinished} held (these n included); {0, unfinished} over the cap.
 */
export const RESERVE_LUA = `${PRELUDE}
local tenant, cap, token, n, holdMs = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local before = count_of(tenant) + reserved(tenant)
if before + n > cap then return {0, before} end
redis.call("HSET", P .. "reservations", token, cjson.encode({t = tenant, n = n, x = NOW + holdMs}))
return {1, before + n}
`;

/**
 * Undoes part of a failed enqueue: drops the reservation `token` and every job of `ids` still
 * unfinished, as if never added (an ended one ran: it stays). ARGV: token, ids... Reply: how
 * many jobs went.
 */
export const WITHDRAW_LUA = `${PRELUDE}
redis.call("HDEL", P .. "reservations", ARGV[2])
local removed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = job_key(id)
  local s = redis.call("HMGET", key, "state", "tenant", "group")
  if unfinished(s[1]) then
    redis.call("ZREM", P .. "ready", id)
    redis.call("ZREM", P .. "leased", id)
    redis.call("ZREM", P .. "deadlines", id)
    add_unfinished(counted(s[2], s[3]), -1)
    if s[3] then
      redis.call("ZREM", group_key(s[3], "lines"), id)
      redis.call("HINCRBY", group_key(s[3], "counts"), "total", -1)
    end
    redis.call("DEL", key)
    removed = removed + 1
  end
end
return removed
`;

/**
 * ARGV: owner, leaseMs, max. The due jobs (queued with runAt passed, or running with a lapsed
 * lease: those are few, the runs of replicas that died, and ordered by expiry, so all of them
 * up to LAPSED_MAX are candidates) in runAt order, then id; the first `max` now run under
 * owner's lease. Reply: their records (HGETALL each).
 */
export const CLAIM_LUA = `${PRELUDE}
local owner, leaseMs, max = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local LAPSED_MAX = 1000
if max <= 0 then return {} end
local due = {}
local queued = redis.call("ZRANGEBYSCORE", P .. "ready", "-inf", fmt(NOW), "WITHSCORES", "LIMIT", 0, max)
for i = 1, #queued, 2 do table.insert(due, {id = queued[i], runAt = tonumber(queued[i + 1])}) end
local lapsed = redis.call("ZRANGEBYSCORE", P .. "leased", "-inf", fmt(NOW), "LIMIT", 0, LAPSED_MAX)
for _, id in ipairs(lapsed) do
  table.insert(due, {id = id, runAt = tonumber(redis.call("HGET", job_key(id), "runAt"))})
end
table.sort(due, function(a, b)
  if a.runAt ~= b.runAt then return a.runAt < b.runAt end
  return a.id < b.id
end)
local claimed = {}
for _, candidate in ipairs(due) do
  if #claimed == max then break end
  local id = candidate.id
  local key = job_key(id)
  local expiresAt = tonumber(redis.call("HGET", key, "expiresAt"))
  if expiresAt ~= nil and expiresAt <= NOW then
    -- Past its window, missed by a sweep that had more than SWEEP_MAX to end.
    end_job(id, "expired", EXPIRED_TTL)
  else
    local leaseUntil = fmt(NOW + leaseMs)
    redis.call("ZREM", P .. "ready", id)
    redis.call("ZADD", P .. "leased", leaseUntil, id)
    redis.call("HSET", key, "state", "running", "owner", owner, "leaseUntil", leaseUntil, "startedAt", fmt(NOW))
    redis.call("HINCRBY", key, "attempts", 1)
    table.insert(claimed, redis.call("HGETALL", key))
  end
end
return claimed
`;

/** ARGV: owner, leaseMs, ids... Extends the leases owner holds. Reply: the ids it does not hold. */
export const RENEW_LUA = `${PRELUDE}
local owner, leaseMs = ARGV[2], tonumber(ARGV[3])
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if held(id, owner) then
    local leaseUntil = fmt(NOW + leaseMs)
    redis.call("ZADD", P .. "leased", leaseUntil, id)
    redis.call("HSET", job_key(id), "leaseUntil", leaseUntil)
  else
    table.insert(lost, id)
  end
end
return lost
`;

/** ARGV: id, owner, state, status, headers (JSON), body, ttlMs. Reply: 1 ended, 0 not held. */
export const FINISH_LUA = `${PRELUDE}
local id, owner = ARGV[2], ARGV[3]
if not held(id, owner) then return 0 end
redis.call("HSET", job_key(id), "status", ARGV[5], "headers", ARGV[6], "result", ARGV[7])
end_job(id, ARGV[4], ARGV[8])
return 1
`;

/**
 * ARGV: id, owner, runAt, due ("1": runAt has passed on the caller's clock, which may run a little
 * ahead of Redis's). Reply: 1 queued again (a wake when due now), 0 not held.
 */
export const RELEASE_LUA = `${PRELUDE}
local id, owner, runAt, due = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not held(id, owner) then return 0 end
redis.call("HSET", job_key(id), "state", "queued", "runAt", runAt)
redis.call("HDEL", job_key(id), "owner", "leaseUntil")
redis.call("ZREM", P .. "leased", id)
redis.call("ZADD", P .. "ready", runAt, id)
if due == "1" or tonumber(runAt) <= NOW then wake() end
return 1
`;

/** ARGV: id, ttlMs. Ends the job cancelled if unfinished. Reply: its record (empty: none). */
export const CANCEL_LUA = `${PRELUDE}
local id = ARGV[2]
expire_if_due(id)
local state = redis.call("HGET", job_key(id), "state")
if unfinished(state) then end_job(id, "cancelled", ARGV[3]) end
return redis.call("HGETALL", job_key(id))
`;

/**
 * ARGV: group, ttlMs, from (a ZRANGEBYSCORE min: "0", "(41"), max lines to look at. Cancels the
 * unfinished ones among the next lines. Reply: {cancelled, last seq looked at, or "" at the end}.
 */
export const CANCEL_GROUP_LUA = `${PRELUDE}
local group, ttl, from, chunk = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local lines = group_key(group, "lines")
local page = redis.call("ZRANGEBYSCORE", lines, from, "+inf", "WITHSCORES", "LIMIT", 0, chunk)
local cancelled = 0
for i = 1, #page, 2 do
  local id = page[i]
  expire_if_due(id)
  local state = redis.call("HGET", job_key(id), "state")
  if not state then redis.call("ZREM", lines, id)
  elseif unfinished(state) then
    end_job(id, "cancelled", ttl)
    cancelled = cancelled + 1
  end
end
if #page < 2 * chunk then return {cancelled, ""} end
return {cancelled, page[#page]}
`;

/** ARGV: group. Reply: {total, completed, failed, cancelled, lastFinishedAt} (false: none). */
export const COUNTS_LUA = `${PRELUDE}
return redis.call("HMGET", group_key(ARGV[2], "counts"), "total", "completed", "failed", "cancelled", "lastFinishedAt")
`;

/**
 * ARGV: group, fromSeq, limit. Reply: the records of the next `limit` lines from fromSeq in
 * seq order; an id whose record expired is dropped from the index and skipped.
 */
export const LIST_LUA = `${PRELUDE}
local lines = group_key(ARGV[2], "lines")
local from, limit = ARGV[3], tonumber(ARGV[4])
local out = {}
while #out < limit do
  local page = redis.call("ZRANGEBYSCORE", lines, from, "+inf", "WITHSCORES", "LIMIT", 0, limit - #out)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    expire_if_due(page[i])
    local record = redis.call("HGETALL", job_key(page[i]))
    if #record == 0 then redis.call("ZREM", lines, page[i]) else table.insert(out, record) end
    from = "(" .. page[i + 1]
  end
end
return out
`;

/** No arguments. Reply: queued jobs whose runAt has passed. */
export const DEPTH_LUA = `${PRELUDE}
return redis.call("ZCOUNT", P .. "ready", "-inf", fmt(NOW))
`;

/** ARGV: id. Reply: the record (empty: none). */
export const GET_LUA = `${PRELUDE}
expire_if_due(ARGV[2])
return redis.call("HGETALL", job_key(ARGV[2]))
`;
