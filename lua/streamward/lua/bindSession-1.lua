--[[
  bindSession-1.lua
  Decide atomically which session generation an event for (project, route, key)
  goes to. The first event of a key creates generation 1 ("started"); later
  events reuse the current generation ("queued").

  A reset never happens under a running run. When a reset falls due (session
  timeout, daily reset, idle, a manual reset recorded in field "reset", or a
  forced reason) this script does not open a generation: it records
  reset_pending = <reason> and answers "due". The session's run and inbox live in
  another slot, so the caller checks there whether the generation is quiet (no
  active run, empty inbox): busy, the event joins the current generation and the
  reset stays pending; quiet, the caller calls again in mode "rotate" naming the
  generation it saw, and only one caller can open generation n+1 (the others see
  the new session id and queue there). Mode "clear" drops a pending idle reset
  that the session's own activity disproves (a run ended recently).

  KEYS[1] binding key            sw:{<project>/<route_id>/<key_hash>}:binding

  ARGV[1] session_id prefix      "<route_id>.<key_hash>"; the generation is appended
  ARGV[2] session_timeout_ms     a generation older than this is due (0: no timeout)
  ARGV[3] daily_reset_hour       0..23 (UTC), or -1 for none
  ARGV[4] clock_offset_ms        added to Redis TIME (0 in production; tests move time)
  ARGV[5] key                    the session key as text (kept for display)
  ARGV[6] reset_reason           "" normally; "manual" or "dead" to make a reset due
  ARGV[7] idle_timeout_ms        no event for this long makes a reset due (0: none)
  ARGV[8] mode                   event | rotate | clear
  ARGV[9] expected session_id    rotate / clear: the generation the caller saw

  Returns {1, session_id, generation, "started", previous_session_id, reason}
          {1, session_id, generation, "queued", "", ""}
          {1, session_id, generation, "due", "", reason}
          reason: timeout | daily | idle | manual | dead | "" (first generation)
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local now = redis_now_ms() + tonumber(ARGV[4])
local b = rcall('HMGET', KEYS[1], 'generation', 'session_id', 'created_ms', 'reset',
  'reset_pending', 'last_event_ms')
local gen = tonumber(b[1] or '0')
local mode = ARGV[8]

local function queued()
  rcall('HSET', KEYS[1], 'last_event_ms', now)
  return {OK, b[2], gen, 'queued', '', ''}
end

if gen > 0 and mode == 'clear' then
  if b[2] == ARGV[9] and b[5] == 'idle' then rcall('HDEL', KEYS[1], 'reset_pending') end
  return queued()
end
if gen > 0 and mode == 'rotate' and b[2] ~= ARGV[9] then
  return queued()  -- another event opened the next generation first
end

local reason = ''
if gen > 0 and mode == 'rotate' then
  reason = b[5] or ARGV[6]
  if reason == '' then reason = 'manual' end
elseif gen > 0 then
  local created = tonumber(b[3])
  local last = tonumber(b[6] or b[3])
  local timeout, idle = tonumber(ARGV[2]), tonumber(ARGV[7])
  if ARGV[6] ~= '' then
    reason = ARGV[6]
  elseif b[5] then
    reason = b[5]
  elseif b[4] then
    reason = b[4]
  elseif timeout > 0 and now - created >= timeout then
    reason = 'timeout'
  else
    local hour = tonumber(ARGV[3])
    if hour >= 0 then
      -- the latest reset instant at or before now
      local day = 86400000
      local boundary = math.floor(now / day) * day + hour * 3600000
      if boundary > now then boundary = boundary - day end
      if created < boundary then reason = 'daily' end
    end
    if reason == '' and idle > 0 and now - last >= idle then reason = 'idle' end
  end
  if reason == '' then return queued() end
  rcall('HDEL', KEYS[1], 'reset')
  rcall('HSET', KEYS[1], 'reset_pending', reason, 'last_event_ms', now)
  return {OK, b[2], gen, 'due', '', reason}
end

local prev = b[2] or ''
gen = gen + 1
local sid = ARGV[1] .. '.' .. gen
rcall('HDEL', KEYS[1], 'reset', 'reset_pending')
rcall('HSET', KEYS[1], 'generation', gen, 'session_id', sid, 'created_ms', now,
  'last_event_ms', now, 'key', ARGV[5])
if prev ~= '' then
  rcall('HSET', KEYS[1], 'reason:' .. (gen - 1), reason)
end
return {OK, sid, gen, 'started', prev, reason}
