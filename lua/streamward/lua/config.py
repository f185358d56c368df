"""Where Redis is and how to reach it: ``RedisConfig``, and ``RedisSettings``, the pydantic
mixin that reads it from ``STREAMWARD_*``. Clients are built from it in lua/client.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr, field_validator, model_validator
from redis.asyncio.connection import parse_url

RedisMode = Literal["standalone", "sentinel", "cluster"]
REDIS_MODES: tuple[RedisMode, ...] = ("standalone", "sentinel", "cluster")
DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SENTINEL_PORT = 26379


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
    # one pipeline for the script calls of an event-loop turn (lua/autopipe.py); not on Cluster
    redis_autopipeline: bool = True

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
