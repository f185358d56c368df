"""Python client for the streamward HTTP API (httpx): sync and async flavours.

Errors: ``StreamwardAPIError`` for an answer that is not 2xx (status, problem code and body),
``StreamwardUnavailable`` when the API cannot be reached or does not answer in time; both
are ``StreamwardError``. Idempotent calls (GET, DELETE, an invoke with an idempotency key)
are retried ``retries`` times after a transport failure or a 503, with backoff (honouring
Retry-After); other calls only when the connection was never made.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import httpx
import orjson

from streamward.api.schemas import (
    CallbackSpec,
    CancelResult,
    DetachResult,
    DrainResult,
    ForceReleaseResult,
    HeartbeatResult,
    IngestResult,
    InvokeAccepted,
    Liveness,
    LockDetail,
    LockOut,
    LockPage,
    LogEntryOut,
    OwnershipHistory,
    ReplicaOut,
    RunDeliveries,
    SessionOut,
    SessionPage,
    StreamDetachResult,
    TranscriptPage,
)
from streamward.api.sessionschemas import SessionControl, SessionCreated
from streamward.core.contract import TERMINAL_TYPES

RUN_HEADER = "X-Streamward-Run-Id"
CONNECTION_HEADER = "X-Streamward-Connection"
AFTER_HEADER = "X-Streamward-After"
TERMINAL = TERMINAL_TYPES
Multitask = Literal["enqueue", "reject", "interrupt"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class StreamwardError(Exception):
    """Every error this client raises (a bug aside): catch this one to catch them all."""


class StreamwardAPIError(StreamwardError):
    """A non-2xx answer: ``status``, the problem ``code`` and the whole problem body."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None,
        problem: dict[str, Any],
        retry_after_s: int | None = None,
    ):
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem
        # the Retry-After header (429 inbox_full / rate_limited, 503), in seconds
        self.retry_after_s = retry_after_s
        super().__init__(f"{status} {code}: {detail or ''}".rstrip(": "))


class StreamwardUnavailable(StreamwardError):
    """The API could not be reached, or did not answer in time, after the retries the call
    was allowed (``attempts``). The transport error is ``__cause__``."""

    def __init__(self, base_url: str, exc: httpx.TransportError, attempts: int) -> None:
        self.base_url = base_url
        self.attempts = attempts
        what = (
            "did not answer in time"
            if isinstance(exc, httpx.TimeoutException)
            else ("cannot be reached")
        )
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        super().__init__(
            f"the streamward API at {base_url} {what}{tries}: {type(exc).__name__}: {exc}"
        )


# the request never reached the server: safe to send again whatever the method
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
RETRY_BASE_S = 0.1
RETRY_CAP_S = 2.0


def _may_retry(req: _Req, exc: httpx.TransportError | None) -> bool:
    """Idempotent calls retry any transport failure (and a 503); the others only a
    connection that was never made, since their request may have been acted on."""
    if req.idempotent or req.method in _IDEMPOTENT:
        return True
    return exc is not None and isinstance(exc, _NOT_SENT)


def _retry_delay_s(attempt: int, resp: httpx.Response | None = None) -> float:
    if resp is not None:
        with contextlib.suppress(ValueError):
            return min(RETRY_CAP_S, float(resp.headers.get("retry-after", "")))
    return float(min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt) * random.uniform(0.5, 1.0))


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        body = {"code": f"http_{resp.status_code}", "detail": resp.text[:200]}
    retry_after = resp.headers.get("retry-after", "")
    raise StreamwardAPIError(
        resp.status_code,
        str(body.get("code", f"http_{resp.status_code}")),
        body.get("detail"),
        body,
        int(retry_after) if retry_after.isdigit() else None,
    )


def _json(resp: httpx.Response) -> Any:
    _raise_for(resp)
    return orjson.loads(resp.content)


@dataclass
class StreamState:
    """Where a followed stream is: updated as entries arrive, used to resume."""

    session_id: str
    run_id: str | None = None
    last_id: str | None = None
    connection_id: str | None = None
    resumes: int = 0
    done: bool = False  # the run's terminal entry was seen


@dataclass
class _Req:
    method: str
    path: str
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False  # a POST that is safe to repeat (it carries an idempotency key)


def _invoke_body(
    input: Any,
    mode: str,
    idempotency_key: str | None,
    multitask: Multitask,
    callback: CallbackSpec | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"input": input, "mode": mode, "multitask": multitask}
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    if callback is not None:  # signed completion callback (docs/api.md#callbacks)
        body["callback"] = callback.model_dump(exclude_none=True)
    return body


_UNSET_INPUT: Any = object()  # create_session: no first input (None is an input: null)


def _create_req(
    session_id: str | None,
    title: str | None,
    metadata: Mapping[str, Any] | None,
    session_type: str | None,
    input: Any,
    idempotency_key: str | None,
) -> _Req:
    body: dict[str, Any] = {}
    for name, value in (("id", session_id), ("title", title), ("type", session_type)):
        if value is not None:
            body[name] = value
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if input is not _UNSET_INPUT:
        body["input"] = input
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    return _Req("POST", "/v1/sessions", body, headers=headers)


def _update_req(session_id: str, patch: Mapping[str, Any]) -> _Req:
    return _Req("PATCH", f"/v1/sessions/{session_id}", dict(patch))


def _control_req(session_id: str, action: str, cancel: bool = False) -> _Req:
    params = {"cancel": "true"} if cancel else {}
    return _Req("POST", f"/v1/sessions/{session_id}/{action}", params=params)


def _events_req(state: StreamState, follow: bool = True) -> _Req:
    params = {"follow": "true" if follow else "false"}
    if state.last_id is not None:
        params["after"] = state.last_id
    if state.run_id is not None:
        params["run_id"] = state.run_id
    return _Req("GET", f"/v1/sessions/{state.session_id}/events", params=params)


def _sessions_req(
    status: str | None, cursor: str | None, limit: int, filters: Mapping[str, Any]
) -> _Req:
    params = {"limit": str(limit)}
    if status is not None:
        params["status"] = status
    if cursor is not None:
        params["cursor"] = cursor
    for name, value in filters.items():
        if name == "metadata" and value is not None:
            params.update({f"metadata.{k}": str(v) for k, v in value.items()})
        elif value is not None:
            params[name] = str(value)
    return _Req("GET", "/v1/sessions", params=params)


def _on_headers(state: StreamState, resp: httpx.Response) -> None:
    state.run_id = state.run_id or resp.headers.get(RUN_HEADER)
    state.connection_id = resp.headers.get(CONNECTION_HEADER)
    if state.last_id is None and resp.headers.get(AFTER_HEADER):
        # resume point before the first entry: the log position the server tails from
        state.last_id = resp.headers[AFTER_HEADER]


def _on_line(state: StreamState, line: str) -> LogEntryOut | None:
    if not line.strip():
        return None
    entry = LogEntryOut.model_validate_json(line)
    state.last_id = entry.id
    if state.run_id is not None and entry.run_id == state.run_id and entry.type in TERMINAL:
        state.done = True
    return entry


class _Common:
    def __init__(
        self,
        token: str | None,
        admin_token: str | None,
        max_resumes: int,
        resume_delay_s: float,
        retries: int,
    ) -> None:
        self.token = token
        self.admin_token = admin_token
        self.max_resumes = max_resumes
        self.resume_delay_s = resume_delay_s
        self.retries = retries

    def _send_args(self, req: _Req, admin: bool) -> dict[str, Any]:
        headers = {**(self._admin() if admin else self._headers()), **req.headers}
        if req.json is not None:
            headers = {**headers, "Content-Type": "application/json"}
        return {
            "content": None if req.json is None else orjson.dumps(req.json),
            "params": req.params or None,
            "headers": headers,
        }

    def _retry_after(
        self, req: _Req, attempt: int, exc: httpx.TransportError | None, resp: httpx.Response | None
    ) -> float | None:
        """Seconds to wait before the next attempt, or None: give up."""
        if attempt >= self.retries or not _may_retry(req, exc):
            return None
        if resp is not None and not (resp.status_code == 503 and req.method in _IDEMPOTENT):
            return None
        return _retry_delay_s(attempt, resp)

    def _headers(self, admin: bool = False) -> dict[str, str]:
        tok = self.admin_token if admin else self.token
        return {"Authorization": f"Bearer {tok}"} if tok else {}

    def _stream_headers(self, req: _Req) -> dict[str, str]:
        headers = {**self._headers(), "Accept": "application/x-ndjson"}
        if req.json is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def _admin(self) -> dict[str, str]:
        if not self.admin_token:
            raise ValueError("this call needs admin_token")
        return self._headers(admin=True)


def _entries_json(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(e) for e in entries]


class AsyncStreamwardClient(_Common):
    """Async client; ``stream()`` resumes after a dropped connection from the last entry id."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        admin_token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_resumes: int = 10,
        resume_delay_s: float = 0.2,
        retries: int = 2,
    ) -> None:
        super().__init__(token, admin_token, max_resumes, resume_delay_s, retries)
        # streams idle between entries: no read timeout on the connection, only on connect
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, read=None),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncStreamwardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, req: _Req, admin: bool = False) -> Any:
        return _json(await self._send(req, admin))

    async def _send(self, req: _Req, admin: bool = False) -> httpx.Response:
        args = self._send_args(req, admin)
        attempt = 0
        while True:
            try:
                resp = await self.http.request(req.method, req.path, **args)
            except httpx.TransportError as exc:
                delay = self._retry_after(req, attempt, exc, None)
                if delay is None:
                    raise StreamwardUnavailable(str(self.http.base_url), exc, attempt + 1) from exc
            else:
                delay = self._retry_after(req, attempt, None, resp)
                if delay is None:
                    return resp
            attempt += 1
            await asyncio.sleep(delay)

    # -- public ----------------------------------------------------------------------------

    @overload
    async def invoke(
        self,
        session_id: str,
        input: Any = None,
        *,
        detached: Literal[True] = True,
        idempotency_key: str | None = None,
        multitask: Multitask = "enqueue",
        callback: CallbackSpec | None = None,
    ) -> InvokeAccepted: ...

    @overload
    async def invoke(
        self,
        session_id: str,
        input: Any = None,
        *,
        detached: Literal[False],
        idempotency_key: str | None = None,
        multitask: Multitask = "enqueue",
        callback: CallbackSpec | None = None,
    ) -> list[LogEntryOut]: ...

    async def invoke(
        self,
        session_id: str,
        input: Any = None,
        *,
        detached: bool = True,
        idempotency_key: str | None = None,
        multitask: Multitask = "enqueue",
        callback: CallbackSpec | None = None,
    ) -> InvokeAccepted | list[LogEntryOut]:
        """Detached (the default here): the 202 answer. Attached: every entry of the run, up
        to its terminal.

        HTTP's default is a streamed invoke; here it is detached, because a call that blocks
        until the run ends and returns a list is seldom what a program wants. The streamed
        equivalent of the HTTP default is ``stream(session_id, input=...)``, which yields
        entries as they come (and resumes after a dropped connection). With an
        ``idempotency_key`` a detached invoke is retried after a transport failure."""
        if detached:
            body = _invoke_body(input, "detached", idempotency_key, multitask, callback)
            path = f"/v1/sessions/{session_id}/invoke"
            req = _Req("POST", path, body, idempotent=idempotency_key is not None)
            data = await self._call(req)
            return InvokeAccepted.model_validate(data)
        return [
            e
            async for e in self.stream(
                session_id,
                input=input,
                idempotency_key=idempotency_key,
                multitask=multitask,
                callback=callback,
            )
        ]

    async def stream(
        self,
        session_id: str,
        input: Any = UNSET,
        *,
        run_id: str | None = None,
        after: str | None = None,
        idempotency_key: str | None = None,
        multitask: Multitask = "enqueue",
        callback: CallbackSpec | None = None,
        state: StreamState | None = None,
    ) -> AsyncIterator[LogEntryOut]:
        """Invoke attached (``input`` given) or follow ``run_id`` / the session from ``after``.

        Ends after the run's terminal entry (or when the server ends the stream, e.g. after a
        detach). A dropped connection is resumed via ``/events?after=<last id>``.
        """
        st = state or StreamState(session_id, run_id=run_id, last_id=after)
        if input is not UNSET:
            req = _Req(
                "POST",
                f"/v1/sessions/{session_id}/invoke",
                _invoke_body(input, "stream", idempotency_key, multitask, callback),
            )
        else:
            req = _events_req(st)
        while True:
            try:
                async with self.http.stream(
                    req.method,
                    req.path,
                    content=None if req.json is None else orjson.dumps(req.json),
                    params=req.params or None,
                    headers=self._stream_headers(req),
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        _raise_for(resp)
                    _on_headers(st, resp)
                    async for line in resp.aiter_lines():
                        entry = _on_line(st, line)
                        if entry is not None:
                            yield entry
                            if st.done:
                                return
                    return  # a clean end: detached, or the log end without follow
            except httpx.TransportError as exc:
                if st.resumes >= self.max_resumes or (st.run_id is None and input is not UNSET):
                    # an invoke that never answered cannot be resumed safely
                    raise StreamwardUnavailable(
                        str(self.http.base_url), exc, st.resumes + 1
                    ) from exc
                st.resumes += 1
                await asyncio.sleep(self.resume_delay_s)
                req = _events_req(st)

    async def events(
        self, session_id: str, after: str | None = None, run_id: str | None = None
    ) -> list[LogEntryOut]:
        """The entries after ``after`` up to now (no follow)."""
        st = StreamState(session_id, run_id=run_id, last_id=after)
        req = _events_req(st, follow=False)
        resp = await self._send(req)
        _raise_for(resp)
        return [e for line in resp.text.splitlines() if (e := _on_line(st, line)) is not None]

    async def deliveries(self, run_id: str) -> RunDeliveries:
        """A run's signed callback deliveries and their attempts."""
        return RunDeliveries.model_validate(
            await self._call(_Req("GET", f"/v1/runs/{run_id}/deliveries"))
        )

    async def liveness(self, session_id: str) -> Liveness:
        return Liveness.model_validate(
            await self._call(_Req("GET", f"/v1/sessions/{session_id}/liveness"))
        )

    async def cancel(self, session_id: str, run_id: str | None = None) -> CancelResult:
        body = {"run_id": run_id} if run_id else {}
        return CancelResult.model_validate(
            await self._call(_Req("POST", f"/v1/sessions/{session_id}/cancel", body))
        )

    async def detach(self, session_id: str, connection_id: str | None = None) -> DetachResult:
        body = {"connection_id": connection_id} if connection_id else {}
        return DetachResult.model_validate(
            await self._call(_Req("POST", f"/v1/sessions/{session_id}/detach", body))
        )

    async def transcript(
        self, session_id: str, after: str | None = None, limit: int = 100
    ) -> TranscriptPage:
        params = {"limit": str(limit)}
        if after is not None:
            params["after"] = after
        return TranscriptPage.model_validate(
            await self._call(_Req("GET", f"/v1/sessions/{session_id}/transcript", params=params))
        )

    async def sessions(
        self,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        **filters: Any,
    ) -> SessionPage:
        """One page of sessions; ``filters``: sort, order, route, type, created_after,
        updated_after, active_minutes, source, and metadata={key: value} (docs/api.md)."""
        return SessionPage.model_validate(
            await self._call(_sessions_req(status, cursor, limit, filters))
        )

    async def session(self, session_id: str) -> SessionOut:
        return SessionOut.model_validate(
            await self._call(_Req("GET", f"/v1/sessions/{session_id}"))
        )

    async def delete_session(self, session_id: str) -> SessionOut:
        return SessionOut.model_validate(
            await self._call(_Req("DELETE", f"/v1/sessions/{session_id}"))
        )

    async def create_session(
        self,
        session_id: str | None = None,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_type: str | None = None,
        input: Any = _UNSET_INPUT,
        idempotency_key: str | None = None,
    ) -> SessionCreated:
        """``POST /v1/sessions``; ``input`` given (even None) = a first input, run detached
        (``.run``); a repeat with the same ``idempotency_key`` returns the same session."""
        req = _create_req(session_id, title, metadata, session_type, input, idempotency_key)
        return SessionCreated.model_validate(await self._call(req))

    async def update_session(self, session_id: str, **patch: Any) -> SessionOut:
        """``PATCH``: ``title=`` and / or ``metadata=`` as a JSON merge patch (None removes)."""
        return SessionOut.model_validate(await self._call(_update_req(session_id, patch)))

    async def start_session(self, session_id: str) -> SessionControl:
        """An owner holds the session and has activated it (``status`` started / starting)."""
        return SessionControl.model_validate(await self._call(_control_req(session_id, "start")))

    async def stop_session(self, session_id: str, cancel: bool = False) -> SessionControl:
        """Passivate now; ``cancel``: cancel the active run first (else 409 ``run_active``)."""
        req = _control_req(session_id, "stop", cancel)
        return SessionControl.model_validate(await self._call(req))

    # -- admin -----------------------------------------------------------------------------

    async def ingest(
        self,
        session_id: str,
        run_id: str,
        token: int,
        entries: Sequence[Mapping[str, Any]],
        project: str = "default",
    ) -> IngestResult:
        body = {
            "session_id": session_id,
            "project": project,
            "run_id": run_id,
            "token": token,
            "entries": _entries_json(entries),
        }
        return IngestResult.model_validate(
            await self._call(_Req("POST", "/admin/sessions/transcripts/ingest", body), admin=True)
        )

    async def heartbeat(
        self,
        replica_id: str,
        incarnation: str,
        leases: Sequence[Mapping[str, Any]],
        lease_ttl_ms: int = 60_000,
        replica_ttl_ms: int | None = None,
    ) -> HeartbeatResult:
        body: dict[str, Any] = {
            "replica_id": replica_id,
            "incarnation": incarnation,
            "leases": [dict(x) for x in leases],
            "lease_ttl_ms": lease_ttl_ms,
        }
        if replica_ttl_ms is not None:
            body["replica_ttl_ms"] = replica_ttl_ms
        return HeartbeatResult.model_validate(
            await self._call(_Req("POST", "/admin/sessions/streams/heartbeat", body), admin=True)
        )

    async def release_stream(
        self,
        replica_id: str,
        incarnation: str,
        session_id: str,
        token: int,
        project: str = "default",
    ) -> StreamDetachResult:
        body = {
            "replica_id": replica_id,
            "incarnation": incarnation,
            "session_id": session_id,
            "project": project,
            "token": token,
        }
        return StreamDetachResult.model_validate(
            await self._call(_Req("POST", "/admin/sessions/streams/detach", body), admin=True)
        )

    async def locks(
        self,
        replica: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        project: str | None = None,
    ) -> LockPage:
        params = {"limit": str(limit)}
        for k, v in (("replica", replica), ("cursor", cursor), ("project", project)):
            if v is not None:
                params[k] = v
        return LockPage.model_validate(
            await self._call(_Req("GET", "/admin/locks", params=params), admin=True)
        )

    async def lock(self, session_id: str, project: str = "default") -> LockOut:
        return LockOut.model_validate(
            await self._call(
                _Req("GET", f"/admin/locks/{session_id}", params={"project": project}), admin=True
            )
        )

    async def lock_detail(
        self, session_id: str, project: str = "default", entries: int = 10
    ) -> LockDetail:
        """Lock, holder liveness, pending inputs, active run and the log's last entries."""
        params = {"project": project, "entries": str(entries)}
        return LockDetail.model_validate(
            await self._call(
                _Req("GET", f"/admin/locks/{session_id}/detail", params=params), admin=True
            )
        )

    async def release_lock(
        self, session_id: str, project: str = "default", reason: str = "admin"
    ) -> ForceReleaseResult:
        params = {"project": project, "reason": reason}
        return ForceReleaseResult.model_validate(
            await self._call(
                _Req("POST", f"/admin/locks/{session_id}/release", params=params), admin=True
            )
        )

    async def ownership_history(
        self, session_id: str, project: str = "default", limit: int = 50
    ) -> OwnershipHistory:
        params = {"project": project, "limit": str(limit)}
        return OwnershipHistory.model_validate(
            await self._call(
                _Req("GET", f"/admin/sessions/{session_id}/history", params=params), admin=True
            )
        )

    async def replicas(self) -> list[ReplicaOut]:
        data = await self._call(_Req("GET", "/admin/replicas"), admin=True)
        return [ReplicaOut.model_validate(x) for x in data]

    async def drain_replica(self, replica_id: str) -> DrainResult:
        return DrainResult.model_validate(
            await self._call(_Req("POST", f"/admin/replicas/{replica_id}/drain"), admin=True)
        )


class StreamwardClient(_Common):
    """Blocking client with the same calls as ``AsyncStreamwardClient``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        admin_token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_resumes: int = 10,
        resume_delay_s: float = 0.2,
        retries: int = 2,
    ) -> None:
        super().__init__(token, admin_token, max_resumes, resume_delay_s, retries)
        self.http = httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(timeout, read=None), transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> StreamwardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, req: _Req, admin: bool = False) -> Any:
        return _json(self._send(req, admin))

    def _send(self, req: _Req, admin: bool = False) -> httpx.Response:
        args = self._send_args(req, admin)
        attempt = 0
        while True:
            try:
                resp = self.http.request(req.method, req.path, **args)
            except httpx.TransportError as exc:
                delay = self._retry_after(req, attempt, exc, None)
                if delay is None:
                    raise StreamwardUnavailable(str(self.http.base_url), exc, attempt + 1) from exc
            else:
                delay = self._retry_after(req, attempt, None, resp)
                if delay is None:
                    return resp
            attempt += 1
            time.sleep(delay)

    @overload
    def invoke(
        self,
        session_id: str,
        input: Any = None,
        *,
        detached: Literal[True] = True,
        idempotency_key: str | None = None,
        multitask: Multitask = "enqueue",
        callback: CallbackSpec | None = None,
    ) -> InvokeAccepted: ...

    @overload
    def invoke(
        self,
        session_id: str,
        input: Any = None,
        *,
        detached: Literal[False],
        idempotency_key: str | None = None,
        multitask: Multitask = "enqueue",
        callback: CallbackSpec | None = None,
    ) -> list[LogEntryOut]: ...

    def invoke(
        self,
        session_id: str,
        input: Any = None,
        *,
        detached: bool = True,
        idempotency_key: str | None = None,
        multitask: Multitask = "enqueue",
        callback: CallbackSpec | None = None,
    ) -> InvokeAccepted | list[LogEntryOut]:
        """Same as ``AsyncStreamwardClient.invoke`` (detached by default: see why there)."""
        if detached:
            body = _invoke_body(input, "detached", idempotency_key, multitask, callback)
            path = f"/v1/sessions/{session_id}/invoke"
            req = _Req("POST", path, body, idempotent=idempotency_key is not None)
            return InvokeAccepted.model_validate(self._call(req))
        return list(
            self.stream(
                session_id,
                input=input,
                idempotency_key=idempotency_key,
                multitask=multitask,
                callback=callback,
            )
        )

    def stream(
        self,
        session_id: str,
        input: Any = UNSET,
        *,
        run_id: str | None = None,
        after: str | None = None,
        idempotency_key: str | None = None,
        multitask: Multitask = "enqueue",
        callback: CallbackSpec | None = None,
        state: StreamState | None = None,
    ) -> Iterator[LogEntryOut]:
        """Same as ``AsyncStreamwardClient.stream``, blocking."""
        st = state or StreamState(session_id, run_id=run_id, last_id=after)
        if input is not UNSET:
            req = _Req(
                "POST",
                f"/v1/sessions/{session_id}/invoke",
                _invoke_body(input, "stream", idempotency_key, multitask, callback),
            )
        else:
            req = _events_req(st)
        while True:
            try:
                with self.http.stream(
                    req.method,
                    req.path,
                    content=None if req.json is None else orjson.dumps(req.json),
                    params=req.params or None,
                    headers=self._stream_headers(req),
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        _raise_for(resp)
                    _on_headers(st, resp)
                    for line in resp.iter_lines():
                        entry = _on_line(st, line)
                        if entry is not None:
                            yield entry
                            if st.done:
                                return
                    return
            except httpx.TransportError as exc:
                if st.resumes >= self.max_resumes or (st.run_id is None and input is not UNSET):
                    raise StreamwardUnavailable(
                        str(self.http.base_url), exc, st.resumes + 1
                    ) from exc
                st.resumes += 1
                time.sleep(self.resume_delay_s)
                req = _events_req(st)

    def deliveries(self, run_id: str) -> RunDeliveries:
        """A run's signed callback deliveries and their attempts."""
        return RunDeliveries.model_validate(
            self._call(_Req("GET", f"/v1/runs/{run_id}/deliveries"))
        )

    def liveness(self, session_id: str) -> Liveness:
        return Liveness.model_validate(
            self._call(_Req("GET", f"/v1/sessions/{session_id}/liveness"))
        )

    def cancel(self, session_id: str, run_id: str | None = None) -> CancelResult:
        body = {"run_id": run_id} if run_id else {}
        return CancelResult.model_validate(
            self._call(_Req("POST", f"/v1/sessions/{session_id}/cancel", body))
        )

    def detach(self, session_id: str, connection_id: str | None = None) -> DetachResult:
        body = {"connection_id": connection_id} if connection_id else {}
        return DetachResult.model_validate(
            self._call(_Req("POST", f"/v1/sessions/{session_id}/detach", body))
        )

    def transcript(
        self, session_id: str, after: str | None = None, limit: int = 100
    ) -> TranscriptPage:
        params = {"limit": str(limit)}
        if after is not None:
            params["after"] = after
        return TranscriptPage.model_validate(
            self._call(_Req("GET", f"/v1/sessions/{session_id}/transcript", params=params))
        )

    def session(self, session_id: str) -> SessionOut:
        return SessionOut.model_validate(self._call(_Req("GET", f"/v1/sessions/{session_id}")))

    def sessions(
        self,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        **filters: Any,
    ) -> SessionPage:
        """One page of sessions (see the async client's ``sessions``)."""
        return SessionPage.model_validate(self._call(_sessions_req(status, cursor, limit, filters)))

    def create_session(
        self,
        session_id: str | None = None,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_type: str | None = None,
        input: Any = _UNSET_INPUT,
        idempotency_key: str | None = None,
    ) -> SessionCreated:
        """See ``AsyncStreamwardClient.create_session``."""
        req = _create_req(session_id, title, metadata, session_type, input, idempotency_key)
        return SessionCreated.model_validate(self._call(req))

    def update_session(self, session_id: str, **patch: Any) -> SessionOut:
        return SessionOut.model_validate(self._call(_update_req(session_id, patch)))

    def start_session(self, session_id: str) -> SessionControl:
        return SessionControl.model_validate(self._call(_control_req(session_id, "start")))

    def stop_session(self, session_id: str, cancel: bool = False) -> SessionControl:
        return SessionControl.model_validate(self._call(_control_req(session_id, "stop", cancel)))

    def ingest(
        self,
        session_id: str,
        run_id: str,
        token: int,
        entries: Sequence[Mapping[str, Any]],
        project: str = "default",
    ) -> IngestResult:
        body = {
            "session_id": session_id,
            "project": project,
            "run_id": run_id,
            "token": token,
            "entries": _entries_json(entries),
        }
        return IngestResult.model_validate(
            self._call(_Req("POST", "/admin/sessions/transcripts/ingest", body), admin=True)
        )

    def locks(
        self,
        replica: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        project: str | None = None,
    ) -> LockPage:
        params = {"limit": str(limit)}
        for k, v in (("replica", replica), ("cursor", cursor), ("project", project)):
            if v is not None:
                params[k] = v
        return LockPage.model_validate(
            self._call(_Req("GET", "/admin/locks", params=params), admin=True)
        )

    def lock(self, session_id: str, project: str = "default") -> LockOut:
        return LockOut.model_validate(
            self._call(
                _Req("GET", f"/admin/locks/{session_id}", params={"project": project}), admin=True
            )
        )

    def lock_detail(
        self, session_id: str, project: str = "default", entries: int = 10
    ) -> LockDetail:
        """Lock, holder liveness, pending inputs, active run and the log's last entries."""
        params = {"project": project, "entries": str(entries)}
        return LockDetail.model_validate(
            self._call(_Req("GET", f"/admin/locks/{session_id}/detail", params=params), admin=True)
        )

    def release_lock(
        self, session_id: str, project: str = "default", reason: str = "admin"
    ) -> ForceReleaseResult:
        params = {"project": project, "reason": reason}
        return ForceReleaseResult.model_validate(
            self._call(
                _Req("POST", f"/admin/locks/{session_id}/release", params=params), admin=True
            )
        )

    def ownership_history(
        self, session_id: str, project: str = "default", limit: int = 50
    ) -> OwnershipHistory:
        params = {"project": project, "limit": str(limit)}
        return OwnershipHistory.model_validate(
            self._call(
                _Req("GET", f"/admin/sessions/{session_id}/history", params=params), admin=True
            )
        )

    def replicas(self) -> list[ReplicaOut]:
        return [
            ReplicaOut.model_validate(x)
            for x in self._call(_Req("GET", "/admin/replicas"), admin=True)
        ]

    def drain_replica(self, replica_id: str) -> DrainResult:
        return DrainResult.model_validate(
            self._call(_Req("POST", f"/admin/replicas/{replica_id}/drain"), admin=True)
        )
