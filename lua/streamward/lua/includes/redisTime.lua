-- includes/redisTime.lua: Redis server time in ms. Leases never trust a client's clock.
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
