"""Send the prober's requests where the node's containerd sends its pulls.

``--registry-config-dir DIR`` is the node's containerd ``config_path`` (for example
``/etc/containerd/certs.d`` mounted read-only): ``DIR/<host>/hosts.toml`` (or
``DIR/_default/hosts.toml``) may send a registry name to a mirror or a private endpoint.
:class:`HostsTransport` rewrites requests for such a name to the first endpoint containerd
would resolve with, below the registry client: evidence still names the registry as the
pod wrote it, credentials are still matched by that name (as the kubelet matches them),
and the address guard underneath still checks the endpoint it really connects to - an
endpoint on a private or loopback address needs ``--allow-address`` like any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import httpx

from pullmedic.core.registryhosts import Endpoint, HostsError, parse_hosts_toml, pull_path

__all__ = ["HostsTransport", "load_hosts", "load_paths"]

log = logging.getLogger("pullmedic")
DEFAULT_DIR = "_default"
DOCKER_HUB_HOST = "registry-1.docker.io"


def load_hosts(config_dir: str | os.PathLike[str]) -> dict[str, Endpoint]:
    """host -> the endpoint containerd resolves it at first, for every ``hosts.toml``
    under ``config_dir`` that names one; ``"_default"`` applies to hosts without their own.

    Raises HostsError for a directory that cannot be read or a file containerd rejects.
    """
    return {host: path[0] for host, path in load_paths(config_dir).items()}


def load_paths(config_dir: str | os.PathLike[str]) -> dict[str, tuple[Endpoint, ...]]:
    """host -> every endpoint containerd tries, in order (mirrors, then the upstream)."""
    root = Path(config_dir)
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as exc:
        raise HostsError(f"cannot read {root}: {exc.strerror or exc}") from None
    out: dict[str, tuple[Endpoint, ...]] = {}
    for d in entries:
        f = d / "hosts.toml"
        if not f.is_file():
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise HostsError(f"cannot read {f}") from None
        endpoints = parse_hosts_toml(d.name, text)
        if endpoints:
            path = tuple(endpoints if d.name == DEFAULT_DIR else pull_path(d.name, endpoints))
            out[d.name.lower()] = path
            if d.name.lower() == "docker.io":  # containerd's name; the probe's requests
                out[DOCKER_HUB_HOST] = path  # go to Docker Hub's registry host
    return out


class HostsTransport(httpx.AsyncBaseTransport):
    """Rewrites the scheme and address of requests for mapped hosts; passes the rest."""

    def __init__(self, hosts: Mapping[str, Endpoint], inner: httpx.AsyncBaseTransport) -> None:
        self.hosts = dict(hosts)
        self.inner = inner

    def endpoint_for(self, netloc: str) -> Endpoint | None:
        hit = self.hosts.get(netloc.lower())
        if hit is None and DEFAULT_DIR in self.hosts:
            hit = self.hosts[DEFAULT_DIR]
        return hit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        netloc = request.url.netloc.decode("ascii")
        ep = self.endpoint_for(netloc)
        if ep is not None and (
            ep.netloc.lower() != netloc.lower() or ep.scheme != request.url.scheme
        ):
            url = httpx.URL(f"{ep.url}{request.url.raw_path.decode('ascii')}")
            headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
            request = httpx.Request(
                request.method,
                url,
                headers=[(b"host", ep.netloc.encode("ascii")), *headers],
                stream=request.stream,
                extensions=request.extensions,
            )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
