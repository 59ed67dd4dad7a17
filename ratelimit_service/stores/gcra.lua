#!lua
--[[
GCRA token buckets, all-or-nothing across the keys of one call.

The same arithmetic as ratelimit_service/limits/bucket.py, operation for operation, so both
stores reach the same decisions. Time is Redis's own clock (TIME), never the caller's.

KEYS    the bucket keys, all declared (in Redis Cluster the store sends the keys of one
        slot per call, so the cluster routes the call by them and answers MOVED or ASK).
ARGV    "take" or "refund", the number of buckets n, then four values per bucket:
        interval_us, capacity, cost, mode ("0" shadow, "1" enforce, "2" quota:
        limits/bucket.py CallMode).
State   one string per key, "<tat_us> <seen_us>", expiring when the bucket is full again.

take    returns {commit, then allowed, remaining, reset_us per key}. commit is 1 when no
        enforce bucket denied and, if there are quota buckets, at least one of them
        admitted (limits/bucket.py must_commit); only then is anything written.
refund  gives back what an earlier committed take consumed; returns {1}.
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local SLACK = 1e-9

local function load(key)
  local raw = redis.call('GET', key)
  if not raw then
    return 0, 0
  end
  local tat, seen = string.match(raw, '^(%S+) (%S+)$')
  return tonumber(tat) or 0, tonumber(seen) or 0
end

local function save(key, tat, seen)
  local clock = math.max(now, seen)
  local ttl = math.ceil((tat - clock) / 1000) + 1
  redis.call('SET', key, string.format('%.17g %.17g', tat, seen), 'PX', ttl)
end

local n = tonumber(ARGV[2])
local keys = KEYS

local function arg(i, field)
  return ARGV[3 + (i - 1) * 4 + field]
end

if ARGV[1] == 'refund' then
  for i = 1, n do
    local interval = tonumber(arg(i, 0))
    local cost = tonumber(arg(i, 2))
    local tat, seen = load(keys[i])
    local clock = math.max(now, seen)
    local new_tat = tat - cost * interval
    if new_tat <= clock then
      redis.call('DEL', keys[i])
    else
      save(keys[i], new_tat, seen)
    end
  end
  return {1}
end

local commit = 1
local quota_seen, quota_allowed = false, false
local verdicts = {}
for i = 1, n do
  local interval = tonumber(arg(i, 0))
  local capacity = tonumber(arg(i, 1))
  local cost = tonumber(arg(i, 2))
  local mode = arg(i, 3)
  local tat, seen = load(keys[i])
  local tau = capacity * interval
  local clock = math.max(now, seen)
  local base = math.max(tat, clock)
  local need = cost
  if need <= 0 then
    need = 1
  end
  local remaining_now = math.floor((tau - (base - clock)) / interval + SLACK)
  local reset_now = math.ceil(base - clock)
  local v = {allowed = 0, remaining = remaining_now, reset = reset_now,
             remaining_now = remaining_now, reset_now = reset_now}
  local denied = need > capacity or (base - clock) + need * interval > tau
  if mode == '2' then
    quota_seen = true
    quota_allowed = quota_allowed or not denied
  end
  if denied then
    if mode == '1' then
      commit = 0
    end
  else
    v.allowed = 1
    if cost > 0 then
      local new_tat = base + cost * interval
      v.remaining = math.floor((tau - (new_tat - clock)) / interval + SLACK)
      v.reset = math.ceil(new_tat - clock)
      v.tat = new_tat
      v.seen = clock
    end
  end
  verdicts[i] = v
end

if quota_seen and not quota_allowed then
  commit = 0
end

local out = {commit}
for i = 1, n do
  local v = verdicts[i]
  local remaining, reset = v.remaining_now, v.reset_now
  if commit == 1 and v.allowed == 1 then
    remaining, reset = v.remaining, v.reset
    if v.tat then
      save(keys[i], v.tat, v.seen)
    end
  end
  out[#out + 1] = v.allowed
  out[#out + 1] = math.max(remaining, 0)
  out[#out + 1] = reset
end
return out
