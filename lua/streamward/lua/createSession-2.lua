--[[
  createSession-2.lua
  Create a session explicitly (POST /v1/sessions): its meta in one step, refused
  when a live session has the id already. A session retired by deletion or
  expiry (meta delete_after_ms set) is created afresh: its meta and inbox lose
  their expiry and revived = 1 tells the caller to keep its other keys too (the
  log and the epoch stay: tokens never go backwards).

  KEYS[1] meta key               sw:{S}:meta
  KEYS[2] inbox key              sw:{S}:inbox

  ARGV[1] project
  ARGV[2] session_id
  ARGV[3] title                  "" = none
  ARGV[4] metadata               JSON object text
  ARGV[5] session type
  ARGV[6] status                 the new session's status (idle)
  ARGV[7] create key             the caller's Idempotency-Key ("" = none)

  Returns {1, created_ms, revived}               created
          {2, created_ms, same_key}              DUPLICATE: a live session has this id;
                                                 same_key = 1 when it was created with
                                                 create key ARGV[7] (an idempotent repeat)
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local info = rcall('HMGET', KEYS[1], 'created_ms', 'delete_after_ms', 'create_key')
if info[1] and not info[2] then
  local same = 0
  if ARGV[7] ~= '' and info[3] == ARGV[7] then
    same = 1
  end
  return {DUPLICATE, info[1], same}
end
local revived = 0
if info[2] then
  revived = 1
  -- a new life: the previous one's retirement and description go
  rcall('HDEL', KEYS[1], 'delete_after_ms', 'reason', 'ended_ms', 'title', 'metadata',
    'create_key', 'activated_token')
  rcall('PERSIST', KEYS[1])
  rcall('PERSIST', KEYS[2])
end
local now = redis_now_ms()
rcall('HSET', KEYS[1], 'project', ARGV[1], 'session_id', ARGV[2], 'created_ms', now,
  'updated_ms', now, 'status', ARGV[6], 'type', ARGV[5], 'metadata', ARGV[4])
if ARGV[3] ~= '' then
  rcall('HSET', KEYS[1], 'title', ARGV[3])
end
if ARGV[7] ~= '' then
  rcall('HSET', KEYS[1], 'create_key', ARGV[7])
end
return {OK, now, revived}
