--[[
  forceRelease-3.lua
  Break-glass release: deletes the lease whoever holds it and bumps the epoch,
  so the former owner's token is stale and every write it attempts is refused.

  KEYS[1] lease key              sw:{S}:lease
  KEYS[2] epoch key              sw:{S}:epoch
  KEYS[3] meta key               sw:{S}:meta

  ARGV[1] reason                 free text kept in meta (last_release_reason)

  Returns {1, old_replica, old_incarnation, old_token, new_epoch}
          old_* are "" / 0 when no lease was held
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local now = redis_now_ms()
local h = rcall('HMGET', KEYS[1], 'replica', 'incarnation', 'token')
rcall('DEL', KEYS[1])
local epoch = rcall('INCR', KEYS[2])
rcall('HINCRBY', KEYS[3], 'transitions', 1)
rcall('HSET', KEYS[3], 'owner_changed_ms', now, 'last_release_reason', ARGV[1])
return {OK, h[1] or '', h[2] or '', tonumber(h[3] or '0'), epoch}
