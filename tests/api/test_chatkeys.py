"""Hermes' session keying (gateway/session.py build_session_key), ported as a table,
and sender attribution. The same table runs through the API on a real Redis in
test_route_lifecycle.py."""

from __future__ import annotations

from typing import Any

import pytest

from streamward.api import chatkeys
from streamward.api.routing import evaluate
from streamward.api.schemas import Route

# (chat type, chat id, thread id, user id, user_id_alt, group per user, thread per user) -> key
HERMES_CASES: list[tuple[str, str | None, str | None, str | None, str | None, bool, bool, str]] = [
    ("dm", "D1", None, "U", None, True, False, "dm:D1"),
    ("dm", "D1", "T", "U", None, True, False, "dm:D1:T"),
    ("dm", None, None, "U", None, True, False, "dm:U"),  # no chat id: the participant
    ("dm", None, None, "U", "A", True, False, "dm:A"),  # user_id_alt first
    ("dm", None, "T", None, None, True, False, "dm:T"),  # thread id fallback
    ("dm", None, None, None, None, True, False, "dm"),  # one shared DM without either
    ("dm", "D1", None, "U", None, False, True, "dm:D1"),  # options never split a DM
    ("group", "G", None, "U", None, True, False, "group:G:U"),  # per user in groups
    ("group", "G", None, "U", None, False, False, "group:G"),
    ("group", "G", "T", "U", None, True, False, "group:G:T"),  # threads shared by default
    ("group", "G", "T", "U", None, True, True, "group:G:T:U"),
    ("group", "G", "T", "U", None, False, True, "group:G:T"),  # per thread needs per group
    ("group", "G", None, "U", "A", True, False, "group:G:A"),
    ("group", "G", None, None, None, True, False, "group:G"),  # nobody to isolate
    ("channel", "C", None, "U", None, True, False, "channel:C:U"),
]


def chat_payload(
    kind: str, chat: str | None, thread: str | None, user: str | None, alt: str | None
) -> dict[str, Any]:
    p: dict[str, Any] = {"chat": {"type": kind}, "text": "hi"}
    if chat is not None:
        p["chat"]["id"] = chat
    if thread is not None:
        p["thread_id"] = thread
    if user is not None:
        p["user"] = {"id": user, "name": f"name-{user}"}
    if alt is not None:
        p["user_id_alt"] = alt
    return p


@pytest.mark.parametrize("case", HERMES_CASES, ids=[c[-1] + str(c[5:7]) for c in HERMES_CASES])
def test_hermes_session_keys(case: tuple[Any, ...]) -> None:
    kind, chat, thread, user, alt, per_group, per_thread, want = case
    got = chatkeys.chat_key(
        chat_payload(kind, chat, thread, user, alt),
        group_sessions_per_user=per_group,
        thread_sessions_per_user=per_thread,
    )
    assert got == want


@pytest.mark.parametrize(
    ("kind", "thread", "per_group", "per_thread", "shared"),
    [
        ("dm", None, True, False, False),
        ("group", None, True, False, False),
        ("group", None, False, False, True),
        ("group", "T", True, False, True),
        ("group", "T", True, True, False),
    ],
)
def test_shared_session_as_hermes(
    kind: str, thread: str | None, per_group: bool, per_thread: bool, shared: bool
) -> None:
    payload = chat_payload(kind, "C", thread, "U", None)
    flags = {"group_sessions_per_user": per_group, "thread_sessions_per_user": per_thread}
    assert chatkeys.shared_session(payload, **flags) is shared


def test_sender_attribution_prefixes_only_shared_sessions() -> None:
    route = Route.model_validate(
        {
            "route_id": "r",
            "source": "slack",
            "on": ["*"],
            "session": {"key_template": "chat", "sender_attribution": True},
            "input_expr": "{text: text}",
        }
    )
    thread = chat_payload("group", "C", "T", "U7", None)  # a shared thread
    m = evaluate(route, "message", thread)
    assert m.input_json == '{"text":"[name-U7] hi","sender":{"name":"name-U7","id":"U7"}}'
    own = chat_payload("group", "C", None, "U7", None)  # per user: no prefix, still a sender
    m = evaluate(route, "message", own)
    assert m.input_json == '{"text":"hi","sender":{"name":"name-U7","id":"U7"}}'
    plain = Route.model_validate({**route.model_dump(), "input_expr": None})
    m = evaluate(plain, "message", thread)  # the whole event: its payload's text
    assert m.input_json is not None and '"text":"[name-U7] hi"' in m.input_json
    assert '"sender":{"name":"name-U7","id":"U7"}' in m.input_json


def test_slack_envelope_is_keyed_by_its_event() -> None:
    # a `slack` source delivers the Events API envelope as the payload: the chat rules
    # read its `event` (channel, channel_type, thread_ts, user), not the envelope
    route = Route.model_validate(
        {
            "route_id": "r",
            "source": "slack",
            "on": ["message"],
            "session": {"key_template": "chat", "sender_attribution": True},
            "input_expr": "{text: event.text}",
        }
    )
    event = {"type": "message", "channel": "C1", "channel_type": "channel", "user": "U7"}
    envelope = {"type": "event_callback", "team_id": "T0", "event_id": "Ev1", "event": event}
    m = evaluate(route, "message", {**envelope, "event": {**event, "text": "hi"}})
    assert (m.action, m.key) == ("deliver", "channel:C1:U7")
    assert m.input_json == '{"text":"hi","sender":{"name":"U7","id":"U7"}}'
    threaded = {**event, "text": "hi", "thread_ts": "1.2"}  # a thread: shared, prefixed
    m = evaluate(route, "message", {**envelope, "event": threaded})
    assert (m.key, m.input_json) == (
        "channel:C1:1.2",
        '{"text":"[U7] hi","sender":{"name":"U7","id":"U7"}}',
    )
    dm = {**event, "channel": "D9", "channel_type": "im", "text": "hi"}
    assert evaluate(route, "message", {**envelope, "event": dm}).key == "dm:D9"
