--[[
  renewLeases-n.lua
  Renew many session leases of one replica in one call (variadic: 1..n keys,
  which on Redis Cluster the caller groups by slot). Cost is one round trip per
  chunk, not per lease. The common case costs one HGET of the lease's owner
  signature and one PEXPIRE per key (no write of renewed_ms: readLease derives it
  from the remaining TTL and the ttl_ms stored at acquisition). It writes nothing
  but PEXPIRE (not denyoom, grows nothing), so it keeps working in a full Redis.

  KEYS[1..n] lease keys          sw:{S}:lease, one per session

  ARGV[1] replica_id
  ARGV[2] incarnation
  ARGV[3] ttl_ms                 session lease hard TTL
  ARGV[4..3+n] token             the token the caller holds for KEYS[i]

  Returns {now_ms, r1, ..., rn}  ri = 1 renewed, 0 gone (expired or released),
                                 -2 held by another owner, -3 our token is stale
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local now = redis_now_ms()
local out = {now}
local prefix = ARGV[1] .. '|' .. ARGV[2] .. '|'
for i = 1, #KEYS do
  local owner = rcall('HGET', KEYS[i], 'owner')
  if owner == prefix .. ARGV[3 + i] then
    rcall('PEXPIRE', KEYS[i], ARGV[3])
    out[i + 1] = OK
  elseif not owner then
    out[i + 1] = 0
  elseif string.sub(owner, 1, #prefix) ~= prefix then
    out[i + 1] = NOT_OWNER
  else
    out[i + 1] = STALE_TOKEN
  end
end
return out
