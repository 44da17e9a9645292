"""containerd's registry host configuration (``config_path``): where a node really pulls.

A node's containerd may send pulls for a registry name somewhere else: ``<config_path>/
<host>/hosts.toml`` lists mirror endpoints (``[host."URL"]``, tried in order) and the
upstream (``server``). Probing the name from DNS when the node talks to a mirror or a
private endpoint is probing another registry. This module reads those files (pure: text
in, endpoints out); ``probe/hosts.py`` sends the prober's requests where the node sends
its pulls.

Only what decides the address is read: the endpoint URL, its ``capabilities`` (one
without ``resolve`` is not asked for manifests) and ``server``. TLS material
(``ca``, ``client``, ``skip_verify``) and ``override_path`` are not applied.

containerd 1.6 refuses a file without a ``[host]`` table (its log says "failed to decode
hosts.toml: invalid `host` tree") and then pulls from the name itself; 1.7 and later
accept ``server`` alone. This reader follows the later behaviour.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Endpoint", "HostsError", "parse_hosts_toml", "pull_path"]


class HostsError(ValueError):
    """A hosts.toml containerd would reject (message names the file's host, not content)."""


@dataclass(frozen=True)
class Endpoint:
    """Where pulls for a registry name go: scheme and ``host[:port]`` (path ``/v2``)."""

    scheme: str
    netloc: str
    server: bool = field(default=False, compare=False)  # the upstream, not a mirror

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def _endpoint(url: str, where: str, server: bool = False) -> Endpoint:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HostsError(f"{where}: {url[:100]!r} is not an http(s) URL")
    if parts.path not in ("", "/", "/v2", "/v2/"):
        raise HostsError(f"{where}: a path other than /v2 is not supported")
    return Endpoint(parts.scheme, parts.netloc, server)


def parse_hosts_toml(host: str, text: str) -> list[Endpoint]:
    """The endpoints containerd tries for ``host``, in order (mirrors, then ``server``).

    With neither, containerd uses the host itself over https: the empty list says so.
    """
    where = f"hosts.toml for {host}"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostsError(f"{where} is not valid TOML ({exc})") from None
    out: list[Endpoint] = []
    hosts = doc.get("host") or {}
    if not isinstance(hosts, dict):
        raise HostsError(f"{where}: [host] must be a table of URLs")
    for url, entry in hosts.items():
        caps = entry.get("capabilities", ["pull", "resolve"]) if isinstance(entry, dict) else []
        if not isinstance(caps, list) or "resolve" not in caps:
            continue  # not asked for manifests: the probe's first request would not go there
        out.append(_endpoint(str(url), where))
    server = doc.get("server")
    if server is not None:
        if not isinstance(server, str):
            raise HostsError(f"{where}: server must be a string")
        out.append(_endpoint(server, where, server=True))
    return out


def pull_path(host: str, endpoints: list[Endpoint]) -> list[Endpoint]:
    """Every endpoint containerd tries for ``host``: the file's, then the upstream it
    falls back to when the file names no ``server`` (``https://<host>``; Docker Hub's
    registry host for ``docker.io``). The fallback cannot be turned off."""
    if endpoints and endpoints[-1].server:  # a mirror at the server's address is one hop
        return [e for e in endpoints[:-1] if e != endpoints[-1]] + [endpoints[-1]]
    if not endpoints:
        return []
    name = "registry-1.docker.io" if host.lower() == "docker.io" else host
    return [*endpoints, Endpoint("https", name, server=True)]
