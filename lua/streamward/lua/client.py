"""Build Redis clients the one way streamward wants them: standalone, Sentinel or Cluster.

Every process (API, runner, CLI, benches, the local fleet) builds its clients here:

- ``RedisConfig`` (lua/config.py): where Redis is and how to talk to it (mode, URL,
  Sentinels, credentials, TLS). ``RedisSettings`` is the pydantic mixin that reads it from
  ``STREAMWARD_*``.
- ``connect_from_config(cfg, ...)``: an asyncio client: ``redis.asyncio.Redis`` (standalone,
  or the Sentinel-managed master from redis-py's ``Sentinel.master_for``) or
  ``redis.asyncio.cluster.RedisCluster``.
- ``connect_sync(cfg)``: the same for the synchronous redis-py clients (tests, the fleet).
- ``connect(url, ...)``: the standalone shortcut kept for callers that only have a URL.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import hiredis
import redis
import redis.cluster
import redis.sentinel
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, SlotNotCoveredError

from streamward.lua.config import RedisConfig

# What api/ and runner/ hold: a standalone (or Sentinel-managed) client, or a Cluster client.
RedisClient: TypeAlias = Redis | RedisCluster


# -- connection classes: hiredis' C command packer on every transport -----------------------


class _HiredisPack(AbstractConnection):
    """Packs commands with hiredis' C encoder.

    redis-py's asyncio connection packs in pure Python; for a batch renewal of
    10 000 leases that alone costs ~10x the C encoder that hiredis ships.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        try:  # str/bytes/int/float go straight to C (utf-8, as our encoder would)
            return [hiredis.pack_command(args)]
        except TypeError:  # anything else: redis-py's encoder, with its errors
            encode = self.encoder.encode  # encoder is untyped in redis-py
            return [hiredis.pack_command(tuple(encode(a) for a in args))]  # type: ignore[no-untyped-call, unused-ignore]


class HiredisPackConnection(_HiredisPack, Connection):
    """TCP."""


class HiredisPackSSLConnection(_HiredisPack, SSLConnection):
    """TLS (``rediss://`` or ``STREAMWARD_REDIS_TLS``)."""


class HiredisPackUnixConnection(_HiredisPack, UnixDomainSocketConnection):
    """Unix socket (``unix://``)."""


class HiredisSentinelConnection(_HiredisPack, SentinelManagedConnection):
    """The Sentinel-managed master connection (re-resolves the master on failover)."""


class HiredisSentinelSSLConnection(_HiredisPack, SentinelManagedSSLConnection):
    """The Sentinel-managed master connection over TLS."""


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool with BlockingConnectionPool's wait-for-a-free-connection behaviour."""


# -- Cluster: "cannot reach it right now" must be a RedisError like everywhere else -----------


class ClusterUnavailable(RedisConnectionError):
    """No Cluster node answers, or a slot has no node (mid-failover): retry later.

    redis-py raises these as ``RedisClusterException`` / ``SlotNotCoveredError``, which are not
    ``RedisError``; api/ and runner/ treat ``RedisError`` as "Redis is unavailable" (503,
    backoff), so the Cluster client converts them. Programming errors (cross-slot calls, bad
    arguments) stay ``RedisClusterException``.
    """


class StreamwardCluster(RedisCluster):
    """``RedisCluster`` whose unavailability errors are ``RedisError`` (ClusterUnavailable)."""

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        try:
            return await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise ClusterUnavailable(str(exc)) from exc

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _StreamwardClusterPipeline(self, transaction)  # type: ignore[abstract]


class _StreamwardClusterPipeline(ClusterPipeline):
    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except SlotNotCoveredError as exc:
            raise ClusterUnavailable(str(exc)) from exc


# -- how every connection names itself --------------------------------------------------------


@functools.cache
def identity() -> dict[str, Any]:
    """The keyword arguments that name streamward's connections to Redis (``CLIENT LIST``
    on Redis 7.2+: ``lib-name=redis-py(streamward_v0.1.0)``), built once per process.

    Also a cost: left to its defaults, redis-py looks its own version up in the installed
    package metadata for *every* connection it opens (~1 ms of CPU each), which a burst of
    blocking reads, each on a connection of its own, paid by the dozen."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before DriverInfo: the same name, the older way
        name = f"redis-py(streamward_v{own_version()})"
        return {"lib_name": name, "lib_version": redis.__version__}
    info = DriverInfo(name="redis-py", lib_version=redis.__version__)
    return {"driver_info": info.add_upstream_driver("streamward", own_version())}


def own_version() -> str:
    """The installed distribution's version (``0.0.0`` when running from a bare checkout)."""
    try:
        return importlib.metadata.version("streamward")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


# -- asyncio clients ---------------------------------------------------------------------------


def connect_from_config(
    cfg: RedisConfig,
    *,
    max_connections: int | None = None,
    blocking: bool = False,
    pool_timeout_s: float = 5.0,
    **kwargs: Any,
) -> RedisClient:
    """A decoding asyncio client for ``cfg``.

    ``max_connections`` bounds the pool (per node on Cluster). ``blocking=True`` makes callers
    wait for a free connection (up to ``pool_timeout_s``) instead of failing when all are in
    use; Cluster clients have no blocking pool in redis-py and fail at once instead.
    Other keyword arguments (``socket_timeout``, ``retry``, ...) go to every connection.
    """
    opts: dict[str, Any] = {"decode_responses": True, **identity(), **kwargs}
    if cfg.mode == "cluster":
        return _connect_cluster(cfg, max_connections, opts)
    if cfg.mode == "sentinel":
        return _connect_sentinel(cfg, max_connections, blocking, pool_timeout_s, opts)
    return _connect_standalone(cfg, max_connections, blocking, pool_timeout_s, opts)


def _connect_standalone(
    cfg: RedisConfig,
    max_connections: int | None,
    blocking: bool,
    pool_timeout_s: float,
    opts: dict[str, Any],
) -> Redis:
    url = cfg.urls[0]
    scheme = urlsplit(url).scheme
    opts = {**cfg._url_options(url), **opts}
    connection_class: type[AbstractConnection]
    if scheme == "unix":
        connection_class = HiredisPackUnixConnection
    elif cfg.use_tls:
        connection_class = HiredisPackSSLConnection
        opts.update(cfg.ssl_options())
    else:
        connection_class = HiredisPackConnection
    pool: ConnectionPool
    if blocking:
        pool = BlockingConnectionPool(
            connection_class=connection_class,
            max_connections=max_connections or 50,
            timeout=pool_timeout_s,
            **opts,
        )
    else:
        pool = ConnectionPool(
            connection_class=connection_class, max_connections=max_connections, **opts
        )
    return Redis(connection_pool=pool)


def _connect_sentinel(
    cfg: RedisConfig,
    max_connections: int | None,
    blocking: bool,
    pool_timeout_s: float,
    opts: dict[str, Any],
) -> Redis:
    master_opts = {**cfg._master_options(), **opts}
    if cfg.use_tls:
        master_opts.update(cfg.ssl_options())
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(cfg.sentinels),
        sentinel_kwargs={**cfg.sentinel_options(**opts), **identity()},
        **master_opts,
    )
    pool_opts: dict[str, Any] = {
        "connection_class": (
            HiredisSentinelSSLConnection if cfg.use_tls else HiredisSentinelConnection
        )
    }
    if blocking:
        pool_opts["connection_pool_class"] = BlockingSentinelConnectionPool
        pool_opts["max_connections"] = max_connections or 50
        pool_opts["timeout"] = pool_timeout_s
    elif max_connections is not None:
        pool_opts["max_connections"] = max_connections
    client: Redis = sentinel.master_for(cfg.sentinel_master, **pool_opts)
    return client


def _connect_cluster(
    cfg: RedisConfig, max_connections: int | None, opts: dict[str, Any]
) -> RedisCluster:
    # RedisCluster picks its own connection class (plain or SSL): no hiredis packer here.
    first = cfg._url_options(cfg.urls[0])
    if first.pop("db", 0):
        raise ValueError("Redis Cluster has a single database: use db 0 in the URL")
    nodes = [ClusterNode(host, port) for host, port in cfg._startup_nodes()]
    first.pop("host", None)
    first.pop("port", None)
    cluster_opts: dict[str, Any] = {**first, **opts, "startup_nodes": nodes}
    if max_connections is not None:
        cluster_opts["max_connections"] = max_connections
    if cfg.use_tls:
        cluster_opts["ssl"] = True
        cluster_opts.update(cfg.ssl_options())
    return StreamwardCluster(**cluster_opts)


def connect(
    url: str,
    *,
    max_connections: int | None = None,
    blocking: bool = False,
    pool_timeout_s: float = 5.0,
    **kwargs: Any,
) -> Redis:
    """A decoding standalone asyncio client for ``url`` with the hiredis packer."""
    client = connect_from_config(
        RedisConfig(url=url),
        max_connections=max_connections,
        blocking=blocking,
        pool_timeout_s=pool_timeout_s,
        **kwargs,
    )
    assert isinstance(client, Redis)
    return client


# -- synchronous clients (tests, the local fleet, CLI helpers) --------------------------------


def connect_sync(cfg: RedisConfig, **kwargs: Any) -> Any:
    """A decoding sync client for ``cfg`` (typed Any: redis-py's sync replies are unions)."""
    opts: dict[str, Any] = {"decode_responses": True, **identity(), **kwargs}
    if cfg.use_tls:
        opts.update(cfg.ssl_options())
    if cfg.mode == "cluster":
        first = cfg._url_options(cfg.urls[0])
        for k in ("db", "host", "port"):
            first.pop(k, None)
        nodes = [
            redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call, unused-ignore]
            for host, port in cfg._startup_nodes()
        ]
        if cfg.use_tls:
            opts["ssl"] = True
        return redis.cluster.RedisCluster(startup_nodes=nodes, **first, **opts)
    if cfg.mode == "sentinel":
        if cfg.use_tls:
            opts["ssl"] = True
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(cfg.sentinels),
            sentinel_kwargs={**cfg.sentinel_options(**opts), **identity()},
            **cfg._master_options(),
            **opts,
        )
        return sentinel.master_for(cfg.sentinel_master)  # type: ignore[no-untyped-call, unused-ignore]
    url = cfg.urls[0]
    opts = {**cfg._url_options(url), **opts}
    if urlsplit(url).scheme == "unix":
        return redis.Redis(unix_socket_path=opts.pop("path"), **opts)
    if cfg.use_tls:
        opts["ssl"] = True
    return redis.Redis(**opts)
