"""Manifests and configs by digest, kept for the life of the process.

A digest names its content, so what was read once under it never has to be read again:
no manifest GET (a pull, on Docker Hub) is spent twice on one digest. Only bodies that
hash to their digest are kept (a broken registry cannot plant content), the store is
bounded in bytes (least recently used goes first), and keyed by host so a registry's own
answer is what a diagnosis of it rests on.
"""

from __future__ import annotations

from dataclasses import dataclass

from pullmedic.probe.cache import Cache, CacheKey
from pullmedic.probe.documents import digest_matches, is_digest
from pullmedic.probe.sender import HttpResult


@dataclass(frozen=True)
class ContentKey(CacheKey[HttpResult]):
    host: str
    digest: str


class ContentStore:
    """Bodies by (host, digest); ``max_bytes`` 0 keeps nothing."""

    def __init__(self, max_bytes: int) -> None:
        self._cache = Cache(max(max_bytes, 0), enabled=max_bytes > 0, single_flight=False)

    def get(self, host: str, digest: str) -> HttpResult | None:
        return self._cache.get(ContentKey(host, digest)) if is_digest(digest) else None

    def put(self, host: str, digest: str, result: HttpResult) -> None:
        """Keep a 200 answer whose body hashes to ``digest``; anything else is ignored."""
        if result.status == 200 and is_digest(digest) and digest_matches(result.body, digest):
            self._cache.put(ContentKey(host, digest), result, size=max(1, len(result.body)))
