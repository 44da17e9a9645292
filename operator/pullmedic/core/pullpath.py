"""The hops of one pull: a node's mirrors then the upstream, or a pull-through cache and
the upstream it fetches from. Pure: which hop answered what -> one diagnosis.

Two ways a pull goes through more than one registry:

- **containerd's hosts.toml** lists mirror endpoints, then ``server``. containerd resolves
  a reference at each in order and moves on from any failure (a 404, any other 4xx or
  5xx, an address it cannot reach, credentials refused); the first 2xx answers. The
  fallback to ``server`` cannot be turned off, so when a mirror fails and the server has
  the image the pull works, and when every hop fails the server's answer is the one a fix
  must change (containerd's own error is then the first failure other than a 404, or
  "not found"; the hops name them all). :func:`conclude_mirrors`.
- **a pull-through cache named in the image** (Harbor proxy projects, distribution in
  proxy mode: ``cache.example.com/dockerhub/library/nginx``). The cache answers 404 for
  every upstream problem (tag missing upstream, its upstream credentials wrong, upstream
  down for content it does not hold), so a 404 from the cache is only told apart by
  asking the upstream too: :func:`conclude_cache`. The platform team declares the
  mapping (:class:`CacheMapping`, the operator's ``--pull-through-cache`` flag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, Cause, Diagnosis, Evidence

__all__ = [
    "NOT_FOUND_CAUSES",
    "CacheMapping",
    "Hop",
    "conclude_cache",
    "conclude_mirrors",
    "find_mapping",
    "parse_cache_mapping",
]

Role: TypeAlias = Literal["mirror", "server", "cache", "upstream"]

# What a cache answers for every upstream problem: a 404 on the manifest or the tag list.
NOT_FOUND_CAUSES = frozenset(
    {Cause.TagNotFound, Cause.DigestNotFound, Cause.RepositoryNotFound, Cause.NotFoundOrPrivate}
)


@dataclass(frozen=True)
class Hop:
    """One registry a pull went through, and what pullmedic's probe of it concluded."""

    role: Role
    endpoint: str  # the URL asked (a hosts.toml endpoint) or the image probed there
    diagnosis: Diagnosis

    @property
    def status(self) -> int | None:
        """The manifest request's answer at this hop, if one was sent."""
        for e in self.diagnosis.evidence:
            if e.kind == "manifest" and e.status is not None:
                return e.status
        return None

    def label(self) -> str:
        return f"{self.role} {self.endpoint}"

    def evidence(self) -> Evidence:
        answered = f"answered {self.status}, " if self.status is not None else ""
        return Evidence(
            "hop",
            url=self.endpoint,
            status=self.status,
            note=f"{self.role}: {answered}{self.diagnosis.cause}",
        )


def _with_hops(
    d: Diagnosis, hops: Sequence[Hop], hop: Hop, summary: str, **extra: object
) -> Diagnosis:
    details = dict(d.details)
    details["hop"] = hop.role
    details["hopEndpoint"] = hop.endpoint
    details["hops"] = [f"{h.label()}: {h.diagnosis.cause}" for h in hops]
    for k, v in extra.items():
        if isinstance(v, str):
            details[k] = v
    evidence = (*d.evidence, *(h.evidence() for h in hops))
    return dataclasses.replace(d, summary=summary, details=details, evidence=evidence)


def conclude_mirrors(hops: Sequence[Hop]) -> Diagnosis:
    """containerd's order: the first hop that has the image answers; if none does, the
    last (``server``) is the authority and its cause stands, naming every hop."""
    if not hops:
        raise ValueError("a pull path has at least one hop")
    for i, hop in enumerate(hops):
        if hop.diagnosis.pullable:
            if i == 0:
                return hop.diagnosis
            failed = "; ".join(f"{h.label()} ({h.diagnosis.cause})" for h in hops[:i])
            return _with_hops(
                hop.diagnosis,
                hops[: i + 1],
                hops[0],
                f"{hop.diagnosis.summary} The node pulls it from {hop.label()} after "
                f"{failed} failed; fix that hop, or every pull pays for the fallback.",
            )
    last = hops[-1]
    failed = "; ".join(f"{h.label()} ({h.diagnosis.cause})" for h in hops[:-1])
    summary = f"{last.diagnosis.summary} (at {last.label()}, the last hop"
    summary += f", after {failed})" if failed else ")"
    return _with_hops(last.diagnosis, hops, last, summary)


def conclude_cache(cache: Hop, upstream: Hop | None) -> Diagnosis:
    """A pull-through cache's answer, read with its upstream's.

    Only a 404-like answer from the cache sends pullmedic upstream; anything else (the
    image is there, the cache itself refuses the pod's credentials or is down) is the
    cache's own answer.
    """
    c = cache.diagnosis
    if upstream is None or c.cause not in NOT_FOUND_CAUSES:
        said = "" if upstream is None else f" (its upstream {upstream.endpoint} not needed)"
        return _with_hops(c, [cache], cache, f"{c.summary} Answered by the cache{said}.")
    u = upstream.diagnosis
    hops = [cache, upstream]
    if u.pullable:
        summary = (
            f"The cache {cache.endpoint} answered not found ({c.cause}) but the upstream has "
            f"it ({upstream.endpoint}): the cache cannot fetch it - check its upstream "
            "credentials and whether it can reach the upstream."
        )
        d = dataclasses.replace(
            c, cause=Cause.RegistryUnreachable, confidence="medium", fix=None, digest=None
        )
        return _with_hops(d, hops, cache, summary, upstreamDigest=u.digest)
    if u.cause in NOT_FOUND_CAUSES - {Cause.NotFoundOrPrivate}:
        summary = (
            f"Neither the cache nor its upstream has it: {u.summary} "
            f"(upstream {upstream.endpoint}; the cache {cache.endpoint} answered {c.cause})."
        )
        # the cause is the upstream's; the fix stays the cache's (verified through it)
        d = dataclasses.replace(c, cause=u.cause, confidence=u.confidence)
        if c.fix is not None:
            summary += f" Verified through the cache: {c.fix.line()}."
        return _with_hops(d, hops, upstream, summary)
    if u.cause in CREDENTIAL_CAUSES:
        summary = (
            f"The cache {cache.endpoint} answered not found ({c.cause}); its upstream "
            f"{upstream.endpoint} needs credentials pullmedic has none that work for "
            f"({u.cause}), so whether the upstream has it is unknown: check the cache's "
            "upstream credentials, and the name."
        )
        d = dataclasses.replace(c, cause=Cause.Unknown, confidence="low", fix=None)
        return _with_hops(d, hops, cache, summary)
    summary = (
        f"The cache {cache.endpoint} answered not found ({c.cause}) and its upstream "
        f"fails: {u.summary} The cache serves only what it already holds until the "
        "upstream recovers."
    )
    d = dataclasses.replace(u, image=c.image)
    return _with_hops(d, hops, upstream, summary)


@dataclass(frozen=True)
class CacheMapping:
    """``CACHEHOST[/PREFIX]=UPSTREAM[/PREFIX]``: images under the cache's prefix are the
    upstream's images of the same remaining path."""

    cache: str  # "cache.example.com/dockerhub"
    upstream: str  # "docker.io"

    def upstream_image(self, image: str) -> str | None:
        """The upstream name of a cache image, or None when the mapping does not apply."""
        if not image.lower().startswith(self.cache.lower() + "/"):
            return None
        return f"{self.upstream}/{image[len(self.cache) + 1 :]}"

    def cache_image(self, upstream_image: str) -> str | None:
        """The reverse: how the pod names an upstream image through the cache."""
        if not upstream_image.lower().startswith(self.upstream.lower() + "/"):
            return None
        return f"{self.cache}/{upstream_image[len(self.upstream) + 1 :]}"


def parse_cache_mapping(text: str) -> CacheMapping:
    """Raises ValueError naming what is wrong."""
    cache, sep, upstream = text.partition("=")
    cache, upstream = cache.strip().strip("/"), upstream.strip().strip("/")
    if not sep or not cache or not upstream:
        raise ValueError(f"{text!r}: expected CACHEHOST[/PREFIX]=UPSTREAM")
    for part in (cache, upstream):
        if "://" in part or " " in part or "@" in part or ".." in part:
            raise ValueError(f"{text!r}: {part!r} is not a registry host and path")
    if cache.lower() == upstream.lower():
        raise ValueError(f"{text!r}: the cache and the upstream are the same")
    return CacheMapping(cache, upstream)


def find_mapping(mappings: Sequence[CacheMapping], image: str) -> CacheMapping | None:
    """The most specific mapping (longest cache prefix) that applies to ``image``."""
    hits = [m for m in mappings if m.upstream_image(image) is not None]
    return max(hits, key=lambda m: len(m.cache)) if hits else None
