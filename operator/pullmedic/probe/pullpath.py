"""Probe the path a node's pull takes, hop by hop (the decision is ``core/pullpath.py``).

- A registry whose ``hosts.toml`` lists more than one endpoint: the inner diagnoser
  probes the first (its transport sends the requests there); when that hop fails,
  each next endpoint is probed by a prober of its own (own cache and connections, its
  transport sending the registry name to that endpoint), as containerd moves on.
- An image on a declared pull-through cache (``--pull-through-cache``): when the cache
  answers not found, the upstream's name for the image is probed too, along its own
  path, so the cause names the hop that failed.

Credentials are still matched by the name the pod wrote (the kubelet's keyring), at every
hop, as containerd sends the pod's credentials to each endpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pullmedic.core.diagnosis import Diagnosis
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.pullpath import (
    NOT_FOUND_CAUSES,
    CacheMapping,
    Hop,
    conclude_cache,
    conclude_mirrors,
    find_mapping,
)
from pullmedic.core.reference import InvalidReference, parse
from pullmedic.core.registryhosts import Endpoint
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.hosts import DEFAULT_DIR, HostsTransport
from pullmedic.probe.netguard import guarded_transport
from pullmedic.probe.prober import Prober

__all__ = ["HopProbers", "PathDiagnoser"]


class HopProbers:
    """Probers sending one registry name to one endpoint, made once each."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.made: dict[tuple[str, Endpoint], Prober] = {}

    def __call__(self, host: str, ep: Endpoint) -> Prober:
        key = (host.lower(), ep)
        if key not in self.made:
            cfg = self.config
            inner = guarded_transport(cfg.address_policy, verify=cfg.verify_tls)
            self.made[key] = Prober(cfg, transport=HostsTransport({host.lower(): ep}, inner))
        return self.made[key]

    async def aclose(self) -> None:
        for p in self.made.values():
            await p.aclose()


class PathDiagnoser:
    """Wraps the prober: same ``diagnose`` signature, answers for the node's whole path."""

    def __init__(
        self,
        inner: Any,
        paths: Mapping[str, Sequence[Endpoint]] | None = None,
        hop_probers: Callable[[str, Endpoint], Any] | None = None,
        caches: Sequence[CacheMapping] = (),
    ) -> None:
        self.inner = inner
        self.paths = {h.lower(): tuple(p) for h, p in (paths or {}).items()}
        self.hop_probers = hop_probers
        self.caches = tuple(caches)

    def _path(self, host: str) -> tuple[Endpoint, ...]:
        return self.paths.get(host.lower()) or self.paths.get(DEFAULT_DIR) or ()

    async def diagnose(
        self, image: str, keyring: Keyring, platform: Platform, **kw: Any
    ) -> Diagnosis:
        d = await self._along_path(image, keyring, platform, **kw)
        mapping = find_mapping(self.caches, image)
        if mapping is None:
            return d
        if d.cause not in NOT_FOUND_CAUSES:  # the cache's own answer: upstream not asked
            return conclude_cache(Hop("cache", image, d), None)
        upstream_image = mapping.upstream_image(image)
        assert upstream_image is not None
        ukw = {**kw, "suggest": False, "candidate_keyrings": None}
        u = await self._along_path(upstream_image, keyring, platform, **ukw)
        return conclude_cache(Hop("cache", image, d), Hop("upstream", upstream_image, u))

    async def _along_path(
        self, image: str, keyring: Keyring, platform: Platform, **kw: Any
    ) -> Diagnosis:
        first: Diagnosis = await self.inner.diagnose(image, keyring, platform, **kw)
        try:
            host = parse(image).registry_host
        except InvalidReference:
            return first
        path = self._path(host)
        if len(path) < 2 or first.pullable or self.hop_probers is None:
            return first
        hops = [Hop(_role(path[0]), path[0].url, first)]
        for ep in path[1:]:
            d: Diagnosis = await self.hop_probers(host, ep).diagnose(image, keyring, platform, **kw)
            hops.append(Hop(_role(ep), ep.url, d))
            if d.pullable:
                break
        out = conclude_mirrors(hops)
        return dataclasses.replace(out, image=image) if out.image != image else out

    async def aclose(self) -> None:
        closer = getattr(self.hop_probers, "aclose", None)
        if closer is not None:
            await closer()
        closer = getattr(self.inner, "aclose", None)
        if closer is not None:
            await closer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _role(ep: Endpoint) -> Literal["mirror", "server"]:
    return "server" if ep.server else "mirror"
