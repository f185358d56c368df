"""Chat session keys (Hermes' rules) and sender attribution for ``key_template: chat``.

The table is in docs/routing.md. Routes stored before these rules carry ``isolation`` and
keep the old keys (``legacy_chat_key``), so their sessions are not split by an upgrade.
"""

from __future__ import annotations

from typing import Any

DM_TYPES = ("dm", "direct", "private", "im")


def text(value: Any) -> str | None:
    """A key part as text; None/empty/containers are not usable keys."""
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    out = str(value)
    return out or None


def dig(payload: Any, *paths: str) -> Any:
    """The first non-null value at one of the dotted ``paths``."""
    for path in paths:
        cur = payload
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is not None:
            return cur
    return None


def message(payload: Any) -> Any:
    """The chat message of a payload: a Slack Events API envelope (what a ``slack`` source
    delivers) carries it in ``event``; any other payload is the message itself."""
    if isinstance(payload, dict) and payload.get("type") == "event_callback":
        event = payload.get("event")
        if isinstance(event, dict):
            return event
    return payload


def _chat(payload: Any) -> str | None:
    return text(dig(payload, "chat.id", "chat_id", "channel.id", "channel"))


def _kind(payload: Any) -> str:
    kind = text(dig(payload, "chat.type", "chat_type", "channel_type")) or "group"
    return "dm" if kind in DM_TYPES else kind


def _thread(payload: Any) -> str | None:
    return text(dig(payload, "thread.id", "thread_id", "thread_ts"))


def _user(payload: Any) -> str | None:
    return text(dig(payload, "user.id", "user_id", "user", "from.id"))


def participant(payload: Any) -> str | None:
    """Who sent it: ``user_id_alt`` (a stable alternative id) before the user id, as Hermes."""
    return text(dig(payload, "user_id_alt", "user.id_alt")) or _user(payload)


def chat_key(
    payload: Any, *, group_sessions_per_user: bool = True, thread_sessions_per_user: bool = False
) -> str | None:
    """Hermes' ``build_session_key`` without its agent/platform prefix (the route is the
    namespace). DMs: the chat id, else the participant, else one shared DM; the thread id
    is appended. Groups: type, chat, thread, then the participant when isolated per user
    (threads are shared unless ``thread_sessions_per_user``)."""
    kind, chat, thread = _kind(payload), _chat(payload), _thread(payload)
    if kind == "dm":
        parts = ["dm"]
        who = chat or participant(payload)
        if who:
            parts.append(who)
        if thread:
            parts.append(thread)
        return ":".join(parts)
    parts = [kind]
    if chat:
        parts.append(chat)
    if thread:
        parts.append(thread)
    isolate = group_sessions_per_user and not (thread and not thread_sessions_per_user)
    who = participant(payload)
    if isolate and who:
        parts.append(who)
    if chat is None and thread is None and not (isolate and who):
        return None  # a group message naming no chat, thread or sender: nothing to key on
    return ":".join(parts)


def shared_session(
    payload: Any, *, group_sessions_per_user: bool = True, thread_sessions_per_user: bool = False
) -> bool:
    """Hermes' ``is_shared_multi_user_session``: several people talk in this session."""
    if _kind(payload) == "dm":
        return False
    if _thread(payload):
        return not thread_sessions_per_user
    return not group_sessions_per_user


def legacy_chat_key(payload: Any, isolation: str) -> str | None:
    """The rule of routes stored before Hermes keying (``isolation`` shared | per_user)."""
    chat = _chat(payload)
    if chat is None:
        return None
    kind, thread, user = _kind(payload), _thread(payload), _user(payload)
    if kind == "dm":
        return f"dm:{chat}:thread:{thread}" if thread else f"dm:{chat}"
    key = f"chat:{chat}:thread:{thread}" if thread else f"chat:{chat}"
    if isolation == "per_user":
        if user is None:
            return None
        key += f":user:{user}"
    return key


def sender(payload: Any) -> dict[str, str] | None:
    """The sender's id and display name, when the payload names one."""
    who = participant(payload)
    name = text(
        dig(
            payload,
            "user.name",
            "user.username",
            "user_name",
            "from.username",
            "from.first_name",
            "sender.name",
        )
    )
    if who is None and name is None:
        return None
    out = {"name": name or who or ""}
    if who is not None:
        out["id"] = who
    return out


def attribute(run_input: Any, who: dict[str, str], shared: bool) -> Any:
    """``sender`` added to a dict input; in a shared session its text (``text``, else
    ``payload.text``, or the input itself when it is a string) becomes ``[name] text``."""
    tag = f"[{who['name']}] "
    if isinstance(run_input, str):
        return tag + run_input if shared else run_input
    if not isinstance(run_input, dict):
        return run_input
    out = dict(run_input)
    out["sender"] = who
    if shared:
        if isinstance(out.get("text"), str):
            out["text"] = tag + out["text"]
        elif isinstance(out.get("payload"), dict) and isinstance(out["payload"].get("text"), str):
            out["payload"] = {**out["payload"], "text": tag + out["payload"]["text"]}
    return out
