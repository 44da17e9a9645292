"""The pod watch: list, then watch from the list's resourceVersion, for every pod.

Why not kopf for pods: kopf keeps a worker and a memory record for every object it has
seen until the object is deleted, so every healthy pod in the cluster costs memory.
Here nothing is kept per pod: each event goes to the engine, which keeps only stuck pods.
Bookmarks (and the normal end of each watch request) are heartbeats, so a deaf watch is
noticed; a re-list after 410 Gone says which remembered pods vanished meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from kubernetes import client

log = logging.getLogger("pullmedic")

PODS = "/api/v1/pods"


@dataclass(frozen=True)
class PodWatchSettings:
    server_timeout: int = 20  # the API server ends each watch request after this
    read_timeout: float = 30.0  # silence longer than this on an open stream: reconnect
    connect_timeout: float = 5.0
    page: int = 500  # list in pages: a big cluster's list is not one huge answer
    shard_selector: str = ""  # ShardedListAndWatch, e.g. shardRange(object.metadata.uid, ...)
    label_selector: str = ""  # e.g. the pods other shards hand over to this one


class Gone(Exception):
    """410: the resourceVersion is too old; list again."""


class Busy(Exception):
    """429: the API server asks to be called again after ``retry_after`` seconds (priority
    and fairness, or its storage still initializing after a restart). The supervisor waits
    that long instead of its doubling back-off."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429 Too Many Requests: retry after {retry_after:g}s")
        self.retry_after = retry_after


def check_answer(r: httpx.Response) -> None:
    """Raise for an answer that is not a list or a stream (410, 429, any other error)."""
    if r.status_code == 410:
        raise Gone()
    if r.status_code == 429:
        try:
            retry_after = float(r.headers.get("retry-after", "1"))
        except ValueError:  # an HTTP date, or junk: the API server sends seconds
            retry_after = 1.0
        if not math.isfinite(retry_after):
            retry_after = 1.0
        raise Busy(min(max(retry_after, 0.0), 60.0))
    r.raise_for_status()


class Source(Protocol):
    """Where pod lists and watch streams come from (the API server, or a test's fake)."""

    async def list_page(self, params: Mapping[str, str]) -> dict[str, Any]: ...

    def stream(self, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class ApiSource:
    """The API server over httpx, with the kubeconfig's TLS and (refreshed) token."""

    def __init__(self, cfg: client.Configuration, s: PodWatchSettings) -> None:
        self.cfg = cfg
        self.s = s
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else None
        if ctx is not None and cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self._verify: ssl.SSLContext | bool = ctx if ctx is not None else False
        self._client: httpx.AsyncClient | None = None

    def _headers(self) -> dict[str, str]:
        # Read at every request: an in-cluster token is refreshed by the client's hook.
        bearer: dict[str, Any] = dict(self.cfg.auth_settings().get("BearerToken") or {})
        token = bearer.get("value")
        return {"Accept": "application/json", **({"Authorization": str(token)} if token else {})}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.cfg.host,
                verify=self._verify,
                timeout=httpx.Timeout(self.s.read_timeout, connect=self.s.connect_timeout),
            )
        return self._client

    async def list_page(self, params: Mapping[str, str]) -> dict[str, Any]:
        r = await self._http().get(PODS, params=dict(params), headers=self._headers())
        check_answer(r)
        body: dict[str, Any] = r.json()
        return body

    async def stream(self, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        async with self._http().stream(
            "GET", PODS, params=dict(params), headers=self._headers()
        ) as r:
            check_answer(r)
            async for line in r.aiter_lines():
                if line.strip():
                    yield json.loads(line)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class PodWatch:
    def __init__(
        self,
        source: Source,
        on_event: Callable[[str | None, Mapping[str, Any]], None],
        known: Callable[[], Iterable[str]],
        *,
        settings: PodWatchSettings | None = None,
        on_heartbeat: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.on_event = on_event
        self.known = known  # uids the engine remembers (stuck pods)
        self.s = settings or PodWatchSettings()
        self.on_heartbeat = on_heartbeat
        self.clock = clock
        self.listed = False  # the first list is complete (readiness)
        self.lists = 0
        self.rv = ""
        self.unfiltered = False  # a shard selector was sent and the server ignored it

    def _params(self, **extra: str) -> dict[str, str]:
        p = dict(extra)
        if self.s.shard_selector:
            p["shardSelector"] = self.s.shard_selector
        if self.s.label_selector:
            p["labelSelector"] = self.s.label_selector
        return p

    async def relist(self) -> None:
        """List every pod; report remembered pods that are gone as DELETED."""
        seen: set[str] = set()
        cont = ""
        while True:
            page = await self.source.list_page(
                self._params(limit=str(self.s.page), **({"continue": cont} if cont else {}))
            )
            for pod in page.get("items") or ():
                uid = (pod.get("metadata") or {}).get("uid")
                if uid:
                    seen.add(uid)
                self.on_event(None, pod)
            meta = page.get("metadata") or {}
            if self.s.shard_selector and not meta.get("shardInfo") and not self.unfiltered:
                # The ShardedListAndWatch gate is off: the server ignored the selector and
                # sends every pod (the engine drops the other shards' pods itself).
                self.unfiltered = True
                log.warning("pod watch: the API server ignores shardSelector; filtering here")
            cont = str(meta.get("continue") or "")
            if not cont:
                self.rv = str(meta.get("resourceVersion") or "")
                break
        for uid in set(self.known()) - seen:
            self.on_event("DELETED", {"metadata": {"uid": uid}})
        self.lists += 1
        self.listed = True
        self.on_heartbeat()

    async def watch_once(self) -> None:
        """One watch request, from ``rv`` until the server ends it."""
        params = self._params(
            watch="true",
            allowWatchBookmarks="true",
            resourceVersion=self.rv,
            timeoutSeconds=str(self.s.server_timeout),
        )
        async for ev in self.source.stream(params):
            kind = ev.get("type")
            obj = ev.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone()
                raise RuntimeError(f"watch error: {obj.get('message')}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.rv = str(rv)
            self.on_heartbeat()
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.on_event(kind, obj)
        self.on_heartbeat()  # the server ended it on time: the connection was alive

    async def run(self) -> None:
        """Forever; transport errors propagate so the supervisor restarts with back-off.
        On any failure the source's connections are closed: after a timeout its pooled
        ones may be silently dead, and the next list must not wait on one of them."""
        try:
            await self.relist()
            while True:
                try:
                    await self.watch_once()
                except Gone:
                    log.info("pod watch: resourceVersion expired, listing again")
                    await self.relist()
                await asyncio.sleep(0)
        except BaseException:
            await asyncio.shield(self.source.aclose())
            raise
