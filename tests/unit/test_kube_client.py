"""The Kubernetes edge: which failures are retried, for how long, and that a call against a
server that refuses, hangs or dies mid-answer ends within its bounds."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from pullmedic.kube.client import (
    NOT_SENT,
    UNKNOWN,
    KubeError,
    RestKube,
    Timeouts,
    configure,
    parse_retry_after,
    retry_delay,
)

T = Timeouts(attempts=4, backoff=1.0, backoff_max=8.0)
MID = lambda: 0.5  # noqa: E731 - jitter pinned to its middle: 0.75 of the base


@pytest.mark.parametrize(
    ("method", "failure", "attempt", "retry_after", "expected"),
    [
        # never reached the server: any method is safe to send again
        ("POST", NOT_SENT, 0, None, 0.75),
        ("PATCH", NOT_SENT, 1, None, 1.5),
        ("GET", NOT_SENT, 2, None, 3.0),
        # sent, outcome unknown: only reads are repeated (a write might land twice)
        ("GET", UNKNOWN, 0, None, 0.75),
        ("POST", UNKNOWN, 0, None, None),
        ("PATCH", UNKNOWN, 0, None, None),
        ("DELETE", UNKNOWN, 0, None, None),
        # 429: the server did nothing; honour Retry-After, capped by the back-off maximum
        ("POST", 429, 0, None, 0.75),
        ("PATCH", 429, 0, 5.0, 5.0),
        ("GET", 429, 0, 120.0, 8.0),
        # 5xx: reads only
        ("GET", 503, 0, None, 0.75),
        ("GET", 500, 1, None, 1.5),
        ("PATCH", 503, 0, None, None),
        # answers that repeating cannot change
        ("GET", 404, 0, None, None),
        ("PATCH", 422, 0, None, None),
        ("POST", 409, 0, None, None),
        ("GET", 403, 0, None, None),
        # bounded: the last attempt is the last
        ("GET", 503, 3, None, None),
        ("GET", NOT_SENT, 3, None, None),
    ],
)
def test_retry_policy(
    method: str, failure: str | int, attempt: int, retry_after: float | None, expected: float | None
) -> None:
    assert retry_delay(method, failure, attempt, T, retry_after=retry_after, rand=MID) == expected


def test_backoff_is_jittered_and_capped() -> None:
    lows = {retry_delay("GET", 503, 2, T, rand=lambda: 0.0) for _ in range(3)}
    highs = {retry_delay("GET", 503, 2, T, rand=lambda: 1.0) for _ in range(3)}
    assert lows == {2.0} and highs == {4.0}
    big = Timeouts(attempts=50, backoff=1.0, backoff_max=8.0)
    assert retry_delay("GET", 503, 30, big, rand=lambda: 1.0) == 8.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("7", 7.0), (" 3 ", 3.0), ("soon", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert parse_retry_after(when, now=now) == pytest.approx(30.0, abs=1.0)


# ---- against real sockets ------------------------------------------------------------------


class Server:
    """A TCP server on loopback that misbehaves on purpose."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        n = 0
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            n += 1
            self.conns.append(conn)
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                conn.recv(65536)
            if self.mode == "hang":
                continue  # read the request, never answer: a dead connection
            if self.mode == "503-then-ok" and n == 1:
                conn.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            else:
                body = b'{"gitVersion": "v1.36.3"}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    s = Server(request.param)
    yield s
    s.close()


def rest(port: int, timeouts: Timeouts) -> RestKube:
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    return RestKube(client.ApiClient(configure(cfg, timeouts, 4)), timeouts, workers=4)


FAST = Timeouts(connect=0.5, read=0.4, total=3.0, attempts=3, backoff=0.05, backoff_max=0.1)


@pytest.mark.parametrize("server", ["hang"], indirect=True)
async def test_a_hung_read_ends_within_its_bounds(server: Server) -> None:
    kube = rest(server.port, FAST)
    t0 = time.monotonic()
    with pytest.raises(KubeError) as err:
        await kube.get("Pod", "ns", "p")
    took = time.monotonic() - t0
    assert err.value.status == 0
    assert server.accepted == FAST.attempts  # a read is repeated, each try bounded
    assert took < FAST.total
    kube.close()


@pytest.mark.parametrize("server", ["hang"], indirect=True)
async def test_a_write_with_unknown_outcome_is_not_repeated(server: Server) -> None:
    kube = rest(server.port, FAST)
    with pytest.raises(KubeError):
        await kube.json_patch("Deployment", "ns", "d", [{"op": "test", "path": "/a", "value": 1}])
    assert server.accepted == 1
    kube.close()


@pytest.mark.parametrize("server", ["503-then-ok"], indirect=True)
async def test_a_503_read_is_retried_until_it_answers(server: Server) -> None:
    kube = rest(server.port, FAST)
    assert (await kube.get("Pod", "ns", "p"))["gitVersion"] == "v1.36.3"  # type: ignore[index]
    assert server.accepted == 2
    kube.close()


@pytest.mark.parametrize("server", ["hang"], indirect=True)
async def test_the_health_probe_is_one_short_attempt_and_drops_the_pool(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /version is the probe: one attempt within the probe's bounds (not the
    request's), and its timeout closes the pooled connections, which may all be dead."""
    t = Timeouts(connect=0.5, read=5.0, total=30.0, probe_connect=0.3, probe_read=0.3)
    kube = rest(server.port, t)
    cleared: list[bool] = []
    monkeypatch.setattr(kube.api.rest_client.pool_manager, "clear", lambda: cleared.append(True))
    t0 = time.monotonic()
    with pytest.raises(KubeError):
        await kube.version()
    assert time.monotonic() - t0 < 2.0  # not the 5 s read bound, not the 30 s total
    assert server.accepted == 1
    assert cleared
    kube.close()


async def test_refused_connections_are_retried_then_reported() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kube = rest(port, FAST)
    t0 = time.monotonic()
    with pytest.raises(KubeError) as err:
        await kube.create("Event", "ns", {"metadata": {"name": "e"}})
    assert err.value.status == 0
    assert time.monotonic() - t0 < FAST.total
    kube.close()


async def test_calls_do_not_share_the_default_executor() -> None:
    """Blocking API calls run in their own pool: a hung API server cannot starve
    asyncio.to_thread users (kopf's sync handlers among them)."""
    srv = Server("hang")
    try:
        kube = rest(srv.port, Timeouts(connect=0.5, read=1.0, total=1.5, attempts=1))
        calls = [asyncio.create_task(kube.get("Pod", "ns", f"p{i}")) for i in range(8)]
        await asyncio.sleep(0.1)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), timeout=0.5) == 42
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, KubeError) for r in results)
        kube.close()
    finally:
        srv.close()


def test_keepalive_is_on_for_pooled_connections() -> None:
    cfg = configure(client.Configuration(), Timeouts(), 8)
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in cfg.socket_options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 15) in cfg.socket_options
    assert cfg.retries is False


async def test_a_token_request_goes_to_the_service_accounts_token_subresource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = rest(1, FAST)
    calls: list[tuple[Any, ...]] = []

    async def request(*args: Any, **kw: Any) -> Any:
        calls.append(args)
        return {"status": {"token": "t"}}

    monkeypatch.setattr(kube, "request", request)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    answer = await kube.create_token("team", "puller", body)
    assert answer["status"]["token"] == "t"
    ((method, path, sent, content_type),) = calls
    assert (method, path, content_type) == (
        "POST",
        "/api/v1/namespaces/team/serviceaccounts/puller/token",
        "application/json",
    )
    assert sent == body
    kube.close()
