-- includes/statusCodes.lua: the first element of every reply; lua/errors.py maps them
-- (tests/lua/test_static.py checks both lists agree).
local OK = 1
local DUPLICATE = 2
local HELD = -1
local NOT_OWNER = -2
local STALE_TOKEN = -3
local REPLICA_LOST = -4
local SEQ_GAP = -5
local BUSY = -6
local NOT_FOUND = -7
local TYPE_MISMATCH = -8
local INBOX_FULL = -9
local SESSION_LIMIT = -10
local RATE_LIMITED = -11
