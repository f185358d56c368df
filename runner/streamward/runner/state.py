"""The replica's shared flags: who it is, whether it may write, whether it is draining.

Every loop object is handed this one small record instead of the ``Replica``: it is plain
data, written by the replica lease (incarnation, fenced, deadline) and the drain.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class ReplicaState:
    replica_id: str
    incarnation: str = ""
    fenced: bool = True  # until registered: nothing may be claimed or written
    draining: bool = False
    draining_event: asyncio.Event = field(default_factory=asyncio.Event)
    deadline: float = 0.0  # loop time after which this replica must not write

    def can_write(self) -> bool:
        """False once past the self-fencing deadline (checked before every ingest request)."""
        return not self.fenced and asyncio.get_running_loop().time() < self.deadline

    def begin_drain(self) -> None:
        self.draining = True
        self.draining_event.set()
