"""Why a registry request produced no usable answer, as a typed failure.

Like httpx's ``_exceptions`` module: one place maps transport exceptions to the failure
kinds a diagnosis is built from, and every message is free of secrets (redacted URLs and
exception class names only).
"""

from __future__ import annotations

import json
import ssl

import httpx

from pullmedic.core.observation import FailureKind
from pullmedic.probe.netguard import BlockedAddress, ResolutionFailed


class ProbeError(Exception):
    """A request could not produce an HTTP answer; ``kind`` feeds the diagnosis."""

    def __init__(self, kind: FailureKind, step: str, detail: str) -> None:
        self.kind: FailureKind = kind
        self.step = step
        self.detail = detail
        super().__init__(f"{step}: {kind}: {detail}")


class HostBackingOff(Exception):
    """Not sent: the host answered 429 recently and its back-off has not expired."""

    def __init__(self, host: str, retry_at: float, remaining: float) -> None:
        self.host = host
        self.retry_at = retry_at  # wall clock
        self.remaining = remaining
        super().__init__(f"{host} is rate-limiting; backing off for {remaining:.1f}s")


class ResponseTooLarge(Exception):
    """A body went over its cap: a registry must not be able to exhaust our memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"response larger than {limit} bytes")


def classify(exc: BaseException) -> tuple[FailureKind, str]:
    """Map a transport exception to a failure kind and a secret-free detail."""
    if isinstance(exc, BlockedAddress):
        return "blocked", exc.reason if exc.ip is None else f"{exc.ip}: {exc.reason}"
    if isinstance(exc, ResolutionFailed):
        return "dns", exc.reason
    if isinstance(exc, ResponseTooLarge):
        return "oversized", f"body over {exc.limit} bytes"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout", type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timeout", "operation deadline exceeded"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return "tls", type(cause).__name__
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "ssl" in text or "certificate" in text or "tls" in text:
            return "tls", "TLS handshake failed"
        if "name or service" in text or "nodename" in text or "resolution" in text:
            return "dns", "name does not resolve"
        return "connect", "connection refused or unreachable"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return "reset", "connection closed by the server"
    return "protocol", type(exc).__name__


def parse_error_codes(body: bytes) -> tuple[str, ...]:
    """Registry error codes (``{"errors":[{"code":...}]}``) from a body; () if none."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ()
    if not isinstance(doc, dict):
        return ()
    errors = doc.get("errors")
    if not isinstance(errors, list):
        return ()
    codes: list[str] = []
    for err in errors[:10]:
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            code = err["code"][:64]
            if code not in codes:
                codes.append(code)
    return tuple(codes)
