"""A routed event's session generation: binding, deferred resets, retiring the previous one.

``bindSession-1`` answers ``due`` when a reset (timeout, daily, idle, manual, dead) fell due;
the generation's run and inbox live in another slot, so the quiet check happens here: a
busy generation takes the event and keeps the reset pending; a quiet one is rotated (only
one caller wins; the rest queue to the new generation). docs/routing.md, "Lifecycle".
"""

from __future__ import annotations

from typing import Any

from streamward.api.deps import AppState
from streamward.api.schemas import Route
from streamward.lua.replies import Binding
from streamward.lua.routes import RouteStore

# a retired generation's status → the reason its key starts over (no quiet check: it is over)
RETIRED = {"dead": "dead", "deleted": "manual", "expired": "manual"}


async def bind_event(
    state: AppState, routes: RouteStore, project: str, route: Route, key: str
) -> Binding:
    """The generation this event goes to (``started`` or ``queued``, never ``due``)."""
    cfg, streams = route.session, state.streams
    assert cfg is not None  # sessionless routes never bind (deliveries.start_once)
    idle_ms = (cfg.idle_timeout_seconds or 0) * 1000
    args: dict[str, Any] = {
        "session_timeout_ms": (cfg.session_timeout_seconds or 0) * 1000,
        "daily_reset_hour": cfg.daily_reset_hour,
        "clock_offset_ms": state.settings.clock_offset_ms,
        "idle_timeout_ms": idle_ms,
    }
    rid = route.route_id
    binding = await routes.bind(project, rid, key, **args)
    forced = False
    if binding.action == "queued":
        sk = state.keys.session(project, binding.session_id)
        status = (await streams.meta(sk)).get("status", "")
        if status in RETIRED:  # dead (drop policy) or deleted: the key starts over
            binding = await routes.bind(project, rid, key, reset_reason=RETIRED[status], **args)
            forced = True
    if binding.action == "due":
        sk = state.keys.session(project, binding.session_id)
        verdict = "quiet"
        if not forced:
            idle_check = idle_ms if binding.reason == "idle" else 0
            offset = state.settings.clock_offset_ms
            verdict = await routes.generation_state(sk, idle_check, offset)
        if verdict == "busy":  # joins; the reset waits for the first event after quiet
            return Binding(binding.session_id, binding.generation, "queued", "", "")
        expected = binding.session_id
        if verdict == "recent":
            binding = await routes.bind(
                project, rid, key, mode="clear", expected_session_id=expected, **args
            )
        else:
            binding = await routes.bind(
                project, rid, key, mode="rotate", expected_session_id=expected, **args
            )
    if binding.action == "started" and binding.previous_session_id:
        prev = state.keys.session(project, binding.previous_session_id)
        if (await streams.meta(prev)).get("status", "") not in ("expired", "deleted"):
            retention_ms = state.settings.retention_s * 1000
            await streams.retire_session(prev, "expired", binding.reason, retention_ms)
    return binding


def session_meta(route: Route, key: str, binding: Binding) -> dict[str, Any]:
    """Meta fields a routed event writes: the session host reads the reset ones at activate."""
    cfg = route.session
    assert cfg is not None  # only routes with a session write this meta
    fields: dict[str, Any] = {
        "route_id": route.route_id,
        "session_key": key,
        "generation": binding.generation,
        "on_owner_death": cfg.on_owner_death,
    }
    if cfg.close_delay_seconds is not None:
        # the runner reads this name as the session's unload delay (its close_delay)
        fields["idle_timeout_ms"] = cfg.close_delay_seconds * 1000
    if binding.action == "started" and binding.previous_session_id:
        fields["previous_session_id"] = binding.previous_session_id
        fields["reset_reason"] = binding.reason
    return fields
