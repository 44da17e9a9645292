"""SSRF guard for a prober that connects wherever pod authors point it.

Image names, token realms, redirect targets and ``Link`` URLs are all chosen by someone
else, so every outgoing connection is resolved, checked against :class:`AddressPolicy`
and then made to the *checked* IP (a second DNS answer cannot swap in 169.254.169.254).
The check lives in an httpcore network backend, below TLS, so SNI and certificate
verification still use the host name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import typing
from dataclasses import dataclass, field

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_PATTERN = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*\.?")


class BlockedAddress(Exception):
    """A connection was refused by the address policy; ``reason`` says which rule."""

    def __init__(self, host: str, ip: str | None, reason: str) -> None:
        self.host = host
        self.ip = ip
        self.reason = reason
        where = host if ip is None or ip == host else f"{host} ({ip})"
        super().__init__(f"refused to connect to {where}: {reason}")


class ResolutionFailed(Exception):
    """DNS gave no usable answer for a host (kept apart from connect errors on purpose)."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"cannot resolve {host}: {reason}")


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(_strip_brackets(text).split("%", 1)[0])
    except ValueError:
        return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None when it is.

    Embedded IPv4 (IPv4-mapped, NAT64, 6to4) is unwrapped first so ``::ffff:127.0.0.1``
    is judged as loopback.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        inner: ipaddress.IPv4Address | None = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            why = blocked_reason(inner)
            return f"{why} (embedded in IPv6 {ip})" if why else None
        if ip in _UNIQUE_LOCAL:
            return "unique-local IPv6 address (fc00::/7)"
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified address"),
        (ip.is_loopback, "loopback address"),
        (ip.is_link_local, "link-local address (cloud metadata lives here)"),
        (ip.is_multicast, "multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "shared CGNAT address"),
        (ip.is_reserved, "reserved address"),
        (ip.is_private, "private address"),
        (not ip.is_global, "not a globally routable address"),
    )
    for hit, why in checks:
        if hit:
            return why
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public destinations are admitted anyway.

    ``allow`` holds CIDR networks (``10.0.0.0/8``, ``127.0.0.1``) and host patterns
    (``registry.internal``, ``registry.internal:5000``, ``*.corp.example``). A host pattern
    admits whatever that name resolves to, so list names only for registries you run.
    """

    allow: tuple[str, ...] = ()
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    _hosts: tuple[tuple[str, int | None], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets: list[IPNetwork] = []
        hosts: list[tuple[str, int | None]] = []
        for raw in self.allow:
            item = raw.strip()
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(_strip_brackets(item), strict=False))
                continue
            except ValueError:
                pass
            name, port = _split_host_port(item)
            if not name or not _HOST_PATTERN.fullmatch(name):
                raise ValueError(f"not a CIDR or host pattern: {raw!r}")
            hosts.append((name.lower(), port))
        object.__setattr__(self, "_networks", tuple(nets))
        object.__setattr__(self, "_hosts", tuple(hosts))

    def is_allowed_ip(self, ip: str | IPAddress) -> bool:
        """True for public unicast addresses and for allowlisted networks."""
        return self.why_blocked(ip) is None

    def why_blocked(self, ip: str | IPAddress) -> str | None:
        addr = _parse_ip(ip) if isinstance(ip, str) else ip
        if addr is None:
            return "not an IP address"
        if any(addr.version == net.version and addr in net for net in self._networks):
            return None
        mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        if mapped is not None and any(mapped in net for net in self._networks):
            return None
        return blocked_reason(addr)

    def is_allowed_host(self, host: str, port: int | None = None) -> bool:
        """True when a host pattern in ``allow`` names this host (and port, if given)."""
        name = _strip_brackets(host).lower().rstrip(".")
        for pattern, pport in self._hosts:
            if pport is not None and pport != port:
                continue
            if pattern == name:
                return True
            if pattern.startswith("*.") and name.endswith(pattern[1:]) and name != pattern[2:]:
                return True
        return False

    async def resolve_and_check(self, host: str, port: int, timeout: float | None = None) -> str:
        """Resolve ``host`` and return one admitted IP, or raise :class:`BlockedAddress`.

        Every address in the answer must pass: a name that resolves to one public and one
        private address is refused rather than left to chance.
        """
        bare = _strip_brackets(host)
        literal = _parse_ip(bare)
        host_allowed = self.is_allowed_host(bare, port)
        if literal is not None:
            candidates = [str(literal)]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(bare, port, type=socket.SOCK_STREAM), timeout
                )
            except TimeoutError as exc:
                raise ResolutionFailed(host, "DNS lookup timed out") from exc
            except OSError as exc:
                raise ResolutionFailed(host, exc.strerror or type(exc).__name__) from exc
            candidates = []
            for info in infos:
                addr = str(info[4][0])
                if addr not in candidates:
                    candidates.append(addr)
            if not candidates:
                raise ResolutionFailed(host, "no addresses")
        if host_allowed:
            return candidates[0]
        for addr in candidates:
            why = self.why_blocked(addr)
            if why is not None:
                raise BlockedAddress(host, addr, why)
        return candidates[0]


def _split_host_port(item: str) -> tuple[str, int | None]:
    if item.startswith("["):
        end = item.find("]")
        rest = item[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        return item[1:end], port
    name, sep, port_text = item.rpartition(":")
    if sep and port_text.isdigit() and ":" not in name:
        return name, int(port_text)
    return item, None


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks, then connects to the checked IP; TLS still uses the host name."""

    def __init__(self, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend | None = None):
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        ip = await self._policy.resolve_and_check(host, port, timeout)
        return await self._inner.connect_tcp(
            ip, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress(path, None, "unix sockets are never probed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(
    policy: AddressPolicy,
    *,
    verify: bool = True,
    max_connections: int = 100,
    keepalive_expiry: float = 30.0,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every new connection goes through the policy.

    No proxy from the environment is used: a proxy would do its own resolving and
    defeat the check.
    """
    transport = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=GuardedNetworkBackend(policy),
    )
    return transport
