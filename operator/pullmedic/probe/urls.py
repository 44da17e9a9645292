"""URLs as evidence shows them (redacted) and as credentials are scoped to them (origins)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

# Query parameters that are safe to show in evidence; every other value is redacted.
_SAFE_QUERY_KEYS = frozenset({"service", "scope", "n", "last"})

Origin = tuple[str, str, int]


def redact_url(url: str | httpx.URL) -> str:
    """URL safe to show: no user-info, query values other than service/scope/n/last hidden."""
    parts = urlsplit(str(url))
    netloc = parts.netloc.rpartition("@")[2]
    query = ""
    if parts.query:
        pairs = [
            (k, v if k in _SAFE_QUERY_KEYS else "REDACTED")
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe=":/,")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def origin(url: str | httpx.URL) -> Origin:
    """(scheme, host, port): credentials never leave the origin they were meant for."""
    u = httpx.URL(str(url))
    port = u.port or (443 if u.scheme == "https" else 80)
    return (u.scheme, u.host.lower(), port)
