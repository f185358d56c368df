"""lua/client.py: Redis settings, and clients for every transport (TCP, unix, TLS, auth)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from streamward.api.config import Settings
from streamward.lua.client import (
    HiredisPackConnection,
    HiredisPackSSLConnection,
    HiredisPackUnixConnection,
    HiredisSentinelConnection,
    HiredisSentinelSSLConnection,
    StreamwardCluster,
    connect,
    connect_from_config,
    connect_sync,
)
from streamward.lua.config import (
    DEFAULT_SENTINEL_PORT,
    DEFAULT_URL,
    RedisConfig,
    RedisSettings,
    parse_sentinels,
    redis_config_from_env,
)
from streamward.lua.keys import Keys
from streamward.lua.probe import probe
from streamward.lua.store import LeaseStore
from streamward.tools.server import RedisServer, free_port

# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("a:1", (("a", 1),)),
        ("a:1, b ,c:3", (("a", 1), ("b", DEFAULT_SENTINEL_PORT), ("c", 3))),
        ("[::1]:26380,[fe80::1]", (("::1", 26380), ("fe80::1", DEFAULT_SENTINEL_PORT))),
        ("10.0.0.1:5000,", (("10.0.0.1", 5000),)),
    ],
)
def test_parse_sentinels(text: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert parse_sentinels(text) == expected


@pytest.mark.parametrize("bad", ["a:b", ":1", "a:0", "a:70000"])
def test_parse_sentinels_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="sentinel address"):
        parse_sentinels(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sentinel"}, "at least one sentinel"),
        ({"mode": "sentinel", "sentinels": (("a", 1),), "sentinel_master": ""}, "master's name"),
        ({"mode": "replicated"}, "redis mode must be one of"),
        ({"url": "http://x"}, "redis://, rediss:// or unix://"),
        ({"url": "unix:///tmp/r.sock", "mode": "cluster"}, "only work in standalone"),
        ({"tls_cert_file": "c.pem"}, "both the cert file and the key file"),
    ],
)
def test_config_rejects_inconsistent_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisConfig(**kwargs)


def test_describe_never_shows_passwords() -> None:
    cfg = RedisConfig(url="rediss://user:s3cret@redis.example:6380/2", password="other")
    assert cfg.describe() == "standalone rediss://redis.example:6380/2 tls"
    assert "s3cret" not in repr(cfg) and "other" not in repr(cfg)
    many = RedisConfig(url="redis://a:7000,redis://b:7001", mode="cluster")
    assert many.describe() == "cluster redis://a:7000 (+1 more)"
    sent = RedisConfig(mode="sentinel", sentinels=(("s1", 26401),), sentinel_password="pw")
    assert sent.describe() == "sentinel master 'mymaster' via s1:26401"
    assert "pw" not in repr(sent)


def test_settings_read_every_redis_field_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "STREAMWARD_REDIS_MODE": "sentinel",
        "STREAMWARD_SENTINELS": "s1:26401,s2:26380",
        "STREAMWARD_SENTINEL_MASTER": "main",
        "STREAMWARD_SENTINEL_PASSWORD": "spw",
        "STREAMWARD_REDIS_USERNAME": "sw",
        "STREAMWARD_REDIS_PASSWORD": "pw",
        "STREAMWARD_REDIS_TLS": "true",
        "STREAMWARD_REDIS_TLS_CA_FILE": "/ca.pem",
        "STREAMWARD_REDIS_TLS_CERT_FILE": "/c.pem",
        "STREAMWARD_REDIS_TLS_KEY_FILE": "/k.pem",
        "STREAMWARD_REDIS_TLS_CHECK_HOSTNAME": "false",
        "STREAMWARD_REDIS_AUTOPIPELINE": "false",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    expected = RedisConfig(
        url=DEFAULT_URL,
        mode="sentinel",
        sentinels=(("s1", 26401), ("s2", 26380)),
        sentinel_master="main",
        sentinel_password="spw",
        username="sw",
        password="pw",
        tls=True,
        tls_ca_file="/ca.pem",
        tls_cert_file="/c.pem",
        tls_key_file="/k.pem",
        tls_check_hostname=False,
    )
    assert Settings().redis_config() == expected
    assert Settings().redis_autopipeline is False  # a process setting, not a connection's
    assert redis_config_from_env(env) == expected
    assert "pw" not in repr(Settings())  # secrets stay out of logs
    # every field of the mixin is an env var the settings read
    assert {f"STREAMWARD_{n.upper()}" for n in RedisSettings.model_fields} == set(env) | {
        "STREAMWARD_REDIS_URL"
    }


def test_settings_refuse_sentinel_mode_without_sentinels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMWARD_REDIS_MODE", "sentinel")
    with pytest.raises(ValidationError, match="at least one sentinel"):
        Settings()
    monkeypatch.setenv("STREAMWARD_SENTINELS", "nohost:notaport")
    with pytest.raises(ValidationError, match="port must be a number"):
        Settings()


# -- which client and connection class each mode gets -------------------------------------------


async def test_each_mode_gets_redis_pys_own_client_and_the_hiredis_packer() -> None:
    plain = connect_from_config(RedisConfig(url="redis://h:1/3", password="pw"))
    assert isinstance(plain, Redis)
    pool = plain.connection_pool
    assert pool.connection_class is HiredisPackConnection
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    tls = connect_from_config(RedisConfig(url="rediss://h:1/0", tls_ca_file="/ca.pem"))
    assert isinstance(tls, Redis)
    assert tls.connection_pool.connection_class is HiredisPackSSLConnection
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    unix = connect_from_config(RedisConfig(url="unix:///tmp/x.sock"))
    assert isinstance(unix, Redis)
    assert unix.connection_pool.connection_class is HiredisPackUnixConnection
    sent_cfg = RedisConfig(mode="sentinel", sentinels=(("s", 1),))
    sent = connect_from_config(sent_cfg, blocking=True, max_connections=7)
    assert isinstance(sent, Redis)
    assert sent.connection_pool.connection_class is HiredisSentinelConnection
    assert sent.connection_pool.max_connections == 7
    sent_tls = connect_from_config(RedisConfig(mode="sentinel", sentinels=(("s", 1),), tls=True))
    assert isinstance(sent_tls, Redis)
    assert sent_tls.connection_pool.connection_class is HiredisSentinelSSLConnection
    cluster = connect_from_config(RedisConfig(url="redis://a:7000,redis://b:7001", mode="cluster"))
    assert isinstance(cluster, StreamwardCluster) and isinstance(cluster, RedisCluster)
    assert [(n.host, n.port) for n in cluster.nodes_manager.startup_nodes.values()] == [
        ("a", 7000),
        ("b", 7001),
    ]
    with pytest.raises(ValueError, match="single database"):
        connect_from_config(RedisConfig(url="redis://a:7000/2", mode="cluster"))
    for c in (plain, tls, unix, sent, sent_tls, cluster):
        await c.aclose()


async def test_standalone_client_works_and_blocks_for_a_free_connection(
    redis_server: RedisServer,
) -> None:
    client = connect(redis_server.url, max_connections=4, blocking=True, pool_timeout_s=2.0)
    try:
        assert await client.ping()
        store = LeaseStore(client, Keys("swt"))
        assert not store.cluster
        s = store.keys.session("p", "client-test")
        await client.delete(s.lease, s.epoch, s.meta)
        lease = await store.acquire(s, "r1", "i1", 10_000)
        assert lease.token >= 1
    finally:
        await client.aclose()


async def test_connections_name_streamward_without_a_metadata_lookup_each(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py's default looks its own version up in the package metadata for every new
    # connection (~1 ms of CPU): a burst of blocking reads opened dozens at once
    def no_lookup() -> str:
        raise AssertionError("redis-py looked its version up for a connection")

    monkeypatch.setattr("redis.utils.get_lib_version", no_lookup)
    client = connect(redis_server.url, max_connections=8, blocking=True)
    sync = connect_sync(RedisConfig(url=redis_server.url))
    try:
        # eight connections at once: a blocking read holds each one
        await asyncio.gather(*(client.xread({"client-test:none": "$"}, block=50) for _ in range(8)))
        assert sync.ping()
        # what CLIENT SETINFO sends (Redis 7.2+ shows it in CLIENT LIST; older ones refuse
        # SETINFO, which redis-py ignores)
        for kwargs in (
            client.connection_pool.connection_kwargs,
            sync.connection_pool.connection_kwargs,
        ):
            if "driver_info" in kwargs:  # redis-py with DriverInfo (the one installed here)
                name, version = (
                    kwargs["driver_info"].formatted_name,
                    kwargs["driver_info"].lib_version,
                )
            else:
                name, version = kwargs["lib_name"], kwargs["lib_version"]
            assert name.startswith("redis-py(streamward_v") and version == redis.__version__
    finally:
        await client.aclose()
        sync.close()


# -- real transports: unix socket, password, TLS ------------------------------------------------


@pytest.fixture
def unix_password_server(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A server on TCP and a unix socket; the password is set once it is up."""
    sock = str(tmp_path / "redis.sock")
    server = RedisServer(extra_args=["--unixsocket", sock, "--unixsocketperm", "700"])
    server.start()
    try:
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", "pw1")
        admin.close()
        yield server, sock
    finally:
        server.cleanup()


async def test_unix_socket_and_password(unix_password_server: tuple[RedisServer, str]) -> None:
    server, sock = unix_password_server
    good = connect_from_config(RedisConfig(url=f"unix://{sock}", password="pw1"))
    in_url = connect_from_config(RedisConfig(url=f"unix://:pw1@{sock}"))
    tcp = connect_from_config(RedisConfig(url=server.url, password="pw1"))
    bad = connect_from_config(RedisConfig(url=f"unix://{sock}", password="wrong"))
    try:
        for c in (good, in_url, tcp):
            found = await probe(c)
            assert found.scripting and found.ok
        with pytest.raises(redis.ConnectionError, match="invalid username-password"):
            await bad.ping()
    finally:
        for c in (good, in_url, tcp, bad):
            await c.aclose()
    sync = connect_sync(RedisConfig(url=f"unix://{sock}", password="pw1"))
    try:
        assert sync.ping()
    finally:
        sync.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
             "ca.key", "-out", "ca.pem", "-subj", "/CN=streamward-test-ca", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
                 "-extfile", "san.ext", cwd=d)  # fmt: skip
    return {p.stem + p.suffix: p for p in d.iterdir()}


@pytest.fixture
def tls_server(tls_files: dict[str, Path]) -> Iterator[tuple[RedisServer, int]]:
    """Plain TCP (for RedisServer's readiness ping) plus a TLS port requiring client certs."""
    tls_port = free_port()
    server = RedisServer(
        extra_args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(tls_files["server.pem"]),
            "--tls-key-file", str(tls_files["server.key"]),
            "--tls-ca-cert-file", str(tls_files["ca.pem"]),
            "--tls-auth-clients", "yes",
        ]
    )  # fmt: skip
    try:
        server.start()
    except RuntimeError as exc:
        server.cleanup()
        pytest.skip(f"this redis-server cannot serve TLS: {exc}")
    try:
        yield server, tls_port
    finally:
        server.cleanup()


async def test_tls_with_ca_and_client_certificate(
    tls_server: tuple[RedisServer, int], tls_files: dict[str, Path]
) -> None:
    _, tls_port = tls_server
    base = RedisConfig(
        url=f"rediss://127.0.0.1:{tls_port}/0",
        tls_ca_file=str(tls_files["ca.pem"]),
        tls_cert_file=str(tls_files["client.pem"]),
        tls_key_file=str(tls_files["client.key"]),
    )
    flag = RedisConfig(  # plain redis:// URL + STREAMWARD_REDIS_TLS=true is the same
        url=f"redis://127.0.0.1:{tls_port}/0",
        tls=True,
        tls_ca_file=str(tls_files["ca.pem"]),
        tls_cert_file=str(tls_files["client.pem"]),
        tls_key_file=str(tls_files["client.key"]),
    )
    no_ca = RedisConfig(url=base.url)  # the system CAs do not know our test CA
    clients = [connect_from_config(c, socket_connect_timeout=2) for c in (base, flag, no_ca)]
    try:
        for c in clients[:2]:
            found = await probe(c)
            assert found.ok and found.scripting
            store = LeaseStore(c, Keys())
            s = store.keys.session("p", "tls")
            assert (await store.acquire(s, "r1", "i1", 5_000)).token >= 1
        with pytest.raises(redis.ConnectionError):
            await clients[2].ping()
    finally:
        for c in clients:
            await c.aclose()
    sync = connect_sync(base)
    try:
        assert sync.ping()
    finally:
        sync.close()
