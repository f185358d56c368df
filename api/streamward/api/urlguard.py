"""Callback URLs and SSRF: which addresses a callback may reach.

A callback URL must be http(s) and every address its host resolves to must be public:
loopback, private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254 and
fd00:ec2::254 included), CGNAT / shared (Alibaba's 100.100.100.200), unspecified, multicast
and reserved ranges are refused, also when embedded in IPv6 (IPv4-mapped, 6to4, NAT64,
Teredo). ``STREAMWARD_CALLBACK_ALLOW`` lists CIDRs and host names let through anyway.

Checked at invoke (the caller hears 422 at once) and again before every attempt, on the
address the request then connects to (``Target.ip``): a name that re-resolves to a private
address later (DNS rebinding) is refused at delivery.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
URL_MAX_CHARS = 2048
RESOLVE_TIMEOUT_S = 5.0
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(Exception):
    """The URL may not be called; ``code`` is the problem code the API answers with."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AllowList:
    nets: tuple[Net, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        nets: list[Net] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(nets), frozenset(hosts))

    def allows_ip(self, ip: IP) -> bool:
        return any(ip.version == n.version and ip in n for n in self.nets)


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: the address to connect to, and what the request must still say."""

    url: str
    scheme: str
    host: str  # as in the URL (for Host and TLS SNI)
    port: int
    ip: str  # the checked address the request connects to


def _embedded(ip: IP) -> list[IP]:
    """The IPv4 addresses an IPv6 address carries, then ``ip`` itself."""
    out: list[IP] = []
    if isinstance(ip, ipaddress.IPv6Address):
        for v4 in (ip.ipv4_mapped, ip.sixtofour):
            if v4 is not None:
                out.append(v4)
        if ip.teredo is not None:
            out.append(ip.teredo[1])
        if ip in _NAT64:
            out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [*out, ip]


def refused_reason(ip: IP, allow: AllowList) -> str | None:
    """Why ``ip`` may not be reached (None: it may)."""
    if allow.allows_ip(ip):
        return None
    for a in _embedded(ip):
        if allow.allows_ip(a):
            return None
        if a.is_loopback:
            return "loopback"
        if a.is_link_local:
            return "link-local"
        if a.is_multicast:
            return "multicast"
        if a.is_unspecified:
            return "unspecified"
        if a.is_private:
            return "private"
        if not a.is_global:
            return "not globally routable"
    return None


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a callback URL; raises UrlRefused."""
    if len(url) > URL_MAX_CHARS:
        raise UrlRefused("invalid_callback_url", f"longer than {URL_MAX_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("invalid_callback_url", f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("callback_url_refused", "a callback URL must be http or https")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("invalid_callback_url", "the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("invalid_callback_url", "credentials in a callback URL are not allowed")
    return scheme, host, port or (443 if scheme == "https" else 80)


async def resolve(host: str, port: int) -> list[IP]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        raise UrlRefused("callback_url_unresolvable", f"cannot resolve {host!r}: {exc}") from None
    out: list[IP] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone
        ip = ipaddress.ip_address(addr)
        if ip not in out:
            out.append(ip)
    if not out:
        raise UrlRefused("callback_url_unresolvable", f"{host!r} has no address")
    return out


async def check(url: str, allow: AllowList) -> Target:
    """Resolve and check ``url``: every address must pass, unless its host is allowed by
    name. Raises UrlRefused; returns the target to connect to."""
    scheme, host, port = parse_url(url)
    ips = await resolve(host, port)
    if host.lower() not in allow.hosts:
        for ip in ips:
            reason = refused_reason(ip, allow)
            if reason is not None:
                raise UrlRefused(
                    "callback_url_refused",
                    f"{host} resolves to {ip} ({reason}); add it to STREAMWARD_CALLBACK_ALLOW "
                    "to allow it",
                )
    return Target(url=url, scheme=scheme, host=host, port=port, ip=str(ips[0]))
