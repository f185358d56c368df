"""Startup capability probe: what Redis is this, and can streamward run on it?

streamward needs Redis ≥ 6.2 (XAUTOCLAIM, GETDEL-era stream commands), Lua scripting
(EVAL, EVALSHA and SCRIPT LOAD: every lease operation is a script), a writable master, and a
client mode that matches the server (a standalone client on a Cluster node gets MOVED
errors; a Cluster client on a standalone server cannot start). ``probe()`` checks all of
that in a few round trips and says what it found in one line; ``ProbeError`` explains what
is missing. The API lifespan, the runner start and ``streamward probe`` call it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from streamward.lua.client import RedisClient
from streamward.lua.config import RedisConfig

MIN_VERSION = (6, 2, 0)
# a script that also proves scripts may call commands and read Redis time
PROBE_SCRIPT = "return {redis.call('TIME')[1] and 1, ARGV[1]}"


class ProbeError(RuntimeError):
    """Redis answers but streamward cannot run on it (the message says why and what to do)."""

    def __init__(self, message: str, found: Capabilities | None = None) -> None:
        super().__init__(message)
        self.found = found


@dataclass
class Capabilities:
    """What the probe found."""

    mode: str  # the client's mode: standalone | sentinel | cluster
    target: str  # RedisConfig.describe()
    version: str = ""
    server_mode: str = ""  # INFO server redis_mode: standalone | cluster | sentinel
    role: str = ""  # master | slave (standalone/sentinel: the node we talk to)
    masters: int = 0
    replicas: int = 0
    scripting: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """One log line: ``redis 7.0.15 cluster (3 masters, 3 replicas) ..., scripting ok``."""
        shape = f"{self.masters} master{'s' if self.masters != 1 else ''}"
        shape += f", {self.replicas} replica{'s' if self.replicas != 1 else ''}"
        scripting = "scripting ok" if self.scripting else "scripting UNAVAILABLE"
        text = (
            f"redis {self.version or '?'} {self.server_mode or '?'} ({shape}) "
            f"via {self.target}: {scripting}"
        )
        if self.problems:
            text += "; " + "; ".join(self.problems)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _scripting_problem(exc: ResponseError) -> str:
    msg = str(exc)
    unknown = re.search(r"unknown command [`']([^`']*)[`']", msg, re.IGNORECASE)
    if unknown:
        return (
            f"Lua scripting is unavailable (unknown command '{unknown.group(1)}'): "
            "streamward runs every lease operation as a "
            "script. Enable EVAL, EVALSHA and SCRIPT (no rename-command / ACL denying them; "
            "managed services: pick a plan or parameter group that allows Lua scripts)"
        )
    if "noperm" in msg.lower() or "no permissions" in msg.lower():
        return (
            f"the Redis user may not run scripts ({msg}): grant +@scripting "
            "(EVAL, EVALSHA, SCRIPT LOAD) to streamward's ACL user"
        )
    return f"Lua scripting failed ({msg})"


async def _check_scripting(client: RedisClient) -> str | None:
    """EVAL, SCRIPT LOAD and EVALSHA a trivial script (on every primary of a Cluster)."""
    try:
        if isinstance(client, RedisCluster):
            replies = await client.execute_command(
                "EVAL", PROBE_SCRIPT, 0, "x", target_nodes=RedisCluster.PRIMARIES
            )
            evals = list(replies.values()) if isinstance(replies, dict) else [replies]
            sha = await client.script_load(PROBE_SCRIPT)
            shas = await client.execute_command(
                "EVALSHA", sha, 0, "y", target_nodes=RedisCluster.PRIMARIES
            )
            evalshas = list(shas.values()) if isinstance(shas, dict) else [shas]
        else:
            evals = [await client.eval(PROBE_SCRIPT, 0, "x")]
            sha = await client.script_load(PROBE_SCRIPT)
            evalshas = [await client.evalsha(sha, 0, "y")]
    except ResponseError as exc:
        return _scripting_problem(exc)
    if any(list(r) != [1, "x"] for r in evals) or any(list(r) != [1, "y"] for r in evalshas):
        return f"Lua scripting answered unexpectedly: {evals!r} / {evalshas!r}"
    return None


async def probe(client: RedisClient, cfg: RedisConfig | None = None) -> Capabilities:
    """Probe ``client`` (built from ``cfg``). Raises ProbeError when streamward cannot run on
    it, RedisError when Redis cannot be reached."""
    cfg = cfg or RedisConfig(mode="cluster" if isinstance(client, RedisCluster) else "standalone")
    found = Capabilities(mode=cfg.mode, target=cfg.describe())
    try:
        if isinstance(client, RedisCluster):
            await client.initialize()
            info = await client.info("server", target_nodes=RedisCluster.RANDOM)
            nodes = await client.cluster_nodes()
            for node in nodes.values():
                flags = set(str(node.get("flags", "")).split(","))
                if "fail" in flags or "fail?" in flags:
                    continue
                if "master" in flags and node.get("slots"):
                    found.masters += 1
                elif "slave" in flags:
                    found.replicas += 1
            found.role = "master"
        else:
            info = await client.info("server")
            repl = await client.info("replication")
            role = str(repl.get("role", ""))
            found.role = "replica" if role == "slave" else role
            found.masters = 1
            found.replicas = int(repl.get("connected_slaves", 0) or 0)
    except ResponseError as exc:
        raise ProbeError(f"INFO failed on {found.target}: {exc}", found) from exc
    except RedisError as exc:
        if isinstance(client, RedisCluster) and "cluster mode is not enabled" in str(exc).lower():
            raise ProbeError(
                f"{found.target} is not a Redis Cluster node: set STREAMWARD_REDIS_MODE="
                "standalone (or sentinel), or point STREAMWARD_REDIS_URL at a Cluster node",
                found,
            ) from exc
        raise
    if isinstance(info, dict) and info and all(isinstance(v, dict) for v in info.values()):
        info = next(iter(info.values()))  # per-node replies
    found.version = str(info.get("redis_version", ""))
    found.server_mode = str(info.get("redis_mode", ""))
    if found.server_mode == "sentinel":
        raise ProbeError(
            f"{found.target} is a Sentinel, not a data node: set STREAMWARD_REDIS_MODE=sentinel, "
            "STREAMWARD_SENTINELS=<host:port,...> and STREAMWARD_SENTINEL_MASTER=<name>",
            found,
        )
    if found.server_mode == "cluster" and not isinstance(client, RedisCluster):
        found.problems.append(
            "the server is a Redis Cluster node but the client is not in cluster mode: "
            "set STREAMWARD_REDIS_MODE=cluster"
        )
    if found.version and _version_tuple(found.version) < MIN_VERSION:
        found.problems.append(
            f"Redis {found.version} is too old: streamward needs "
            f"{'.'.join(map(str, MIN_VERSION))} or newer (XAUTOCLAIM, stream commands)"
        )
    if found.role and found.role != "master":
        found.problems.append(
            f"connected to a read-only {found.role}: point streamward at the master "
            "(or use sentinel mode, which always finds it)"
        )
    problem = await _check_scripting(client)
    found.scripting = problem is None
    if problem:
        found.problems.append(problem)
    if found.problems:
        raise ProbeError(
            f"streamward cannot run on {found.target} (redis {found.version or '?'} "
            f"{found.server_mode or '?'}): {'; '.join(found.problems)}",
            found,
        )
    return found


async def probe_config(cfg: RedisConfig, **connect_kwargs: Any) -> Capabilities:
    """Connect with ``cfg``, probe, close."""
    from streamward.lua.client import connect_from_config

    opts: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
    opts.update(connect_kwargs)
    client = connect_from_config(cfg, **opts)
    try:
        return await probe(client, cfg)
    finally:
        await client.aclose()
