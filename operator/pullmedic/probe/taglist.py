"""A repository's tag list: bounded pages, following ``Link`` on the same origin only."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin

from pullmedic.core.diagnosis import Evidence
from pullmedic.probe.session import RepositorySession
from pullmedic.probe.urls import origin, redact_url


@dataclass(frozen=True)
class TagListing:
    status: int
    tags: tuple[str, ...] = ()
    complete: bool = True
    error_codes: tuple[str, ...] = ()
    retry_after: float | None = None


def parse_link_next(header: str | None) -> str | None:
    """The ``rel="next"`` target of a ``Link`` header, or None (opaque, not resolved)."""
    if not header:
        return None
    for part in _split_outside_quotes(header, ","):
        part = part.strip()
        if not part.startswith("<") or ">" not in part:
            continue
        target, _, rest = part[1:].partition(">")
        for param in _split_outside_quotes(rest, ";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "rel" and "next" in value.strip().strip('"').split():
                return target.strip()
    return None


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(c)
    parts.append("".join(buf))
    return parts


async def list_tags(sess: RepositorySession, *, max_pages: int | None = None) -> TagListing:
    """All tags (bounded pages); a ``Link`` to another origin is not followed."""
    cfg = sess.config
    pages = max_pages if max_pages is not None else cfg.max_tags_pages
    url = sess.url(f"tags/list?n={cfg.tags_page_size}")
    tags: list[str] = []
    for _ in range(max(1, pages)):
        result = await sess.request(
            "tags", "GET", url, accept="application/json", max_bytes=cfg.max_tags_bytes
        )
        if result.status != 200:
            return TagListing(
                result.status, tuple(tags), False, result.error_codes, result.retry_after
            )
        doc = result.json()
        page = doc.get("tags") if isinstance(doc, dict) else None
        if isinstance(page, list):
            tags.extend(t for t in page if isinstance(t, str))
        nxt = parse_link_next(result.header("link"))
        if not nxt:
            return TagListing(200, tuple(tags), True)
        target = urljoin(url, nxt)
        if origin(target) != sess.origin:
            sess.rec.append(
                Evidence(
                    "tags",
                    "",
                    redact_url(target),
                    None,
                    (),
                    "not followed: Link points to another origin",
                )
            )
            return TagListing(200, tuple(tags), False)
        url = target
    return TagListing(200, tuple(tags), False)
