"""Registry requests by kind, counted at the HTTP transport: what registries really receive.

Test and benchmark support (the benchmarks, ``bench/opshim.py`` and the integration tests
count with it); the operator itself does not.
"""

from __future__ import annotations

from collections import Counter

import httpx


def request_kind(method: str, url: httpx.URL) -> str:
    """Classify a request for counting: ping, token, manifest_head, manifest_get, tags, blob."""
    path = url.path
    if path.rstrip("/") == "/v2":
        return "ping"
    if "/manifests/" in path:
        return f"manifest_{method.lower()}"
    if path.endswith("/tags/list"):
        return "tags"
    if "/blobs/" in path:
        return "blob"
    return "token"


class CountingTransport(httpx.AsyncBaseTransport):
    """Wraps a transport and counts requests per kind - what benchmarks and tests read."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.counts[request_kind(request.method, request.url)] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def total(self) -> int:
        return sum(self.counts.values())
