-- includes/history.lua: the fields of one ownership change for the session's capped history
-- stream (sw:{S}:history, same slot as the lease), appended by the caller as
--   redis.call('XADD', KEYS[i], 'MAXLEN', '~', HISTORY_MAXLEN, '*', unpack(history(...)))
-- Read by GET /admin/sessions/{id}/history.
local HISTORY_MAXLEN = 200
local function history(event, replica, incarnation, token, reason, now_ms)
  return {'event', event, 'replica', replica, 'incarnation', incarnation, 'token', token,
    'reason', reason, 'ms', now_ms}
end
