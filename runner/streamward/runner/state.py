"""The replica's shared flags: who it is, whether it may write, whether it is draining.

Every loop object is handed this one small record instead of the ``Replica``: it is plain
data, written by the replica lease (incarnation, fenced, deadline) and the drain.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class ReplicaState:
    replica_id: str
    incarnation: str = ""
    fenced: bool = True  # until registered: nothing may be claimed or written
    draining: bool = False
    draining_event: asyncio.Event = field(default_factory=asyncio.Event)
    # time.monotonic() after which this replica must not write (set by the heartbeat thread)
    deadline: float = 0.0
    # set while Redis accepts writes; cleared while it answers but refuses them (OOM,
    # MISCONF, READONLY): sessions are kept, but no new work is claimed or started
    writes_accepted: asyncio.Event = field(default_factory=_set_event)

    def can_write(self) -> bool:
        """False once past the self-fencing deadline (checked before every ingest request)."""
        return not self.fenced and time.monotonic() < self.deadline

    def writes_refused(self) -> bool:
        return not self.writes_accepted.is_set()

    def note_writes(self, accepted: bool) -> bool:
        """Record whether Redis accepts writes; True when that changed."""
        if accepted == self.writes_accepted.is_set():
            return False
        if accepted:
            self.writes_accepted.set()
        else:
            self.writes_accepted.clear()
        return True

    def begin_drain(self) -> None:
        self.draining = True
        self.draining_event.set()
