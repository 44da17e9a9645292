"""A fault-injecting HTTP proxy in front of a real registry.

The real registry cannot be asked to rate-limit, hang, reset connections, send a 200 MB
manifest, redirect to another host or point its challenge at a private realm - but the
prober must survive all of these. Tests put this proxy in front of a sandbox registry,
flip ``set_mode`` and assert on ``requests`` (everything the proxy saw, headers included,
so e.g. "Authorization was not forwarded to the redirect target" can be checked).

It runs its own asyncio loop in a daemon thread so sync and async tests can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, get_args

import httpx

from sandbox.loopthread import LoopServer

Mode = Literal[
    "passthrough",
    "status_429",
    "status_503",
    "hang",
    "reset",
    "oversized",
    "redirect",
    "challenge_realm",
    "slow",
]
MODES: tuple[str, ...] = get_args(Mode)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
MAX_HEAD = 64 * 1024


@dataclass
class RecordedRequest:
    """One request as the proxy received it (header names lower-cased)."""

    method: str
    path: str  # path plus query, as sent on the request line
    headers: dict[str, str]
    mode: str  # the mode that handled it ("passthrough" when the match filter skipped it)
    at: float = field(default_factory=time.monotonic)


@dataclass
class _ModeState:
    mode: str = "passthrough"
    match: re.Pattern[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)


class FaultProxy(LoopServer):
    """``FaultProxy(upstream_url).start()`` returns ``http://127.0.0.1:PORT``.

    ``set_mode(mode, match=None, **params)``; ``match`` is a regex searched in the request
    path - requests that do not match are passed through untouched. Params per mode:

    * ``status_429``: ``retry_after`` (header value, omitted when None)
    * ``status_503``: ``retry_after``
    * ``hang``: none - the request is read and never answered until ``stop()``
    * ``reset``: none - the connection is closed with a TCP RST after the request is read
    * ``oversized``: ``size`` (bytes, default 64 MiB), ``declared_only`` (send the huge
      Content-Length but only 64 KiB of body, then close); default match ``/manifests/``
    * ``redirect``: ``target`` ("host:port" or a base URL), ``status`` (default 302)
    * ``challenge_realm``: ``realm`` - the URL put in every WWW-Authenticate realm
    * ``slow``: ``delay`` seconds before passing through
    """

    thread_name = "sandbox-fault-proxy"

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = port
        super().__init__()  # url, loop, thread and the stop event
        self.requests: list[RecordedRequest] = []
        self._state = _ModeState()
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- control (any thread) ---------------------------------------------------------
    def set_mode(self, mode: str, match: str | None = None, **params: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        if mode == "redirect" and "target" not in params:
            raise ValueError("redirect needs target='host:port'")
        if mode == "challenge_realm" and "realm" not in params:
            raise ValueError("challenge_realm needs realm='http://...'")
        if match is None and mode == "oversized":
            match = r"/manifests/"
        with self._lock:
            self._state = _ModeState(mode, re.compile(match) if match else None, dict(params))

    @property
    def mode(self) -> str:
        with self._lock:
            return self._state.mode

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")

    # --- server (loop thread) ---------------------------------------------------------
    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=60.0, follow_redirects=False)
        server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD)
        self._server = server
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for w in list(self._writers):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
            await self._client.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                method, target, version, headers, body = req
                keep = await self._dispatch(writer, method, target, headers, body)
                conn = headers.get("connection", "").lower()
                if not keep or conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive"):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _dispatch(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
    ) -> bool:
        """Answer one request; False when the connection must not be reused."""
        with self._lock:
            st = self._state
        mode = st.mode
        if st.match is not None and not st.match.search(target.split("?", 1)[0]):
            mode = "passthrough"
        with self._lock:
            self.requests.append(RecordedRequest(method, target, dict(headers), mode))
        p = st.params

        if mode == "hang":
            assert self._stopping is not None
            await self._stopping.wait()
            return False
        if mode == "reset":
            sock = writer.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode in ("status_429", "status_503"):
            status, code, msg = (
                (429, "TOOMANYREQUESTS", "too many requests")
                if mode == "status_429"
                else (503, "UNAVAILABLE", "service unavailable")
            )
            extra = []
            if p.get("retry_after") is not None:
                extra.append(("Retry-After", str(p["retry_after"])))
            err = {"errors": [{"code": code, "message": msg, "detail": None}]}
            await _respond(writer, method, status, extra, json.dumps(err).encode())
            return True
        if mode == "redirect":
            tgt = str(p["target"])
            base = tgt if "://" in tgt else f"http://{tgt}"
            await _respond(
                writer, method, int(p.get("status", 302)), [("Location", base + target)], b""
            )
            return True
        if mode == "oversized":
            await self._oversized(writer, method, int(p.get("size", 64 << 20)), p)
            return False
        if mode == "slow":
            await asyncio.sleep(float(p.get("delay", 5.0)))
        return await self._forward(
            writer, method, target, headers, body, st if mode == "challenge_realm" else None
        )

    async def _oversized(
        self, writer: asyncio.StreamWriter, method: str, size: int, p: dict[str, Any]
    ) -> None:
        hdrs = [
            ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
            ("Docker-Content-Digest", "sha256:" + "0" * 64),
            ("Content-Length", str(size)),
        ]
        writer.write(_head(200, hdrs))
        if method != "HEAD":
            chunk = b" " * 65536
            sent = 0
            limit = min(size, 65536) if p.get("declared_only") else size
            while sent < limit:
                n = min(len(chunk), limit - sent)
                writer.write(chunk[:n])
                sent += n
                await writer.drain()
        await writer.drain()
        writer.close()

    async def _forward(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        realm_state: _ModeState | None,
    ) -> bool:
        assert self._client is not None
        out = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
        # Keep the client's Host so the registry builds upload/redirect URLs via the proxy.
        req = self._client.build_request(method, self.upstream + target, headers=out, content=body)
        try:
            resp = await self._client.send(req, stream=True)
        except httpx.HTTPError as exc:
            msg = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": str(exc)}]}).encode()
            await _respond(writer, method, 502, [], msg)
            return True
        try:
            data = b"".join([c async for c in resp.aiter_raw()])
        finally:
            await resp.aclose()
        hdrs = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        if realm_state is not None:
            realm = str(realm_state.params["realm"])
            hdrs = [
                (k, re.sub(r'realm="[^"]*"', f'realm="{realm}"', v))
                if k.lower() == "www-authenticate"
                else (k, v)
                for k, v in hdrs
            ]
        if method == "HEAD":
            cl = resp.headers.get("content-length")
            if cl is not None:
                hdrs.append(("Content-Length", cl))
            writer.write(_head(resp.status_code, hdrs, reason=resp.reason_phrase))
        else:
            hdrs.append(("Content-Length", str(len(data))))
            writer.write(_head(resp.status_code, hdrs, reason=resp.reason_phrase) + data)
        await writer.drain()
        return True


def _head(status: int, headers: list[tuple[str, str]], reason: str = "") -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _respond(
    writer: asyncio.StreamWriter,
    method: str,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    hdrs = list(headers)
    if body:
        hdrs.append(("Content-Type", "application/json"))
    hdrs.append(("Content-Length", str(len(body))))
    writer.write(_head(status, hdrs) + (b"" if method == "HEAD" else body))
    await writer.drain()


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, str, dict[str, str], bytes] | None:
    """Parse one HTTP/1.x request; None on a clean EOF between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        k, _, v = line.partition(":")
        key = k.strip().lower()
        headers[key] = f"{headers[key]}, {v.strip()}" if key in headers else v.strip()
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            n = int(size_line.split(b";", 1)[0].strip(), 16)
            if n == 0:
                await reader.readuntil(b"\r\n")  # trailer end (no trailers expected)
                break
            parts.append(await reader.readexactly(n))
            await reader.readexactly(2)
        body = b"".join(parts)
        headers.pop("transfer-encoding", None)
    elif headers.get("content-length"):
        body = await reader.readexactly(int(headers["content-length"]))
    return method, target, version, headers, body
