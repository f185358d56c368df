-- includes/ingestEntries.lua: the fenced, idempotent append of one run's entries
-- (ingestEntries-5's body, documented there), shared with ingestAdvance-7, which consumes
-- the run's input after it. The arguments are KEYS indexes (the two scripts order their
-- KEYS differently) and the ARGV index of the first entry; ARGV[1..4] are token, run_id,
-- n and owner in both, then 4 per entry from ARGV[first].
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local function ingest_entries(epoch_k, log_k, meta_k, runs_k, lease_k, first)
  local rcall = redis.call
  local epoch = tonumber(rcall('GET', KEYS[epoch_k]) or '0')
  local token = tonumber(ARGV[1])
  if token == nil or token < 1 or token ~= epoch then
    return {STALE_TOKEN, epoch}
  end
  if ARGV[4] ~= '' and rcall('HGET', KEYS[lease_k], 'owner') ~= ARGV[4] then
    return {NOT_OWNER}
  end
  local now = redis_now_ms()

  local last = 0
  local tail = rcall('XREVRANGE', KEYS[log_k], '+', '-', 'COUNT', 1)
  if tail[1] then
    last = tonumber(string.match(tail[1][1], '^(%d+)'))
  end

  local n = tonumber(ARGV[3])
  -- validate the whole batch first so a gap writes nothing
  local expect = last
  for i = 0, n - 1 do
    local seq = tonumber(ARGV[first + i * 4])
    if seq > expect + 1 then
      return {SEQ_GAP, last, seq}
    end
    if seq == expect + 1 then
      expect = seq
    end
  end

  local run_id = ARGV[2]
  -- keep in step with TERMINAL_TYPES (lua/streams.py): run.merged ends an input another run absorbed
  local terminal = {['run.completed'] = 1, ['run.failed'] = 1, ['run.cancelled'] = 1, ['run.merged'] = 1}
  local accepted, dups = 0, 0
  for i = 0, n - 1 do
    local b = first + i * 4
    local seq = tonumber(ARGV[b])
    if seq <= last then
      dups = dups + 1
    else
      local etype, data, ts = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
      if ts == '' then ts = tostring(now) end
      local id = rcall('XADD', KEYS[log_k], seq .. '-0', 'seq', seq, 'type', etype, 'run_id', run_id,
        'token', token, 'data', data, 'ts', ts)
      last = seq
      accepted = accepted + 1
      if string.sub(etype, 1, 4) == 'run.' and etype ~= 'run.output' then
        local state = {}
        local raw = rcall('HGET', KEYS[runs_k], run_id)
        if raw then state = cjson.decode(raw) end
        state['status'] = string.sub(etype, 5)
        state['token'] = token
        state['updated_ms'] = now
        state['last_id'] = id
        if etype == 'run.started' then
          state['started_id'] = id
          local ok, d = pcall(cjson.decode, data)
          if ok and type(d) == 'table' then
            state['replica_id'] = d['replica_id']
            state['attempt'] = d['attempt']
          end
          rcall('HSET', KEYS[meta_k], 'active_run_id', run_id)
        elseif terminal[etype] or etype == 'run.interrupted' then
          if rcall('HGET', KEYS[meta_k], 'active_run_id') == run_id then
            rcall('HDEL', KEYS[meta_k], 'active_run_id')
          end
        end
        rcall('HSET', KEYS[runs_k], run_id, cjson.encode(state))
      end
    end
  end
  rcall('HSET', KEYS[meta_k], 'last_seq', last, 'updated_ms', now)
  return {OK, accepted, dups, last}
end
