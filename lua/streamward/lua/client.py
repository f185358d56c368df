"""Build Redis clients the one way streamward wants them: standalone, Sentinel or Cluster.

Every process (API, runner, CLI, benches, the local fleet) builds its clients here:

- ``RedisConfig``: where Redis is and how to talk to it (mode, URL, Sentinels, credentials,
  TLS). ``RedisSettings`` is the pydantic mixin that reads it from ``STREAMWARD_*``.
- ``connect_from_config(cfg, ...)``: an asyncio client: ``redis.asyncio.Redis`` (standalone,
  or the Sentinel-managed master from redis-py's ``Sentinel.master_for``) or
  ``redis.asyncio.cluster.RedisCluster``.
- ``connect_sync(cfg)``: the same for the synchronous redis-py clients (tests, the fleet).
- ``connect(url, ...)``: the standalone shortcut kept for callers that only have a URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeAlias
from urllib.parse import urlsplit

import hiredis
import redis
import redis.cluster
import redis.sentinel
from pydantic import BaseModel, SecretStr, field_validator, model_validator
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, SlotNotCoveredError

RedisMode = Literal["standalone", "sentinel", "cluster"]
REDIS_MODES: tuple[RedisMode, ...] = ("standalone", "sentinel", "cluster")
DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SENTINEL_PORT = 26379

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
            return [hiredis.pack_command(tuple(encode(a) for a in args))]  # type: ignore[no-untyped-call]


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


# -- configuration -----------------------------------------------------------------------------


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """``"h1:26379,h2,[::1]:26380"`` → ``(("h1", 26379), ("h2", 26379), ("::1", 26380))``."""
    out: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        if not host:
            raise ValueError(f"sentinel address {item!r} has no host")
        try:
            port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"sentinel address {item!r}: port must be a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"sentinel address {item!r}: port out of range")
        out.append((host, port))
    return tuple(out)


@dataclass(frozen=True)
class RedisConfig:
    """Where Redis is and how to reach it.

    - ``standalone``: ``url`` is the server (``redis://``, ``rediss://`` or ``unix://``).
    - ``sentinel``: the master named ``sentinel_master`` is asked from ``sentinels``; ``url``
      only supplies the db number and credentials (its host is not used).
    - ``cluster``: ``url`` is one node (several may be given, comma-separated); the client
      discovers the rest. Cluster has one database: the URL's db must be 0.

    ``username`` / ``password`` override the URL's; ``tls`` (or a ``rediss://`` URL) turns TLS
    on for every connection, Sentinels included, with the optional CA / client cert files.
    """

    url: str = DEFAULT_URL
    mode: RedisMode = "standalone"
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    sentinel_password: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.mode not in REDIS_MODES:
            raise ValueError(f"redis mode must be one of {', '.join(REDIS_MODES)}: {self.mode!r}")
        if self.mode == "sentinel" and not self.sentinels:
            raise ValueError("sentinel mode needs at least one sentinel address")
        if self.mode == "sentinel" and not self.sentinel_master:
            raise ValueError("sentinel mode needs the master's name")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("a TLS client certificate needs both the cert file and the key file")
        for url in self.urls:
            scheme = urlsplit(url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise ValueError(f"redis URL must start with redis://, rediss:// or unix://: {url}")
            if scheme == "unix" and self.mode != "standalone":
                raise ValueError(f"unix sockets only work in standalone mode: {url}")

    def __repr__(self) -> str:  # the URL may hold a password: show describe() instead
        return f"RedisConfig({self.describe()})"

    @property
    def urls(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()] or [DEFAULT_URL]

    @property
    def use_tls(self) -> bool:
        return self.tls or any(urlsplit(u).scheme == "rediss" for u in self.urls)

    def describe(self) -> str:
        """Where this points, for logs (never a password)."""
        tls = " tls" if self.use_tls else ""
        if self.mode == "sentinel":
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel master {self.sentinel_master!r} via {where}{tls}"
        p = urlsplit(self.urls[0])
        host = p.hostname or ""
        shown = f"{p.scheme}://{f'{host}:{p.port}' if p.port else host}{p.path}"
        if len(self.urls) > 1:
            shown += f" (+{len(self.urls) - 1} more)"
        return f"{self.mode} {shown}{tls}"

    # -- connection keyword arguments ------------------------------------------------------

    def _url_options(self, url: str) -> dict[str, Any]:
        opts: dict[str, Any] = dict(parse_url(url))
        opts.pop("connection_class", None)  # chosen by connect_from_config
        if self.username is not None:
            opts["username"] = self.username
        if self.password is not None:
            opts["password"] = self.password
        return opts

    def ssl_options(self) -> dict[str, Any]:
        if not self.use_tls:
            return {}
        opts: dict[str, Any] = {"ssl_check_hostname": self.tls_check_hostname}
        if self.tls_ca_file:
            opts["ssl_ca_certs"] = self.tls_ca_file
        if self.tls_cert_file:
            opts["ssl_certfile"] = self.tls_cert_file
            opts["ssl_keyfile"] = self.tls_key_file
        return opts

    def sentinel_options(self, **socket_opts: Any) -> dict[str, Any]:
        """Connection options for the Sentinels themselves (not the master)."""
        opts: dict[str, Any] = {k: v for k, v in socket_opts.items() if k.startswith("socket_")}
        if self.sentinel_password is not None:
            opts["password"] = self.sentinel_password
        if self.use_tls:
            opts["ssl"] = True
            opts.update(self.ssl_options())
        return opts

    def _master_options(self) -> dict[str, Any]:
        """Sentinel mode: what the URL gives the master connection (db and credentials)."""
        url_opts = self._url_options(self.urls[0])
        return {k: v for k, v in url_opts.items() if k in ("db", "username", "password")}

    def _startup_nodes(self) -> list[tuple[str, int]]:
        """Cluster mode: (host, port) of every URL."""
        parsed = [parse_url(url) for url in self.urls]
        return [(o.get("host", "127.0.0.1"), o.get("port", 6379)) for o in parsed]


class RedisSettings(BaseModel):
    """Redis fields shared by the API and runner settings (``STREAMWARD_*`` when mixed into
    a pydantic-settings ``BaseSettings``)."""

    redis_mode: RedisMode = "standalone"
    redis_url: str = DEFAULT_URL
    # sentinel mode: comma-separated host[:port] list, and the monitored master's name
    sentinels: str = ""
    sentinel_master: str = "mymaster"
    sentinel_password: SecretStr | None = None
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_tls: bool = False
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    redis_tls_check_hostname: bool = True

    @field_validator("sentinels")
    @classmethod
    def _sentinel_list(cls, v: str) -> str:
        parse_sentinels(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self.redis_config()  # raises ValueError with the reason
        return self

    def redis_config(self) -> RedisConfig:
        return RedisConfig(
            url=self.redis_url,
            mode=self.redis_mode,
            sentinels=parse_sentinels(self.sentinels),
            sentinel_master=self.sentinel_master,
            sentinel_password=(
                self.sentinel_password.get_secret_value() if self.sentinel_password else None
            ),
            username=self.redis_username,
            password=self.redis_password.get_secret_value() if self.redis_password else None,
            tls=self.redis_tls,
            tls_ca_file=self.redis_tls_ca_file,
            tls_cert_file=self.redis_tls_cert_file,
            tls_key_file=self.redis_tls_key_file,
            tls_check_hostname=self.redis_tls_check_hostname,
        )


def redis_config_from_env(env: Mapping[str, str], prefix: str = "STREAMWARD_") -> RedisConfig:
    """The RedisConfig a process started with environment ``env`` would use."""
    values = {
        name: env[prefix + name.upper()]
        for name in RedisSettings.model_fields
        if prefix + name.upper() in env
    }
    return RedisSettings.model_validate(values).redis_config()


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
    opts: dict[str, Any] = {"decode_responses": True, **kwargs}
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
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(cfg.sentinels), sentinel_kwargs=cfg.sentinel_options(**opts), **master_opts
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
    opts: dict[str, Any] = {"decode_responses": True, **kwargs}
    if cfg.use_tls:
        opts.update(cfg.ssl_options())
    if cfg.mode == "cluster":
        first = cfg._url_options(cfg.urls[0])
        for k in ("db", "host", "port"):
            first.pop(k, None)
        nodes = [
            redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in cfg._startup_nodes()
        ]
        if cfg.use_tls:
            opts["ssl"] = True
        return redis.cluster.RedisCluster(startup_nodes=nodes, **first, **opts)
    if cfg.mode == "sentinel":
        if cfg.use_tls:
            opts["ssl"] = True
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(cfg.sentinels),
            sentinel_kwargs=cfg.sentinel_options(**opts),
            **cfg._master_options(),
            **opts,
        )
        return sentinel.master_for(cfg.sentinel_master)  # type: ignore[no-untyped-call]
    url = cfg.urls[0]
    opts = {**cfg._url_options(url), **opts}
    if urlsplit(url).scheme == "unix":
        return redis.Redis(unix_socket_path=opts.pop("path"), **opts)
    if cfg.use_tls:
        opts["ssl"] = True
    return redis.Redis(**opts)
