-- includes/peekInbox.lua: what an owner needs to pick its next input (peekInbox-5's
-- reply, documented there); shared with advanceInbox-5, which peeks after its XDEL. Both
-- scripts take the same KEYS: inbox, runs, cancels, meta, epoch.
--
-- notice (nil: none): {ref = session ref, replica = the owner's replica id, poison_after =
-- POISON_AFTER_OWNERS} when the owner will run the head at once if it is runnable. The
-- start notice is then published here, on the head's starts_to channel, instead of by the
-- owner after this reply: one hop less before the waiting invoke answers. Runnable is the
-- owner's own rule (runner/inbox.py next_input): its take recorded, not poison, no
-- interrupting input behind it, no cancel requested, its run not already ended.
local TERMINAL = {completed = true, failed = true, cancelled = true, merged = true}
local function json_str(s)
  return '"' .. string.gsub(s, '[\\"]', '\\%0') .. '"'
end
local function announce_start(metas, head, state, cancel, owners, token_arg, notice)
  if not notice or owners < 1 or cancel == 1 then
    return 0
  end
  if notice.poison_after > 0 and owners - 1 >= notice.poison_after then
    return 0
  end
  for i = 6, #metas, 3 do -- an interrupting input behind the head cancels it
    if metas[i] == 'interrupt' then
      return 0
    end
  end
  if state ~= '' and TERMINAL[string.match(state, '"status":"(%a+)"') or ''] then
    return 0
  end
  for i = 1, #head, 2 do
    if head[i] == 'starts_to' then
      -- pcall: a refused PUBLISH (an ACL without the channel) must not fail the peek; the
      -- notice is then not sent and the invoke learns the start from the log
      local r = redis.pcall('PUBLISH', head[i + 1], '[' .. json_str(notice.ref) .. ',' ..
        json_str(metas[2]) .. ',' .. json_str(notice.replica) .. ',' .. token_arg .. ']')
      if type(r) == 'table' and r.err then
        return 0
      end
      return 1
    end
  end
  return 0
end

local function peek_inbox(count, with_head, token_arg, notice)
  local rcall = redis.call
  local CHUNK = 8
  local metas, head = {}, {}
  local state, cancel = '', 0
  local seen, start, want = 0, '-', 1
  while seen < count do
    local chunk = rcall('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(want, count - seen))
    for _, entry in ipairs(chunk) do
      local fields = entry[2]
      local run_id, multitask = '', 'enqueue'
      for i = 1, #fields, 2 do
        if fields[i] == 'run_id' then
          run_id = fields[i + 1]
        elseif fields[i] == 'multitask' then
          multitask = fields[i + 1]
        end
      end
      if seen == 0 then
        if with_head == '1' then
          head = fields
        end
        state = rcall('HGET', KEYS[2], run_id) or ''
        cancel = rcall('SISMEMBER', KEYS[3], run_id)
      end
      metas[#metas + 1] = entry[1]
      metas[#metas + 1] = run_id
      metas[#metas + 1] = multitask
      seen = seen + 1
    end
    if #chunk < want then
      break
    end
    start = '(' .. chunk[#chunk][1]
    want = CHUNK
  end
  local owners = 0
  local token = tonumber(token_arg) or 0
  if #metas > 0 and with_head == '1' and token >= 1 and token == tonumber(rcall('GET', KEYS[5]) or '0') then
    local head_id = metas[1]
    owners = 1
    local taken = rcall('HGET', KEYS[4], 'head_taken')
    if taken then
      local id, tok, n = string.match(taken, '^([^|]*)|([^|]*)|(%d+)$')
      if id == head_id then
        owners = tonumber(n)
        if tok ~= token_arg then
          owners = owners + 1
        end
      end
    end
    rcall('HSET', KEYS[4], 'head_taken', head_id .. '|' .. token_arg .. '|' .. owners)
  end
  local announced = announce_start(metas, head, state, cancel, owners, token_arg, notice)
  return {OK, metas, head, state, cancel, owners, announced}
end
