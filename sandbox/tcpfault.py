"""A fault-injecting TCP proxy between the operator and the kube-apiserver.

A controller has to survive its control plane going away in the ways real networks fail:
connections refused while the apiserver restarts, packets blackholed by a partition, and
connections silently dropped when a load balancer or NAT forgets its state. None of these
can be produced with the real apiserver alone, so tests point the operator's kubeconfig at
this proxy and flip ``set_mode``:

* ``pass``: forward bytes both ways.
* ``refuse``: the listener is closed (new connections are refused) and every open
  connection is reset (RST) on both sides.
* ``blackhole``: new connections are accepted and nothing is forwarded either way, without
  FIN or RST; open connections stall too. Back in ``pass`` they all resume, as TCP does
  when a partition heals before its retransmissions give up.
* ``drop``: every connection open at that moment is dead for good: nothing is forwarded or
  answered, the client is never told (its later data is read and discarded, the upstream
  side is cut). New connections stall like ``blackhole`` and work once back in ``pass``.

Loopback caveat: the kernel of this host answers the client's TCP keepalive probes on the
proxy's socket, so a dropped connection can only be detected by the client's own read
timeouts (request timeouts, watch timeouts), not by TCP keepalive alone.

With ``terminate_tls`` (the sandbox PKI) the proxy also speaks HTTP: it terminates TLS with
the apiserver's serving certificate, re-originates TLS to the apiserver and forwards each
request unchanged (the Authorization header included), streaming responses chunk by chunk
so watches work. Every request is recorded with its body and response status (``seen``),
and ``hold(method, path)`` makes the proxy swallow the first matching request and report
it: a test can stop the operator at an exact point of a remediation.

It runs its own asyncio loop in a daemon thread; all control methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import ssl
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from sandbox import pki
from sandbox.loopthread import LoopServer

Mode = Literal["pass", "refuse", "blackhole", "drop"]
MODES: tuple[str, ...] = get_args(Mode)
MAX_HEAD = 256 * 1024
CHUNK = 65536


@dataclass
class SeenRequest:
    """One HTTP request as the client sent it (header names lower-cased)."""

    method: str
    path: str  # path plus query
    headers: dict[str, str]
    body: bytes
    conn: int
    at: float = field(default_factory=time.monotonic)
    held: bool = False
    status: int | None = None  # the response's status; None while (or when never) answered

    @property
    def ok(self) -> bool:
        """Answered with 2xx: the apiserver applied it."""
        return self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Hold:
    """The first request matching ``method`` and the ``path`` (and ``body``) regexes is
    never forwarded; ``wait`` returns it once the client sent it."""

    def __init__(self, method: str, path: str, body: str | None = None) -> None:
        self.method = method.upper()
        self.path = re.compile(path)
        self.body = re.compile(body) if body else None
        self.request: SeenRequest | None = None
        self._fired = threading.Event()

    def matches(self, req: SeenRequest) -> bool:
        if self._fired.is_set() or req.method != self.method:
            return False
        if self.path.search(req.path.split("?", 1)[0]) is None:
            return False
        text = req.body.decode("utf-8", "replace")
        return self.body is None or self.body.search(text) is not None

    def fire(self, req: SeenRequest) -> None:
        self.request = req
        self._fired.set()

    @property
    def fired(self) -> bool:
        return self._fired.is_set()

    def wait(self, timeout: float) -> SeenRequest:
        if not self._fired.wait(timeout) or self.request is None:
            raise TimeoutError(f"no {self.method} {self.path.pattern} within {timeout:.0f}s")
        return self.request


@dataclass(eq=False)
class _Conn:
    id: int
    sock: socket.socket  # as accepted; wrapped in ``client`` once the network lets it through
    client: asyncio.StreamWriter | None = None
    upstream: asyncio.StreamWriter | None = None
    dead: bool = False  # dropped: never forwards again, the client is never told
    gone: bool = False  # reset by ``refuse`` or ``stop``
    task: asyncio.Task[None] | None = None
    pending: deque[SeenRequest] = field(default_factory=deque)


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP RST rather than a FIN, as a vanished listener's host does."""
    if writer is None:
        return
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _reset_conn(conn: _Conn) -> None:
    conn.gone = True
    if conn.client is not None:
        _reset(conn.client)
    else:
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()
    _reset(conn.upstream)


class ApiFaultProxy(LoopServer):
    """``ApiFaultProxy(cluster.api_url).start()`` returns ``https://127.0.0.1:PORT``."""

    thread_name = "sandbox-api-fault-proxy"

    def __init__(
        self,
        upstream: str,
        *,
        terminate_tls: pki.Pki | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 10.0,
    ) -> None:
        u = urlsplit(upstream if "://" in upstream else f"tcp://{upstream}")
        if not u.hostname or not u.port:
            raise ValueError(f"upstream needs host:port, got {upstream!r}")
        self.upstream_host, self.upstream_port = u.hostname, u.port
        self.host = host
        self.port = port
        super().__init__()  # url, loop, thread and the stop event
        self.connect_timeout = connect_timeout
        self.accepted = 0
        self._pki = terminate_tls
        self._server_tls: ssl.SSLContext | None = None
        self._client_tls: ssl.SSLContext | None = None
        if terminate_tls is not None:
            srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            srv.load_cert_chain(str(terminate_tls.serving_cert), str(terminate_tls.serving_key))
            srv.set_alpn_protocols(["http/1.1"])
            cli = ssl.create_default_context(cafile=str(terminate_tls.ca_cert))
            cli.set_alpn_protocols(["http/1.1"])
            self._server_tls, self._client_tls = srv, cli
        self._mode: str = "pass"
        self._lock = threading.Lock()
        self._seen: list[SeenRequest] = []
        self._holds: list[Hold] = []
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._changed: asyncio.Event | None = None

    # --- control (any thread) ---------------------------------------------------------
    @property
    def http(self) -> bool:
        return self._pki is not None

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch mode; when this returns the new mode is in force for every connection."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        self._run(self._set_mode(mode))

    def hold(self, method: str, path: str, body: str | None = None) -> Hold:
        """Swallow the first request matching (HTTP mode only); see ``Hold``."""
        if not self.http:
            raise RuntimeError("hold needs terminate_tls: raw TCP carries no requests")
        h = Hold(method, path, body)
        with self._lock:
            self._holds.append(h)
        return h

    def seen(self, method: str | None = None, path: str | None = None) -> list[SeenRequest]:
        """Requests received so far, oldest first, filtered by method and path regex."""
        rx = re.compile(path) if path else None
        with self._lock:
            reqs = list(self._seen)
        return [
            r
            for r in reqs
            if (method is None or r.method == method.upper())
            and (rx is None or rx.search(r.path.split("?", 1)[0]))
        ]

    def open_connections(self) -> int:
        return len(self._conns)

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        if self._loop is None or self._loop.is_closed():
            coro.close()
            raise RuntimeError("proxy not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- loop thread ------------------------------------------------------------------
    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._listen()
        self.url = f"https://{self.host}:{self.port}"
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            self._unlisten()
            tasks = [c.task for c in self._conns if c.task is not None]
            for c in list(self._conns):
                _reset_conn(c)
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            await asyncio.sleep(0.05)  # aborted transports close their sockets in callbacks

    def _listen(self) -> None:
        """Our own accept loop: a connection's bytes stay in the kernel until it may pass."""
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.host, self.port))
        lsock.listen(128)
        lsock.setblocking(False)
        self.port = int(lsock.getsockname()[1])
        self._listener = lsock
        asyncio.get_running_loop().add_reader(lsock.fileno(), self._accept, lsock)

    def _unlisten(self) -> None:
        """Close the listener: the port refuses, queued handshakes get an RST."""
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _accept(self, lsock: socket.socket) -> None:
        """A reader callback, not a task: no accepted socket is lost to a cancellation."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = lsock.accept()
            except OSError:  # BlockingIOError: the queue is empty
                return
            sock.setblocking(False)
            conn = _Conn(next(self._ids), sock)
            self._conns.add(conn)
            self.accepted += 1
            conn.task = loop.create_task(self._handle(conn))

    async def _set_mode(self, mode: str) -> None:
        self._mode = mode
        if mode == "refuse":
            self._unlisten()
            for c in list(self._conns):
                _reset_conn(c)
        elif self._listener is None:
            self._listen()
        if mode == "drop":
            for c in list(self._conns):
                c.dead = True
                _reset(c.upstream)  # the client must not learn of it: only upstream is cut
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    async def _gate(self, conn: _Conn) -> bool:
        """Wait while the network is down; False when this connection must never forward."""
        while True:
            if conn.dead or conn.gone:
                return False
            if self._mode == "pass":
                return True
            assert self._changed is not None
            await self._changed.wait()

    async def _wrap(
        self, sock: socket.socket, tls: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_HEAD)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol,
            sock,
            ssl=tls,
            ssl_handshake_timeout=self.connect_timeout if tls is not None else None,
        )
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _handle(self, conn: _Conn) -> None:
        try:
            await self._connect_and_pump(conn)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            _reset(conn.upstream)
            if not conn.dead:
                _reset_conn(conn)
        except asyncio.CancelledError:
            _reset_conn(conn)
        finally:
            self._conns.discard(conn)
            if conn.client is None:
                conn.sock.close()
            elif conn.dead and not conn.client.transport.is_closing():
                conn.client.transport.abort()  # the client closed first; it hears nothing

    async def _connect_and_pump(self, conn: _Conn) -> None:
        forwarding = await self._gate(conn)
        if conn.gone:
            return
        # The TLS handshake waits for the network too: a blackhole answers nothing.
        reader, writer = await self._wrap(conn.sock, self._server_tls if forwarding else None)
        conn.client = writer
        if not forwarding:  # dropped while parked: swallow whatever it sends
            await self._discard(reader)
            return
        ureader, uwriter = await asyncio.wait_for(
            asyncio.open_connection(
                self.upstream_host,
                self.upstream_port,
                ssl=self._client_tls,
                server_hostname=self.upstream_host if self._client_tls else None,
                limit=MAX_HEAD,
            ),
            self.connect_timeout,
        )
        conn.upstream = uwriter
        if conn.dead or conn.gone:  # the mode changed while connecting
            _reset(uwriter)
            await self._discard(reader)
            return
        if self.http:
            up = asyncio.create_task(self._requests(conn, reader, uwriter))
            down = asyncio.create_task(self._responses(conn, ureader, writer))
        else:
            up = asyncio.create_task(self._pipe(conn, reader, uwriter))
            down = asyncio.create_task(self._pipe(conn, ureader, writer))
        pending: set[asyncio.Task[None]] = {up, down}
        try:
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # A dead connection's upstream was cut: keep reading the client until it
                # gives up, so that it never hears of the cut.
                if conn.dead and up not in done and pending:
                    continue
                break
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        failed = any(not t.cancelled() and t.exception() is not None for t in done)
        if conn.dead:
            return
        if failed:
            _reset(uwriter)
            _reset(writer)
            return
        for w in (uwriter, writer):  # an orderly end on one side: FIN on both
            if not w.transport.is_closing():
                w.close()

    @staticmethod
    async def _discard(reader: asyncio.StreamReader) -> None:
        while await reader.read(CHUNK):
            pass

    async def _send(self, conn: _Conn, writer: asyncio.StreamWriter, data: bytes) -> None:
        if await self._gate(conn):
            writer.write(data)
            await writer.drain()

    async def _pipe(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while data := await reader.read(CHUNK):
            await self._send(conn, writer, data)

    async def _requests(
        self, conn: _Conn, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter
    ) -> None:
        """Client to apiserver, one request at a time: record, maybe hold, forward."""
        while True:
            parsed = await _read_request(reader)
            if parsed is None:
                return
            raw, method, target, headers, body = parsed
            req = SeenRequest(method, target, headers, body, conn.id)
            with self._lock:
                self._seen.append(req)
                hold = next((h for h in self._holds if h.matches(req)), None)
                if hold is not None:
                    req.held = True
                    hold.fire(req)
            if hold is not None:
                await self._discard(reader)  # the client waits for an answer that never comes
                return
            if not await self._gate(conn):
                continue
            conn.pending.append(req)
            upstream.write(raw)
            await upstream.drain()
            if "upgrade" in headers:  # exec/attach/port-forward: no longer HTTP after this
                await self._pipe(conn, reader, upstream)
                return

    async def _responses(
        self, conn: _Conn, reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        """Apiserver to client, streamed as it arrives: watch events are chunks."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    return
                raise
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            interim = 100 <= status < 200 and status != 101
            req = conn.pending.popleft() if conn.pending and not interim else None
            if req is not None:
                req.status = status
            await self._send(conn, client, head)
            if interim:
                continue
            if status == 101:
                await self._pipe(conn, reader, client)
                return
            headers = _headers(lines[1:])
            if (req is not None and req.method == "HEAD") or status in (204, 304):
                continue
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    await self._send(conn, client, size_line)
                    n = int(size_line.split(b";", 1)[0].strip(), 16)
                    if n == 0:
                        while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                            await self._send(conn, client, trailer)
                        await self._send(conn, client, b"\r\n")
                        break
                    await self._copy(conn, reader, client, n + 2)
            elif "content-length" in headers:
                await self._copy(conn, reader, client, int(headers["content-length"]))
            else:
                await self._pipe(conn, reader, client)
                return

    async def _copy(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while n > 0:
            data = await reader.read(min(n, CHUNK))
            if not data:
                raise asyncio.IncompleteReadError(b"", n)
            n -= len(data)
            await self._send(conn, writer, data)


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        k, _, v = line.partition(":")
        key = k.strip().lower()
        headers[key] = f"{headers[key]}, {v.strip()}" if key in headers else v.strip()
    return headers


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[bytes, str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request: its raw bytes (forwarded unchanged) and its parsed parts;
    None on a clean EOF between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = _headers(lines[1:])
    raw = [head]
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            raw.append(size_line)
            n = int(size_line.split(b";", 1)[0].strip(), 16)
            if n == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    raw.append(trailer)
                raw.append(b"\r\n")
                break
            data = await reader.readexactly(n + 2)
            raw.append(data)
            parts.append(data[:-2])
        body = b"".join(parts)
    elif headers.get("content-length"):
        body = await reader.readexactly(int(headers["content-length"]))
        raw.append(body)
    return b"".join(raw), method.upper(), target, headers, body
