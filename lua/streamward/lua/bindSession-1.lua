--[[
  bindSession-1.lua
  Decide atomically which session an event for (project, route, key) goes to.
  The first event of a key creates generation 1 ("started"); later events reuse
  the active generation ("queued") until it expires (session timeout, daily
  reset, or a manual / dead reset), when the next event opens generation n+1.
  A manual reset is recorded on the binding (field "reset") by the API and
  taken here by the next event.
  Two events for a new key arriving at once therefore end in one session.

  KEYS[1] binding key            sw:{<project>/<route_id>/<key_hash>}:binding

  ARGV[1] session_id prefix      "<route_id>.<key_hash>"; the generation is appended
  ARGV[2] session_timeout_ms     a generation older than this has expired
  ARGV[3] daily_reset_hour       0..23 (UTC), or -1 for none
  ARGV[4] clock_offset_ms        added to Redis TIME (0 in production; tests move time)
  ARGV[5] key                    the session key as text (kept for display)
  ARGV[6] reset_reason           "" normally; "manual" or "dead" to force a new generation

  Returns {1, session_id, generation, "started", previous_session_id, reason}
          {1, session_id, generation, "queued", "", ""}
          reason: timeout | daily | manual | dead | "" (first generation)
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local now = redis_now_ms() + tonumber(ARGV[4])
local b = rcall('HMGET', KEYS[1], 'generation', 'session_id', 'created_ms', 'reset')
local gen = tonumber(b[1] or '0')
local reason = ''
if gen > 0 then
  local created = tonumber(b[3])
  if ARGV[6] ~= '' then
    reason = ARGV[6]
  elseif b[4] then
    reason = b[4]
  elseif now - created >= tonumber(ARGV[2]) then
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
  end
  if reason == '' then
    rcall('HSET', KEYS[1], 'last_event_ms', now)
    return {OK, b[2], gen, 'queued', '', ''}
  end
end
local prev = b[2] or ''
gen = gen + 1
local sid = ARGV[1] .. '.' .. gen
rcall('HDEL', KEYS[1], 'reset')
rcall('HSET', KEYS[1], 'generation', gen, 'session_id', sid, 'created_ms', now,
  'last_event_ms', now, 'key', ARGV[5])
if prev ~= '' then
  rcall('HSET', KEYS[1], 'reason:' .. (gen - 1), reason)
end
return {OK, sid, gen, 'started', prev, reason}
