"""The operator's client for every read and write of the API: typed calls, bounded in time.

(The pod watch and kopf's own watches have clients of their own: docs/development.md,
"Ways to the API server".)

Everything the engine reads or writes goes through :class:`KubeApi`, so the control loop can
be driven by an in-memory fake in tests. :class:`RestKube` is the real edge: every request
has a connect and a read timeout, pooled sockets use TCP keepalive, and transport errors,
429 and 5xx are retried with jittered back-off up to a bound. Like client-go, a request
whose outcome is unknown (sent, then the connection died) is retried only when repeating it
cannot write twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pullmedic.core.kinds import AUDITED, KINDS

log = logging.getLogger(__name__)

# URL paths of every kind pullmedic touches, and the collections it lists (the audit of
# workload templates): from the one table of kinds.
PATHS = {k.name: k.path("{ns}", "{name}") for k in KINDS.values()}
COLLECTIONS = {name: (KINDS[name].api_base, KINDS[name].plural) for name in AUDITED}
LIST_PAGE = 500


class KubeError(Exception):
    """The API server answered with an error, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, reason: str, *, maybe_applied: bool = False) -> None:
        super().__init__(f"{status} {reason}" if status else reason)
        self.status = status
        self.reason = reason
        # Sent, then the answer was lost (a timeout or a reset mid-response): the server
        # may have acted on it. False when it surely did not (refused, never connected).
        self.maybe_applied = maybe_applied


class KubeApi(Protocol):
    """The operations pullmedic needs; nothing else of the API is reachable from the engine."""

    async def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        """The object, or None when absent (or of a kind pullmedic never reads)."""

    async def create(
        self, kind: str, ns: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Raises KubeError(409) when it exists already."""

    async def json_patch(
        self,
        kind: str,
        ns: str,
        name: str,
        ops: list[dict[str, Any]],
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Raises KubeError(422) when a ``test`` op fails, 404 when absent."""

    async def patch_status(self, kind: str, ns: str, name: str, status: Mapping[str, Any]) -> None:
        """A merge patch of the status subresource; absent objects are ignored."""

    async def delete(
        self, kind: str, ns: str, name: str, *, uid: str = "", dry_run: bool = False
    ) -> bool:
        """False when the object is gone or is another object of that name (uid)."""

    async def version(self) -> dict[str, Any]:
        """The server's version: a round trip any identity may make. It is the health
        probe: one short attempt, so the API's return is seen at once."""

    async def list(self, kind: str, ns: str = "") -> list[dict[str, Any]]:
        """Every object of a listed kind, in ``ns`` or (empty) in all namespaces."""

    async def create_token(
        self, ns: str, service_account: str, request: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The TokenRequest API (``serviceaccounts/token``): the answered TokenRequest,
        whose ``status.token`` must never be logged. Raises KubeError (404: no such
        ServiceAccount; 403: the grant was dropped)."""


def path_of(kind: str, ns: str, name: str = "") -> str:
    if kind not in PATHS:
        raise KeyError(kind)
    path = PATHS[kind].format(ns=ns, name=name)
    return path if name else path.rsplit("/", 1)[0]


# ---- retry policy (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """Per-request bounds: a request never waits longer than ``connect`` + ``read`` on one
    attempt, and all attempts of one call, back-off included, fit in ``total``."""

    connect: float = 5.0
    read: float = 20.0
    total: float = 60.0
    attempts: int = 5
    backoff: float = 0.5
    backoff_max: float = 10.0
    keepalive_idle: int = 15  # dead pooled connections are found in idle + interval * count
    keepalive_interval: int = 5
    keepalive_count: int = 3
    # The health probe (GET /version): one attempt, short bounds. Like client-go's HTTP/2
    # ping, a probe that times out means the pooled connections may be silently dead.
    probe_connect: float = 3.0
    probe_read: float = 5.0


# Failures where the request never reached the server: always safe to repeat.
NOT_SENT = "not-sent"
# Sent, then the connection broke or timed out: the server may have acted on it.
UNKNOWN = "unknown"

IDEMPOTENT = frozenset({"GET", "HEAD"})


def retry_delay(
    method: str,
    failure: str | int,
    attempt: int,
    timeouts: Timeouts,
    *,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None to give up.

    ``failure`` is an HTTP status or NOT_SENT / UNKNOWN. Writes are repeated only when the
    server certainly did not act: the connection was never made, or it answered 429.
    """
    if attempt + 1 >= timeouts.attempts:
        return None
    if isinstance(failure, int):
        if not (failure == 429 or (failure >= 500 and method in IDEMPOTENT)):
            return None
    elif failure == UNKNOWN and method not in IDEMPOTENT:
        return None
    base = min(timeouts.backoff_max, timeouts.backoff * 2.0**attempt)
    delay = float(base * (0.5 + rand() / 2))  # jitter: replicas and groups do not retry in step
    if retry_after is not None:
        delay = max(delay, min(retry_after, timeouts.backoff_max))
    return delay


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(exc: BaseException) -> str:
    """NOT_SENT or UNKNOWN for a transport exception raised by urllib3."""
    if isinstance(
        exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
    ):
        return NOT_SENT
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return classify(exc.reason)
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return NOT_SENT
    return UNKNOWN


# ---- the real edge -----------------------------------------------------------------------


def configure(cfg: client.Configuration, timeouts: Timeouts, pool: int) -> client.Configuration:
    """Client-go's dialer habits for the official client: keepalive, no hidden retries."""
    cfg.retries = False  # our loop owns retries; urllib3's would hide them from the bounds
    opts = list(urllib3.connection.HTTPConnection.default_socket_options)
    opts.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    for name, value in (
        ("TCP_KEEPIDLE", timeouts.keepalive_idle),
        ("TCP_KEEPINTVL", timeouts.keepalive_interval),
        ("TCP_KEEPCNT", timeouts.keepalive_count),
    ):
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    cfg.socket_options = opts
    cfg.connection_pool_maxsize = pool
    return cfg


class RestKube:
    """KubeApi over the official client's ApiClient (auth, TLS and token refresh are its)."""

    def __init__(
        self,
        api: client.ApiClient,
        timeouts: Timeouts | None = None,
        *,
        workers: int = 16,
    ) -> None:
        self.api = api
        self.timeouts = timeouts or Timeouts()
        # Blocking calls get their own threads: a slow API server must not starve the
        # default executor that kopf and asyncio.to_thread share.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def reset_pool(self) -> None:
        """Close every idle pooled connection. After a timeout the others may be as dead
        (a NAT or load balancer forgot them, with no FIN or RST): a new request must
        not be handed one of them and wait out its read timeout again."""
        self.api.rest_client.pool_manager.clear()

    def _once(
        self,
        method: str,
        path: str,
        body: Any,
        content_type: str | None,
        query: list[tuple[str, str]],
        bounds: tuple[float, float],
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        m, url, hdrs, data, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(
            m,
            url,
            header_params=hdrs,
            body=data,
            post_params=post,
            _request_timeout=bounds,
        )
        raw = resp.read()  # type: ignore[no-untyped-call]
        text = raw.decode("utf-8", "replace") if raw else ""
        if not 200 <= resp.status < 300:
            raise ApiException.from_response(http_resp=resp, body=text, data=None)
        return json.loads(text) if text else None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
        *,
        probe: bool = False,
    ) -> Any:
        """One logical call: attempts, back-off and an overall deadline (a ``probe``: one
        attempt within the probe's bounds)."""
        loop = asyncio.get_running_loop()
        t = self.timeouts
        bounds = (t.probe_connect, t.probe_read) if probe else (t.connect, t.read)
        deadline = loop.time() + (sum(bounds) + 1.0 if probe else t.total)
        attempt = 0
        while True:
            per_try = sum(bounds) + 1.0
            try:
                ctx = contextvars.copy_context()  # like asyncio.to_thread: logs keep their context
                return await asyncio.wait_for(
                    loop.run_in_executor(
                        self._pool,
                        ctx.run,
                        self._once,
                        method,
                        path,
                        body,
                        content_type,
                        query or [],
                        bounds,
                    ),
                    timeout=min(per_try, max(0.1, deadline - loop.time())),
                )
            except ApiException as e:
                status = int(e.status or 0)
                headers = e.headers or {}
                delay = retry_delay(
                    method,
                    status,
                    attempt,
                    t,
                    retry_after=parse_retry_after(headers.get("Retry-After")),
                )
                error = KubeError(status, str(e.reason or ""))
            except TimeoutError:
                self.reset_pool()
                delay = retry_delay(method, UNKNOWN, attempt, t)
                error = KubeError(0, "request timed out", maybe_applied=method not in IDEMPOTENT)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                failure = classify(e)
                if failure == UNKNOWN:
                    self.reset_pool()
                delay = retry_delay(method, failure, attempt, t)
                error = KubeError(
                    0,
                    type(e).__name__,
                    maybe_applied=failure == UNKNOWN and method not in IDEMPOTENT,
                )
            if probe or delay is None or loop.time() + delay >= deadline:
                raise error
            log.debug("retrying %s %s in %.1fs: %s", method, path, delay, error)
            attempt += 1
            await asyncio.sleep(delay)

    async def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        if kind not in PATHS:
            return None
        try:
            obj = await self.request("GET", path_of(kind, ns, name))
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return dict(obj)

    async def create(
        self, kind: str, ns: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        query = [("fieldManager", "pullmedic")] + ([("dryRun", "All")] if dry_run else [])
        obj = await self.request("POST", path_of(kind, ns), dict(body), "application/json", query)
        return dict(obj or {})

    async def json_patch(
        self,
        kind: str,
        ns: str,
        name: str,
        ops: list[dict[str, Any]],
        *,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        query = [("fieldManager", "pullmedic")] + ([("dryRun", "All")] if dry_run else [])
        obj = await self.request(
            "PATCH", path_of(kind, ns, name), ops, "application/json-patch+json", query
        )
        return dict(obj or {})

    async def patch_status(self, kind: str, ns: str, name: str, status: Mapping[str, Any]) -> None:
        try:
            await self.request(
                "PATCH",
                path_of(kind, ns, name) + "/status",
                {"status": dict(status)},
                "application/merge-patch+json",
            )
        except KubeError as e:
            if e.status != 404:
                raise

    async def delete(
        self, kind: str, ns: str, name: str, *, uid: str = "", dry_run: bool = False
    ) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": uid} if uid else None,
        }
        query = [("dryRun", "All")] if dry_run else []
        try:
            await self.request("DELETE", path_of(kind, ns, name), body, "application/json", query)
        except KubeError as e:
            if e.status in (404, 409):
                return False
            raise
        return True

    async def version(self) -> dict[str, Any]:
        return dict(await self.request("GET", "/version", probe=True) or {})

    async def create_token(
        self, ns: str, service_account: str, request: Mapping[str, Any]
    ) -> dict[str, Any]:
        # KEP-4412 token mode: POST .../serviceaccounts/{name}/token, as the kubelet does.
        path = path_of("ServiceAccount", ns, service_account) + "/token"
        obj = await self.request("POST", path, dict(request), "application/json")
        return dict(obj or {})

    async def list(self, kind: str, ns: str = "") -> list[dict[str, Any]]:
        base, plural = COLLECTIONS[kind]
        path = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
        items: list[dict[str, Any]] = []
        cont = ""
        while True:  # in pages: a big cluster's list must not be one huge answer
            query = [("limit", str(LIST_PAGE))] + ([("continue", cont)] if cont else [])
            page = await self.request("GET", path, query=query) or {}
            for obj in page.get("items") or ():
                items.append({"kind": kind, **obj})
            cont = str((page.get("metadata") or {}).get("continue") or "")
            if not cont:
                return items
