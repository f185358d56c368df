"""One session as the API shows it (``SessionOut``): its meta, pending inputs and owner,
read together; used by get, delete and every listing page."""

from __future__ import annotations

import asyncio

from streamward.api.listing import json_object
from streamward.api.routes.common import owner_detail, rfc3339_opt
from streamward.api.schemas import SessionOut
from streamward.lua.keys import SessionKeys
from streamward.lua.store import LeaseStore
from streamward.lua.streams import Streams


async def session_out(store: LeaseStore, streams: Streams, sk: SessionKeys) -> SessionOut | None:
    (meta, pending, _), own = await asyncio.gather(
        streams.session_overview(sk), store.ownership(sk)
    )
    if not meta:
        return None
    return SessionOut(
        session_id=sk.session_id,
        project=sk.project,
        status=meta.get("status") or "unknown",
        created_at=rfc3339_opt(meta.get("created_ms")),
        updated_at=rfc3339_opt(meta.get("updated_ms")),
        active_run_id=meta.get("active_run_id") or None,
        last_seq=int(meta.get("last_seq") or 0),
        pending=pending,
        transitions=int(meta.get("transitions") or 0),
        owner=owner_detail(own),
        delete_after=rfc3339_opt(meta.get("delete_after_ms")),
        reason=meta.get("reason") or None,
        route_id=meta.get("route_id") or None,
        session_key=meta.get("session_key") or None,
        generation=int(meta["generation"]) if meta.get("generation") else None,
        previous_session_id=meta.get("previous_session_id") or None,
        reset_reason=meta.get("reset_reason") or None,
        reset_after_seq=int(meta["reset_after_seq"]) if meta.get("reset_after_seq") else None,
        title=meta.get("title") or None,
        metadata=json_object(meta.get("metadata")),
        type=meta.get("type") or None,
    )
