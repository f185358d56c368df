"""SRE commands over the admin API: ``streamward locks ...`` and ``streamward replicas ...``.

Every command talks HTTP through ``api.client.StreamwardClient`` (never Redis directly), so
it works from a laptop against any API instance. Exit codes: 0 ok, 1 error, 2 usage.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import httpx
import orjson
import typer
import yaml
from pydantic import ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamward.api.schemas import LockDetail, LockOut, ReplicaOut
from streamward.client import StreamwardAPIError, StreamwardClient, StreamwardUnavailable

DEFAULT_API_URL = "http://127.0.0.1:8700"
PAGE = 500  # the admin API's largest page

locks_app = typer.Typer(
    help="Inspect and repair session locks (who owns which session).",
    no_args_is_help=True,
    add_completion=False,
)
replicas_app = typer.Typer(
    help="Inspect and drain runner replicas.", no_args_is_help=True, add_completion=False
)


class Output(StrEnum):
    """Output formats of every listing."""

    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"


# -- options shared by every command --------------------------------------------------------

ApiUrl = Annotated[
    str,
    typer.Option(
        "--api-url", envvar="STREAMWARD_API_URL", help="Base URL of a streamward API instance."
    ),
]
AdminToken = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        envvar="STREAMWARD_ADMIN_TOKEN",
        help="Admin bearer token (the API's STREAMWARD_ADMIN_TOKEN).",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Output, typer.Option("-o", "--output", help="Output format.", case_sensitive=False)
]
NoHeaders = Annotated[
    bool, typer.Option("--no-headers", help="Omit the header row (table and wide).")
]
Watch = Annotated[bool, typer.Option("-w", "--watch", help="Refresh in place until Ctrl-C.")]
Interval = Annotated[
    float, typer.Option("--interval", min=0.2, help="Seconds between refreshes with --watch.")
]


def _parse_duration(value: str, hint: str = "DURATION") -> float:
    """``5s``, ``500ms``, ``2m``, ``1h`` or a bare number of seconds, as seconds."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*", value)
    if m is None:
        raise typer.BadParameter(
            f"{value!r} is not a duration: use e.g. 500ms, 5s, 2m, 1h", param_hint=hint
        )
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


# -- output helpers -------------------------------------------------------------------------


def _stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        # piped output: never wrap or truncate a row to a guessed 80 columns
        console = Console(highlight=False, width=10_000)
    return console


_err = Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _parse_ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def fmt_duration(seconds: float | None) -> str:
    """Compact human duration: ``850ms``, ``4.2s``, ``42s``, ``3m05s``, ``2h10m``, ``3d4h``."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 1:
        return f"{int(s * 1000)}ms"
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{int(s)}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600)}h"


def _age(ts: str | None, now: float) -> str:
    # ages use this machine's clock against Redis timestamps: keep clocks in sync (NTP)
    t = _parse_ts(ts)
    return "-" if t is None else fmt_duration(now - t)


def session_ref(lock: LockOut) -> str:
    """How a listing names a session: ``id`` in project default, else ``project/id``."""
    return lock.session_id if lock.project == "default" else f"{lock.project}/{lock.session_id}"


ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")


def _check_id(value: str, hint: str) -> str:
    if ID.fullmatch(value) is None:
        raise typer.BadParameter(
            f"{value!r} is not an id: 1-200 letters, digits or . _ : -", param_hint=hint
        )
    return value


def _split_session(session: str, project: str | None) -> tuple[str, str]:
    """``project/id`` or ``id`` (+ ``--project``) → (project, id), checked locally."""
    if "/" in session:
        proj, _, sid = session.partition("/")
        if project is not None and project != proj:
            raise typer.BadParameter(
                f"{session!r} names project {proj!r} but --project is {project!r}",
                param_hint="SESSION",
            )
    else:
        proj, sid = project or "default", session
    return _check_id(proj, "--project"), _check_id(sid, "SESSION")


def _dump(data: Any, output: Output) -> str:
    if output is Output.json:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def _table(columns: list[str], rows: list[list[Text | str]], headers: bool) -> Table:
    table = Table(
        box=None,
        show_header=headers,
        header_style="bold",
        pad_edge=False,
        show_edge=False,
        padding=(0, 3, 0, 0),
    )
    for name in columns:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*row)
    return table


# -- errors ---------------------------------------------------------------------------------


@dataclass
class Conn:
    api_url: str
    admin_token: str | None

    def client(self) -> StreamwardClient:
        if not self.admin_token:
            _fail(
                "no admin token: set --admin-token or STREAMWARD_ADMIN_TOKEN "
                "(`streamward dev` prints one as `admin token: ...`)",
                code=2,
            )
        return StreamwardClient(self.api_url, admin_token=self.admin_token, timeout=10.0)


def explain(exc: Exception, api_url: str) -> str:
    """What went wrong and what to do about it, in one or two sentences."""
    if isinstance(exc, StreamwardUnavailable) and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__  # the transport error says best what to do
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return (
            f"cannot reach the API at {api_url}: start it with `streamward api` "
            "or set --api-url / STREAMWARD_API_URL"
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"the API at {api_url} did not answer in time; is it overloaded? try again"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return f"{api_url!r} is not a usable API URL: pass e.g. --api-url {DEFAULT_API_URL}"
    if isinstance(exc, httpx.HTTPError):
        return f"talking to the API at {api_url} failed: {exc or type(exc).__name__}"
    if isinstance(exc, StreamwardAPIError):
        if exc.code.startswith("http_"):  # no problem+json body: not a streamward API
            return (
                f"the server at {api_url} answered HTTP {exc.status} without a streamward "
                "error body: is --api-url / STREAMWARD_API_URL pointing at a streamward API?"
            )
        if exc.status == 401:
            return "the API wants an admin token: set --admin-token or STREAMWARD_ADMIN_TOKEN"
        if exc.code == "admin_disabled":
            return (
                "the API has no admin token configured: restart it with "
                "STREAMWARD_ADMIN_TOKEN set, and pass the same value with --admin-token"
            )
        if exc.status == 403:
            return (
                "the admin token was refused: set --admin-token / STREAMWARD_ADMIN_TOKEN "
                "to the API's STREAMWARD_ADMIN_TOKEN"
            )
        if exc.status == 503:
            return f"the API cannot reach Redis ({exc.detail}); check Redis, then retry"
        if exc.status == 404 and exc.code == "not_found":
            return (
                f"the API at {api_url} does not know this endpoint: is it an older "
                "streamward version, or another service?"
            )
        return f"{exc.detail or exc.code} ({exc.status} {exc.code})"
    if isinstance(exc, orjson.JSONDecodeError | ValidationError):
        return (
            f"the answer from {api_url} is not a streamward API answer: "
            "is --api-url / STREAMWARD_API_URL pointing at a streamward API?"
        )
    return str(exc)


# everything a call through the client can raise that is not a bug here
CALL_ERRORS = (
    httpx.HTTPError,
    StreamwardAPIError,
    StreamwardUnavailable,
    orjson.JSONDecodeError,
    ValidationError,
)


@contextlib.contextmanager
def _errors(api_url: str) -> Iterator[None]:
    """Turn transport and API errors into a message and exit code 1 (never a traceback)."""
    try:
        yield
    except CALL_ERRORS as exc:
        _fail(explain(exc, api_url))


def pause(seconds: float) -> None:
    """Wait between refreshes (a seam: tests replace it to stop a watch)."""
    time.sleep(seconds)


def _emit(render: Callable[[], RenderableType | str], watch: bool, interval: float) -> None:
    """Print once, or refresh in place (rich Live) until Ctrl-C."""
    out = _stdout()
    first = render()
    if not watch:
        if isinstance(first, str):
            # machine formats bypass rich: no markup, no wrapping, exact bytes
            sys.stdout.write(first + "\n")
        else:
            out.print(first)
        return

    def frame(body: RenderableType | str, note: str = "") -> RenderableType:
        stamp = Text(
            f"every {interval:g}s, {time.strftime('%H:%M:%S')}{note}  (Ctrl-C to stop)",
            style="dim",
        )
        return Group(stamp, Text(body) if isinstance(body, str) else body)

    last: RenderableType | str = first
    if not out.is_terminal:
        # piped: a Live display draws only its last frame there; print one frame per interval
        _frames(render, first, frame, out, interval)
        return
    try:
        with Live(frame(first), console=out, auto_refresh=False, transient=False) as live:
            while True:
                pause(interval)
                note = ""
                try:
                    last = render()
                except CALL_ERRORS as exc:
                    # keep watching through a blip; the last good view stays on screen
                    note = f"  [last refresh failed: {explain(exc, '')[:120]}]"
                live.update(frame(last, note), refresh=True)
    except KeyboardInterrupt:
        return


def _frames(
    render: Callable[[], RenderableType | str],
    first: RenderableType | str,
    frame: Callable[[RenderableType | str, str], RenderableType],
    out: Console,
    interval: float,
) -> None:
    body, note = first, ""
    try:
        while True:
            shown = frame(body, note)
            out.print(shown)
            out.file.flush()
            pause(interval)
            note = ""
            try:
                body = render()
            except CALL_ERRORS as exc:
                note = f"  [last refresh failed: {explain(exc, '')[:120]}]"
    except (KeyboardInterrupt, BrokenPipeError):
        return


# -- locks ----------------------------------------------------------------------------------

LOCK_COLUMNS = [
    "SESSION",
    "HOLDER",
    "INCARNATION",
    "TOKEN",
    "TRANSITIONS",
    "ACQUIRED",
    "RENEWED",
    "EXPIRES-IN",
    "STATE",
]
LOCK_WIDE = [*LOCK_COLUMNS, "PROJECT", "EPOCH", "ACQUIRED-AT", "RENEWED-AT"]
STATE_STYLE = {"held": "green", "orphaned": "bold red", "free": "dim", "ready": "green"}
# highlighted in EXPIRES-IN: the lease is valid for less than this (the live page's default)
EXPIRING_SOON_MS = 1000


def fetch_locks(
    client: StreamwardClient,
    replica: str | None,
    project: str | None,
    limit: int,
) -> list[LockOut]:
    """Every page of the lock listing (ZSCAN may repeat an item: keep the first)."""
    seen: dict[tuple[str, str], LockOut] = {}
    cursor: str | None = None
    while True:
        page = client.locks(replica=replica, cursor=cursor, limit=PAGE, project=project)
        for lock in page.items:
            seen.setdefault((lock.project, lock.session_id), lock)
        cursor = page.next_cursor
        if cursor is None or len(seen) >= limit:
            break
    return list(seen.values())[:limit]


def filter_locks(
    locks: list[LockOut],
    *,
    include_free: bool,
    expiring_within_s: float | None,
    state: str | None = None,
) -> list[LockOut]:
    out = []
    for lock in locks:
        if state is not None and lock.state != state:
            continue
        if state is None and not include_free and lock.state == "free":
            continue
        if expiring_within_s is not None and (
            lock.state == "free"
            or lock.expires_in_ms is None
            or lock.expires_in_ms > expiring_within_s * 1000
        ):
            continue
        out.append(lock)
    return sorted(out, key=lambda x: (x.project, x.session_id))


def _lock_row(lock: LockOut, now: float, wide: bool) -> list[Text | str]:
    exp = lock.expires_in_ms
    exp_style = "yellow" if exp is not None and exp < EXPIRING_SOON_MS else ""
    row: list[Text | str] = [
        session_ref(lock),
        lock.holder or "-",
        lock.incarnation or "-",
        "-" if lock.token is None else str(lock.token),
        str(lock.transitions),
        _age(lock.acquired_at, now),
        _age(lock.renewed_at, now),
        Text("-" if exp is None else fmt_duration(exp / 1000), style=exp_style),
        Text(lock.state, style=STATE_STYLE.get(lock.state, "")),
    ]
    if wide:
        row += [lock.project, str(lock.epoch), lock.acquired_at or "-", lock.renewed_at or "-"]
    return row


def render_locks(locks: list[LockOut], output: Output, headers: bool) -> RenderableType | str:
    if output in (Output.json, Output.yaml):
        return _dump([x.model_dump(mode="json") for x in locks], output)
    now = time.time()
    wide = output is Output.wide
    rows = [_lock_row(x, now, wide) for x in locks]
    if not rows and headers:
        return Text("no locks match", style="dim")
    return _table(LOCK_WIDE if wide else LOCK_COLUMNS, rows, headers)


@locks_app.command("ls")
def locks_ls(
    replica: Annotated[
        str | None, typer.Option("--replica", "-r", help="Only sessions this replica holds.")
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project.")
    ] = None,
    expiring_within: Annotated[
        str | None,
        typer.Option(
            "--expiring-within",
            metavar="DURATION",
            help="Only leases that stop being valid within DURATION (e.g. 5s, 500ms, 2m).",
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state", help="Only this state: held, orphaned or free (implies --all for free)."
        ),
    ] = None,
    include_free: Annotated[
        bool, typer.Option("--all", "-a", help="Also list sessions nobody holds (state free).")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="Most sessions to read.")] = 10_000,
    output: OutputOpt = Output.table,
    no_headers: NoHeaders = False,
    watch: Watch = False,
    interval: Interval = 1.0,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """List session locks: holder, token, ages, time left, state (held / orphaned / free)."""
    within = (
        None if expiring_within is None else _parse_duration(expiring_within, "--expiring-within")
    )
    if state is not None and state not in ("held", "orphaned", "free"):
        raise typer.BadParameter("use held, orphaned or free", param_hint="--state")
    if replica is not None:
        _check_id(replica, "--replica")
    if project is not None:
        _check_id(project, "--project")
    conn = Conn(api_url, admin_token)
    with _errors(api_url), conn.client() as client:

        def render() -> RenderableType | str:
            locks = fetch_locks(client, replica, project, limit)
            shown = filter_locks(
                locks, include_free=include_free, expiring_within_s=within, state=state
            )
            return render_locks(shown, output, not no_headers)

        _emit(render, watch, interval)


def _kv(rows: list[tuple[str, RenderableType | str]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    return table


def render_detail(d: LockDetail, output: Output) -> RenderableType | str:
    if output in (Output.json, Output.yaml):
        return _dump(d.model_dump(mode="json"), output)
    now = time.time()
    lock = d.lock
    holder: RenderableType | str = "-"
    if lock.holder:
        r = d.holder_replica
        rstate = r.state if r is not None else "unknown"
        holder = Text.assemble(
            f"{lock.holder} (incarnation {lock.incarnation}), replica ",
            (rstate, STATE_STYLE.get(rstate, "bold red")),
            f", last heartbeat {_age(r.last_heartbeat if r else None, now)} ago",
        )
    exp = lock.expires_in_ms
    rows: list[tuple[str, RenderableType | str]] = [
        ("session", session_ref(lock)),
        ("project", lock.project),
        ("state", Text(lock.state, style=STATE_STYLE.get(lock.state, ""))),
        ("status", d.status or "-"),
        ("holder", holder),
        ("token", f"{lock.token if lock.token is not None else '-'} (epoch {lock.epoch})"),
        ("acquired", f"{lock.acquired_at or '-'} ({_age(lock.acquired_at, now)} ago)"),
        ("renewed", f"{lock.renewed_at or '-'} ({_age(lock.renewed_at, now)} ago)"),
        ("expires in", "-" if exp is None else fmt_duration(exp / 1000)),
        ("transitions", str(lock.transitions)),
        ("attached", str(d.attached)),
    ]
    run = d.active_run
    rows.append(
        (
            "active run",
            "-"
            if run is None
            else f"{run.run_id} {run.status} attempt {run.attempt or '-'} "
            f"on {run.replica_id or '-'} (token {run.token if run.token is not None else '-'})",
        )
    )
    pending = [
        f"{p.run_id} from {p.source}, {_age(p.enqueued_at, now)} ago" for p in d.pending_inputs
    ]
    more = d.pending - len(d.pending_inputs)
    if more > 0:
        pending.append(f"... and {more} more")
    rows.append(("pending", f"{d.pending}" + ("".join(f"\n  {p}" for p in pending))))
    parts: list[RenderableType] = [_kv(rows)]
    if d.last_entries:
        entries = _table(
            ["SEQ", "TYPE", "RUN", "TOKEN", "AGE", "DATA"],
            [
                [
                    str(e.seq),
                    e.type,
                    e.run_id,
                    str(e.token),
                    _age(e.ts, now),
                    orjson.dumps(e.data).decode()[:80],
                ]
                for e in d.last_entries
            ],
            True,
        )
        parts += [Text(f"\nlast {len(d.last_entries)} log entries:", style="bold"), entries]
    else:
        parts.append(Text("\nthe log is empty", style="dim"))
    return Group(*parts)


SessionArg = Annotated[
    str, typer.Argument(help="Session id, or project/id (as `locks ls` shows it).")
]
ProjectOpt = Annotated[
    str | None,
    typer.Option("--project", "-p", help="Project of the session (default: default)."),
]


@locks_app.command("show")
def locks_show(
    session: SessionArg,
    project: ProjectOpt = None,
    entries: Annotated[int, typer.Option(min=0, max=100, help="Log entries to show.")] = 10,
    output: OutputOpt = Output.table,
    watch: Watch = False,
    interval: Interval = 1.0,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """One session: holder and its liveness, pending inputs, active run, last log entries."""
    proj, sid = _split_session(session, project)
    conn = Conn(api_url, admin_token)
    with _errors(api_url), conn.client() as client:
        _emit(
            lambda: render_detail(client.lock_detail(sid, proj, entries), output), watch, interval
        )


@locks_app.command("history")
def locks_history(
    session: SessionArg,
    project: ProjectOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Events to show.")] = 50,
    output: OutputOpt = Output.table,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """Who owned a session when, newest first (acquired, taken_over, released,
    force_released with the operator's reason)."""
    proj, sid = _split_session(session, project)
    conn = Conn(api_url, admin_token)
    with _errors(api_url), conn.client() as client:
        hist = client.ownership_history(sid, proj, limit)
    if output in (Output.json, Output.yaml):
        sys.stdout.write(_dump(hist.model_dump(mode="json"), output) + "\n")
        return
    out = Console(soft_wrap=True)
    if not hist.events:
        out.print(f"{proj}/{sid}: no ownership history")
        return
    for e in hist.events:
        who = f"{e.replica_id}/{e.incarnation}" if e.replica_id else "-"
        why = f"  reason: {e.reason}" if e.reason else ""
        out.print(f"{e.at or '-'}  {e.event:<15} {who}  token {e.token}{why}")


def _holder_line(lock: LockOut) -> str:
    if lock.holder is None:
        return f"no holder (epoch {lock.epoch}, state {lock.state})"
    return (
        f"holder {lock.holder} (incarnation {lock.incarnation}), token {lock.token}, "
        f"epoch {lock.epoch}, state {lock.state}"
    )


@locks_app.command("release")
def locks_release(
    session: SessionArg,
    project: ProjectOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    reason: Annotated[str, typer.Option(help="Recorded with the release.")] = "admin",
    output: OutputOpt = Output.table,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """Break-glass: drop the session's lease and fence its holder (asks first unless --yes)."""
    proj, sid = _split_session(session, project)
    conn = Conn(api_url, admin_token)
    ref = sid if proj == "default" else f"{proj}/{sid}"
    err = _err
    with _errors(api_url), conn.client() as client:
        before = client.lock(sid, proj)
        err.print(f"before: {_holder_line(before)}", soft_wrap=True)
        if before.holder is None:
            err.print(f"{ref} holds no lease: nothing to release")
            if output in (Output.json, Output.yaml):
                sys.stdout.write(_dump(before.model_dump(mode="json"), output) + "\n")
            return
        if not yes:
            question = (
                f"Force-release {ref}? {before.holder} is fenced at once (its next write is "
                "refused) and any pending input goes to another runner. (--yes skips this "
                "question)"
            )
            try:
                answer = typer.confirm(question, default=False, err=True)
            except typer.Abort:  # stdin closed or not a terminal: no answer
                answer = False
                _err.print("")
            if not answer:
                _fail("aborted: nothing was released (pass --yes to skip the question)")
        res = client.release_lock(sid, proj, reason=reason)
    if output in (Output.json, Output.yaml):
        sys.stdout.write(_dump(res.model_dump(mode="json"), output) + "\n")
        return
    out = _stdout()
    out.print(f"released {ref}", soft_wrap=True)
    out.print(f"  before: {_holder_line(res.before)}", soft_wrap=True)
    out.print(f"  after:  {_holder_line(res.after)}", soft_wrap=True)


# -- replicas -------------------------------------------------------------------------------

REPLICA_COLUMNS = [
    "REPLICA",
    "INCARNATION",
    "STARTED",
    "LEASES",
    "IN-FLIGHT",
    "LAST-HEARTBEAT",
    "STATE",
]
REPLICA_WIDE = [*REPLICA_COLUMNS, "HOST", "VERSION", "STARTED-AT", "HEARTBEAT-AT"]
REPLICA_STYLE = {"ready": "green", "draining": "yellow", "dead": "bold red"}


def _replica_row(r: ReplicaOut, now: float, wide: bool) -> list[Text | str]:
    row: list[Text | str] = [
        r.replica_id,
        r.incarnation or "-",
        _age(r.started_at, now),
        str(r.leases),
        str(r.in_flight),
        _age(r.last_heartbeat, now),
        Text(r.state, style=REPLICA_STYLE.get(r.state, "")),
    ]
    if wide:
        row += [r.host or "-", r.version or "-", r.started_at or "-", r.last_heartbeat or "-"]
    return row


def render_replicas(
    replicas: list[ReplicaOut], output: Output, headers: bool
) -> RenderableType | str:
    if output in (Output.json, Output.yaml):
        return _dump([r.model_dump(mode="json") for r in replicas], output)
    now = time.time()
    wide = output is Output.wide
    if not replicas and headers:
        return Text("no replicas", style="dim")
    rows = [_replica_row(r, now, wide) for r in sorted(replicas, key=lambda r: r.replica_id)]
    return _table(REPLICA_WIDE if wide else REPLICA_COLUMNS, rows, headers)


@replicas_app.command("ls")
def replicas_ls(
    state: Annotated[
        str | None, typer.Option("--state", help="Only this state: ready, draining or dead.")
    ] = None,
    output: OutputOpt = Output.table,
    no_headers: NoHeaders = False,
    watch: Watch = False,
    interval: Interval = 1.0,
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """List replicas: incarnation, uptime, leases, runs in flight, last heartbeat, state."""
    if state is not None and state not in ("ready", "draining", "dead"):
        raise typer.BadParameter("use ready, draining or dead", param_hint="--state")
    conn = Conn(api_url, admin_token)
    with _errors(api_url), conn.client() as client:

        def render() -> RenderableType | str:
            items = [r for r in client.replicas() if state is None or r.state == state]
            return render_replicas(items, output, not no_headers)

        _emit(render, watch, interval)


@replicas_app.command("drain")
def replicas_drain(
    replica: Annotated[str, typer.Argument(help="Replica id (as `replicas ls` shows it).")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the replica has handed back and exited.")
    ] = False,
    timeout: Annotated[
        str, typer.Option(metavar="DURATION", help="Longest --wait (e.g. 60s, 5m).")
    ] = "120s",
    api_url: ApiUrl = DEFAULT_API_URL,
    admin_token: AdminToken = None,
) -> None:
    """Ask a replica to drain: it stops claiming, finishes runs, hands sessions back, exits."""
    limit_s = _parse_duration(timeout, "--timeout")
    _check_id(replica, "REPLICA")
    conn = Conn(api_url, admin_token)
    out = _stdout()
    with _errors(api_url), conn.client() as client:
        try:
            client.drain_replica(replica)
        except StreamwardAPIError as exc:
            if exc.code == "unknown_replica":
                _fail(
                    f"no live replica {replica!r}: `streamward replicas ls` lists them "
                    "(a dead replica has nothing to drain)"
                )
            raise
        out.print(f"replica {replica}: draining", soft_wrap=True)
        if not wait:
            return
        deadline = time.monotonic() + limit_s
        with out.status(f"waiting for {replica} to hand back its sessions and exit...") as st:
            while time.monotonic() < deadline:
                current = {r.replica_id: r for r in client.replicas()}.get(replica)
                if current is None or current.state == "dead":
                    out.print(f"replica {replica}: gone", soft_wrap=True)
                    return
                st.update(
                    f"waiting for {replica}: {current.leases} leases, "
                    f"{current.in_flight} runs in flight..."
                )
                time.sleep(0.5)
        _fail(f"replica {replica} still alive after {timeout}; check its log")
