"""The name of every Lua script (the file ``<name>-<numKeys>.lua``): one list the loader,
``Scripts`` and the static checks share."""

from __future__ import annotations

from typing import Literal, get_args

ScriptName = Literal[
    "acquireLease",
    "addDelivery",
    "advanceInbox",
    "admitInvoke",
    "bindSession",
    "claimDeliveries",
    "claimLock",
    "completeInput",
    "createSession",
    "enqueueInput",
    "forceRelease",
    "ingestAdvance",
    "ingestEntries",
    "notifyReplica",
    "peekInbox",
    "prunePending",
    "pruneSessions",
    "readLease",
    "recordDelivery",
    "registerReplica",
    "releaseLease",
    "renewLeases",
    "renewReplica",
    "saveState",
    "snapshotSessions",
    "takeoverLease",
    "updateSession",
]
SCRIPT_NAMES: tuple[ScriptName, ...] = get_args(ScriptName)
