"""The apiserver fault proxy does what the fault suite relies on, against real sockets.

Raw TCP modes are checked with an echo server; the HTTP-aware mode with a real HTTPS
server using a fresh sandbox PKI, so TLS termination, re-origination, streaming and holds
are exercised exactly as the operator meets them.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import pki
from sandbox.tcpfault import ApiFaultProxy

TIMEOUT = 5.0


class EchoServer:
    """Echoes every byte back; counts connections it saw closed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.closed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="echo", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                conn.sendall(data)
        self.closed += 1

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(TIMEOUT)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    srv = EchoServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def raw_proxy(echo: EchoServer) -> Iterator[ApiFaultProxy]:
    proxy = ApiFaultProxy(f"127.0.0.1:{echo.port}")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def connect(proxy: ApiFaultProxy, timeout: float = TIMEOUT) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    s.settimeout(timeout)
    return s


def roundtrip(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def silent(s: socket.socket, wait: float = 0.7) -> bool:
    """True when nothing arrives, no EOF and no reset, within ``wait``."""
    s.settimeout(wait)
    try:
        s.recv(1)
    except TimeoutError:
        return True
    finally:
        s.settimeout(TIMEOUT)
    return False


def wait_until(check: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_pass_forwards_both_ways(raw_proxy: ApiFaultProxy) -> None:
    with connect(raw_proxy) as s:
        assert roundtrip(s, b"hello") == b"hello"
        assert roundtrip(s, b"x" * 200_000) == b"x" * 200_000


def test_refuse_resets_open_connections_and_refuses_new_ones(raw_proxy: ApiFaultProxy) -> None:
    s = connect(raw_proxy)
    assert roundtrip(s, b"a") == b"a"
    raw_proxy.set_mode("refuse")
    with pytest.raises(ConnectionResetError):
        s.sendall(b"b")
        s.recv(1)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", raw_proxy.port), timeout=TIMEOUT)
    raw_proxy.set_mode("pass")  # listens again on the same port
    with connect(raw_proxy) as s2:
        assert roundtrip(s2, b"c") == b"c"


def test_blackhole_stalls_without_closing_and_resumes(raw_proxy: ApiFaultProxy) -> None:
    old = connect(raw_proxy)
    assert roundtrip(old, b"1") == b"1"
    raw_proxy.set_mode("blackhole")
    old.sendall(b"2")
    new = connect(raw_proxy)  # accepted: the SYN is answered, the data goes nowhere
    new.sendall(b"3")
    assert silent(old) and silent(new)
    raw_proxy.set_mode("pass")
    assert old.recv(1) == b"2"
    assert new.recv(1) == b"3"
    old.close()
    new.close()


def test_drop_kills_open_connections_silently_and_forever(
    raw_proxy: ApiFaultProxy, echo: EchoServer
) -> None:
    old = connect(raw_proxy)
    assert roundtrip(old, b"1") == b"1"
    raw_proxy.set_mode("drop")
    old.sendall(b"2")
    assert silent(old)
    wait_until(lambda: echo.closed == 1, "the upstream side of the dead connection cut")
    raw_proxy.set_mode("pass")
    old.sendall(b"3")
    assert silent(old, 1.0)  # no data, no FIN, no RST: the client cannot tell
    with connect(raw_proxy) as new:
        assert roundtrip(new, b"4") == b"4"
    old.close()
    wait_until(lambda: raw_proxy.open_connections() == 0, "the proxy to forget closed conns")


def test_stop_closes_everything(echo: EchoServer) -> None:
    proxy = ApiFaultProxy(f"127.0.0.1:{echo.port}")
    proxy.start()
    s = connect(proxy)
    assert roundtrip(s, b"z") == b"z"
    proxy.set_mode("blackhole")
    parked = connect(proxy)
    proxy.stop()
    assert not [t for t in threading.enumerate() if t.name == "sandbox-api-fault-proxy"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    for c in (s, parked):
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            c.sendall(b"?")
            if not c.recv(1):
                raise ConnectionResetError
        c.close()


# --- HTTP-aware mode ------------------------------------------------------------------


class Upstream:
    """An HTTPS server: ``/echo`` reflects the request, ``/stream`` sends one chunk, then
    a second only when ``release`` is set."""

    def __init__(self, keys: pki.Pki) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                return

            def _body(self) -> bytes:
                n = int(self.headers.get("content-length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self) -> None:
                body = self._body()
                hdrs = {k.lower(): v for k, v in self.headers.items()}
                owner.requests.append((self.command, self.path, hdrs, body))
                if self.path.startswith("/stream"):
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"6\r\nfirst\n\r\n")
                    self.wfile.flush()
                    owner.release.wait(TIMEOUT)
                    self.wfile.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
                    self.wfile.flush()
                    return
                status = 404 if self.path.startswith("/missing") else 200
                out = json.dumps(
                    {"method": self.command, "path": self.path, "auth": hdrs.get("authorization")}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(keys.serving_cert), str(keys.serving_key))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> pki.Pki:
    return pki.generate(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def upstream(keys: pki.Pki) -> Iterator[Upstream]:
    srv = Upstream(keys)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http_proxy(upstream: Upstream, keys: pki.Pki) -> Iterator[ApiFaultProxy]:
    proxy = ApiFaultProxy(upstream.url, terminate_tls=keys)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def client(keys: pki.Pki, timeout: float = TIMEOUT) -> httpx.Client:
    return httpx.Client(
        verify=ssl.create_default_context(cafile=str(keys.ca_cert)), timeout=timeout
    )


def test_http_forwards_authorization_and_records_requests(
    http_proxy: ApiFaultProxy, upstream: Upstream, keys: pki.Pki
) -> None:
    with client(keys) as c:
        r = c.patch(
            f"{http_proxy.url}/echo/a?x=1",
            headers={"Authorization": "Bearer s3cret", "Content-Type": "application/json"},
            content=b'{"op":"replace"}',
        )
        assert r.status_code == 200
        assert r.json() == {"method": "PATCH", "path": "/echo/a?x=1", "auth": "Bearer s3cret"}
        assert c.get(f"{http_proxy.url}/missing").status_code == 404
    assert upstream.requests[0][3] == b'{"op":"replace"}'
    [patch] = http_proxy.seen("PATCH", r"^/echo/")
    assert patch.path == "/echo/a?x=1" and patch.json() == {"op": "replace"}
    assert patch.status == 200 and patch.ok and not patch.held
    assert [r.status for r in http_proxy.seen("GET")] == [404]


def test_http_streams_responses_as_they_arrive(
    http_proxy: ApiFaultProxy, upstream: Upstream, keys: pki.Pki
) -> None:
    with client(keys) as c, c.stream("GET", f"{http_proxy.url}/stream?watch=1") as r:
        chunks = r.iter_raw()
        first = next(chunks)
        assert first == b"first\n"  # while the upstream still holds the second chunk
        upstream.release.set()
        assert b"".join(chunks) == b"second\n"
    assert http_proxy.seen("GET", "^/stream")[0].status == 200


def test_hold_swallows_the_first_matching_request_only(
    http_proxy: ApiFaultProxy, upstream: Upstream, keys: pki.Pki
) -> None:
    hold = http_proxy.hold("PATCH", r"/things/[^/]+/status$", body=r'"count":\s*1')
    with client(keys, timeout=1.0) as c:
        # Neither the wrong method, the wrong path nor the wrong body triggers it.
        assert c.get(f"{http_proxy.url}/things/a/status").status_code == 200
        assert c.patch(f"{http_proxy.url}/things/a", json={"count": 1}).status_code == 200
        assert c.patch(f"{http_proxy.url}/things/a/status", json={"count": 0}).status_code == 200
        assert not hold.fired
        with pytest.raises(httpx.ReadTimeout):
            c.patch(f"{http_proxy.url}/things/a/status", json={"count": 1})
        held = hold.wait(0)
        assert held.held and held.status is None and held.json() == {"count": 1}
        again = c.patch(f"{http_proxy.url}/things/a/status", json={"count": 1})
        assert again.status_code == 200
    forwarded = [(m, p, b) for m, p, _, b in upstream.requests if m == "PATCH"]
    assert forwarded.count(("PATCH", "/things/a/status", b'{"count":1}')) == 1
    assert [r.held for r in http_proxy.seen("PATCH", "/status$")] == [False, True, False]


def test_http_drop_leaves_a_pooled_connection_hanging(
    http_proxy: ApiFaultProxy, keys: pki.Pki
) -> None:
    """The operator's failure: a pooled connection that died silently hangs a request
    until the client's own read timeout; a fresh connection works."""
    with client(keys, timeout=1.0) as pooled:
        assert pooled.get(f"{http_proxy.url}/echo").status_code == 200
        http_proxy.set_mode("drop")
        http_proxy.set_mode("pass")
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            pooled.get(f"{http_proxy.url}/echo")
        assert time.monotonic() - t0 >= 0.9
    with client(keys) as fresh:
        assert fresh.get(f"{http_proxy.url}/echo").status_code == 200


def test_http_blackhole_holds_the_tls_handshake_until_pass(
    http_proxy: ApiFaultProxy, keys: pki.Pki
) -> None:
    http_proxy.set_mode("blackhole")
    with client(keys, timeout=0.7) as c, pytest.raises(httpx.TimeoutException):
        c.get(f"{http_proxy.url}/echo")
    got: list[int] = []

    def slow_get() -> None:
        with client(keys, timeout=TIMEOUT) as c2:
            got.append(c2.get(f"{http_proxy.url}/echo").status_code)

    before = http_proxy.accepted
    t = threading.Thread(target=slow_get, daemon=True)
    t.start()
    wait_until(lambda: http_proxy.accepted > before, "the client parked in the blackhole")
    assert not got
    http_proxy.set_mode("pass")
    t.join(TIMEOUT)
    assert got == [200]
