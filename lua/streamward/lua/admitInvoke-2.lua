--[[
  admitInvoke-2.lua
  A project's invoke quotas, checked before an enqueue in one call: the invokes-per-second
  token bucket and the live-sessions limit. Runs only when the project has a limit
  configured (the default has none, and skips this call entirely). The project's keys
  share its hash tag, another slot than the session's: the enqueue cannot do this itself
  on Cluster.

  Live sessions: a session counted here is live until it is deleted or retired
  (Indexes.retire_session removes it). A session not counted yet is counted now, when
  the project is under its limit (a reservation: the enqueue that follows may create it);
  at the limit the enqueue is told it may not create a session (warm invokes of counted
  or existing sessions still pass).

  KEYS[1] bucket key             sw:quota:{P}:bucket  (hash: tokens, ts_ms)
  KEYS[2] live sessions key      sw:quota:{P}:live    (zset: session ref -> counted ms)

  ARGV[1] mode                   take | refund (give back a token whose enqueue was refused)
  ARGV[2] rate per s             tokens added per second; 0 = no rate limit
  ARGV[3] burst                  bucket size (at least 1 when rate > 0)
  ARGV[4] max live sessions      0 = no limit
  ARGV[5] session ref            project/session_id
  ARGV[6] now ms                 "" = Redis TIME (tests pass a time to drive the refill)

  Returns {1, may_create, reserved, tokens_left, live}   take: admitted (tokens_left as
                                                  text, "-1" without a rate limit; live =
                                                  counted sessions, -1 without a limit)
          {1, tokens_left}                         refund
          {-11, retry_after_ms, tokens_left}       RATE_LIMITED: the bucket is empty, nothing
                                                   written
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local now
if ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  now = redis_now_ms()
end
local function level()
  local b = rcall('HMGET', KEYS[1], 'tokens', 'ts_ms')
  if not b[1] then
    return burst
  end
  local elapsed = math.max(0, now - tonumber(b[2]))
  return math.min(burst, tonumber(b[1]) + elapsed * rate / 1000)
end
local function store(tokens)
  rcall('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts_ms', now)
  -- a full bucket is the same as none: let an idle project's key go
  rcall('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
end
if ARGV[1] == 'refund' then
  if rate <= 0 then
    return {OK, '-1'}
  end
  local tokens = math.min(burst, level() + 1)
  store(tokens)
  return {OK, tostring(tokens)}
end
local tokens = -1
if rate > 0 then
  tokens = level()
  if tokens < 1 then
    return {RATE_LIMITED, math.ceil((1 - tokens) * 1000 / rate), tostring(tokens)}
  end
end
local may_create, reserved, live = 1, 0, -1
local max_live = tonumber(ARGV[4])
if max_live > 0 then
  live = rcall('ZCARD', KEYS[2])
  if not rcall('ZSCORE', KEYS[2], ARGV[5]) then
    if live >= max_live then
      may_create = 0
    else
      rcall('ZADD', KEYS[2], now, ARGV[5])
      reserved = 1
      live = live + 1
    end
  end
end
if rate > 0 then
  tokens = tokens - 1
  store(tokens)
end
return {OK, may_create, reserved, tostring(tokens), live}
