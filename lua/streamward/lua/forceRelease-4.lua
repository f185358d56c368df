--[[
  forceRelease-4.lua
  Break-glass release: deletes the lease whoever holds it and bumps the epoch,
  so the former owner's token is stale and every write it attempts is refused.
  Records who was released and why: in meta (the next owner reads it to mark the
  interrupted run force_release, with the operator's reason) and in the session's
  ownership history. Re-queueing is the caller's next step (sw:work and the
  pending index live in other slots); the pending-index sweep covers a caller
  that dies in between.

  KEYS[1] lease key              sw:{S}:lease
  KEYS[2] epoch key              sw:{S}:epoch
  KEYS[3] meta key               sw:{S}:meta
  KEYS[4] history key            sw:{S}:history

  ARGV[1] reason                 free text kept in meta (last_release_reason) and history
  ARGV[2] kind                   force (operator) | deleted (session deletion)

  Returns {1, old_replica, old_incarnation, old_token, new_epoch}
          old_* are "" / 0 when no lease was held
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
--- @include "includes/history"
local rcall = redis.call
local now = redis_now_ms()
local h = rcall('HMGET', KEYS[1], 'replica', 'incarnation', 'token')
rcall('DEL', KEYS[1])
local epoch = rcall('INCR', KEYS[2])
rcall('HINCRBY', KEYS[3], 'transitions', 1)
rcall('HSET', KEYS[3], 'owner_changed_ms', now, 'last_release_reason', ARGV[1],
  'release_kind', ARGV[2], 'force_released_ms', now)
if h[3] then
  -- the token whose run (if any) the next owner marks interrupted by force_release
  rcall('HSET', KEYS[3], 'force_released_token', h[3])
end
rcall('XADD', KEYS[4], 'MAXLEN', '~', HISTORY_MAXLEN, '*',
  unpack(history('force_released', h[1] or '', h[2] or '', h[3] or '0', ARGV[1], now)))
return {OK, h[1] or '', h[2] or '', tonumber(h[3] or '0'), epoch}
