"""The replica listing: what the admin routes, the live page and the metrics' fleet gauges
show of the replicas seen by heartbeat."""

from __future__ import annotations

import asyncio

from streamward.api.schemas import ReplicaOut
from streamward.core.timefmt import rfc3339_opt
from streamward.lua.indexes import ReplicaInfo
from streamward.lua.keys import DEFAULT_TYPE
from streamward.lua.streams import Streams


def replica_out(info: ReplicaInfo) -> ReplicaOut:
    fields = info.fields
    draining = fields.get("draining") == "1"
    return ReplicaOut(
        replica_id=info.replica_id,
        incarnation=fields.get("incarnation"),
        started_at=rfc3339_opt(fields.get("started_ms")),
        last_heartbeat=rfc3339_opt(fields.get("heartbeat_ms") or info.last_heartbeat_ms or None),
        leases=int(fields.get("leases") or info.leases),
        in_flight=int(fields.get("inflight") or 0),
        draining=draining,
        state="dead" if not info.alive else "draining" if draining else "ready",
        host=fields.get("host"),
        version=fields.get("version"),
        # a replica from before session types reads sw:work: it serves the default type
        types=[t for t in fields.get("types", DEFAULT_TYPE).split(",") if t],
    )


async def list_replicas(streams: Streams) -> list[ReplicaOut]:
    """Replicas seen by heartbeat: alive ones and dead ones the watchdog has not forgotten."""
    ids = await streams.replica_ids()
    infos = await asyncio.gather(*[streams.replica_info(r, hb) for r, hb in ids])
    return [replica_out(i) for i in infos]


async def served_types(streams: Streams) -> set[str]:
    """The session types some live (not draining) replica serves."""
    return await streams.served_types()
