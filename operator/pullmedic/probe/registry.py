"""Async OCI registry client for probing, built to be safe to point at strangers' hosts.

What it guarantees (and why):

* Credentials go only to the registry host they were matched for and to the token realm
  that host's challenge names; the realm must be https unless the registry is marked
  insecure. ``Authorization`` never crosses origins, also not on redirects, which are
  followed by hand (a few hops, each address-checked by the transport).
* Every request is recorded as :class:`~pullmedic.core.diagnosis.Evidence` with a redacted
  URL, status and registry error codes - never header values.
* Response bodies are streamed and cut off at configured caps; timeouts are explicit.
* Per-host concurrency limit, token bucket and 429 back-off, so the prober cannot become
  the reason a registry rate-limits a cluster.

Pure helpers (challenge/Link/error parsing, URL redaction, token claims) are at the top
and unit-tested on their own.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx

from pullmedic.core.diagnosis import Evidence
from pullmedic.core.observation import FailureKind
from pullmedic.core.platforms import is_attestation
from pullmedic.probe.netguard import (
    AddressPolicy,
    BlockedAddress,
    ResolutionFailed,
    guarded_transport,
)

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
# Without the index types distribution answers MANIFEST_UNKNOWN for multi-arch tags.
MANIFEST_ACCEPT = ", ".join(
    (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
)

MiB = 1 << 20

# Query parameters that are safe to show in evidence; every other value is redacted.
_SAFE_QUERY_KEYS = frozenset({"service", "scope", "n", "last"})
# Response headers kept on results (none of them carries a secret).
_KEPT_HEADERS = (
    "content-type",
    "content-length",
    "docker-content-digest",
    "link",
    "location",
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "docker-ratelimit-source",
    "www-authenticate",
)

# --------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68 = _TCHAR | frozenset("/=")


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge; scheme lower-cased, parameter names too."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse every challenge in a ``WWW-Authenticate`` value (RFC 9110 section 11.6.1).

    Handles several challenges in one header, quoted strings containing commas and
    escapes, bare tokens and token68. Garbage is skipped rather than raised: a hostile
    registry must not be able to crash a diagnosis.
    """
    out: list[Challenge] = []
    s = header
    n = len(s)
    i = 0

    def skip_ws(j: int) -> int:
        while j < n and s[j] in " \t":
            j += 1
        return j

    def read_token(j: int) -> tuple[str, int]:
        k = j
        while k < n and s[k] in _TCHAR:
            k += 1
        return s[j:k], k

    def read_quoted(j: int) -> tuple[str, int]:
        # s[j] == '"'
        buf: list[str] = []
        k = j + 1
        while k < n:
            c = s[k]
            if c == "\\" and k + 1 < n:
                buf.append(s[k + 1])
                k += 2
                continue
            if c == '"':
                return "".join(buf), k + 1
            buf.append(c)
            k += 1
        return "".join(buf), k  # unterminated: take what is there

    while i < n:
        while i < n and s[i] in " \t,":
            i += 1
        if i >= n:
            break
        scheme, j = read_token(i)
        if not scheme:
            # Not a token: skip to the next comma and try again.
            while i < n and s[i] != ",":
                i += 1
            continue
        i = skip_ws(j)
        params: dict[str, str] = {}
        token68: str | None = None
        # token68: e.g. "Negotiate abc123==" followed by end or comma.
        k = i
        while k < n and s[k] in _TOKEN68:
            k += 1
        if k > i and (k >= n or s[skip_ws(k)] == ",") and "=" in s[i:k]:
            head = s[i:k].rstrip("=")
            if head and "=" not in head:
                token68 = s[i:k]
                i = k
        if token68 is None:
            while i < n:
                start = i
                i = skip_ws(i)
                name, j = read_token(i)
                j2 = skip_ws(j)
                if not name or j2 >= n or s[j2] != "=":
                    i = start  # the next challenge (or junk) starts here
                    break
                j2 = skip_ws(j2 + 1)
                if j2 < n and s[j2] == '"':
                    value, j2 = read_quoted(j2)
                else:
                    # Lenient: unquoted realms such as https://x/y are common in the wild.
                    k2 = j2
                    while k2 < n and s[k2] not in ", \t":
                        k2 += 1
                    value, j2 = s[j2:k2], k2
                params.setdefault(name.lower(), value)
                i = skip_ws(j2)
                if i < n and s[i] == ",":
                    i += 1
                    continue
                break
        out.append(Challenge(scheme.lower(), params, token68))
    return out


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


def token_grants(token: str, repository: str, action: str = "pull") -> bool | None:
    """What a distribution-style JWT's ``access`` claim says about ``action`` on a repository.

    The signature is not checked - this is only used to be honest about what a 404
    means, never to authorise anything. None when the token is opaque.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict) or "access" not in claims:
        return None
    access = claims.get("access")
    if not isinstance(access, list):
        return False
    for entry in access:
        if not isinstance(entry, dict) or entry.get("type") != "repository":
            continue
        if entry.get("name") != repository:
            continue
        actions = entry.get("actions")
        if isinstance(actions, list) and (action in actions or "*" in actions):
            return True
    return False


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` (delta-seconds or HTTP-date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), 86400))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - now, 86400.0))


def origin(url: str | httpx.URL) -> tuple[str, str, int]:
    u = httpx.URL(str(url))
    port = u.port or (443 if u.scheme == "https" else 80)
    return (u.scheme, u.host.lower(), port)


# --------------------------------------------------------------------------------------
# Configuration and value types
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    """Limits and trust settings for registry probing; immutable so it can be shared."""

    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    operation_timeout: float = 30.0
    max_manifest_bytes: int = 4 * MiB
    max_token_bytes: int = 1 * MiB
    max_config_bytes: int = 1 * MiB
    max_error_bytes: int = 64 * 1024
    max_tags_bytes: int = 4 * MiB
    max_tags_pages: int = 10
    tags_page_size: int = 1000
    max_redirects: int = 3
    max_verified_blobs: int = 128  # config + layers checked per image; more is not verified
    insecure_hosts: frozenset[str] = frozenset()
    address_policy: AddressPolicy = field(default_factory=AddressPolicy)
    user_agent: str = "pullmedic/0.1 (+registry probe)"
    verify_tls: bool = True
    per_host_concurrency: int = 8
    per_host_rate: float = 20.0
    per_host_burst: int = 40
    max_backoff_wait: float = 0.0
    ping_ttl: float = 300.0
    cache_auth: bool = True  # share pings and tokens; False only for naive baselines

    def is_insecure(self, host: str) -> bool:
        return host.lower() in self.insecure_hosts

    def scheme_for(self, host: str) -> str:
        return "http" if self.is_insecure(host) else "https"


@dataclass(frozen=True)
class RegistryCredential:
    """A username/password (and optional identity token) bound to the host it was matched for.

    ``label`` names where it came from (secret and key) for evidence; it is the only part
    ever shown. ``identity`` is a one-way fingerprint used as a cache key.
    """

    username: str
    password: str = field(repr=False)
    label: str = ""
    identity_token: str | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        h = hashlib.sha256()
        for part in (self.username, self.password, self.identity_token or ""):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:24]

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


class ProbeError(Exception):
    """A request could not produce an HTTP answer; ``kind`` feeds the diagnosis.

    The message is built from redacted URLs and exception class names only.
    """

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
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"response larger than {limit} bytes")


@dataclass(frozen=True)
class HttpResult:
    """An HTTP answer with the non-secret headers and a capped body."""

    status: int
    url: str
    headers: Mapping[str, str]
    body: bytes = field(default=b"", repr=False)  # may hold a token: never printed
    error_codes: tuple[str, ...] = ()
    retry_after: float | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def digest(self) -> str | None:
        return self.header("docker-content-digest")

    @property
    def media_type(self) -> str | None:
        ct = self.header("content-type")
        return ct.split(";", 1)[0].strip() if ct else None

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


@dataclass(frozen=True)
class TokenResult:
    status: int
    token: str | None = field(default=None, repr=False)
    grants_pull: bool | None = None
    realm: str = ""
    retry_after: float | None = None


@dataclass(frozen=True)
class AuthState:
    """How a session authenticates: what the ping said and what the token server gave."""

    scheme: Literal["none", "basic", "bearer", "unknown"]
    ping: HttpResult
    token: TokenResult | None = None


@dataclass(frozen=True)
class TagListing:
    status: int
    tags: tuple[str, ...] = ()
    complete: bool = True
    error_codes: tuple[str, ...] = ()
    retry_after: float | None = None


# --------------------------------------------------------------------------------------
# Concurrency helpers
# --------------------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Concurrent callers for the same key share one in-flight call and its result."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self.calls = 0
        self.shared = 0

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        fut = self._inflight.get(key)
        if fut is not None:
            self.shared += 1
            return await asyncio.shield(fut)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._inflight[key] = fut
        self.calls += 1
        try:
            result = await fn()
        except BaseException as exc:
            if not fut.done():
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                else:
                    fut.cancel()
            # Retrieve so asyncio does not warn when nobody else was waiting.
            if not fut.cancelled():
                fut.exception()
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            self._inflight.pop(key, None)


class HostGate:
    """Per-host limiter: a semaphore, a token bucket, and the 429 back-off window."""

    def __init__(self, host: str, concurrency: int, rate: float, burst: int) -> None:
        self.host = host
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._rate = max(rate, 0.001)
        self._burst = float(max(1, burst))
        self._tokens = self._burst
        self._last = time.monotonic()
        self._blocked_until = 0.0
        self._failures = 0
        self._lock = asyncio.Lock()

    def backoff_remaining(self) -> float:
        return max(0.0, self._blocked_until - time.monotonic())

    async def __aenter__(self) -> HostGate:
        await self._sem.acquire()
        try:
            async with self._lock:
                while True:
                    now = time.monotonic()
                    self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                    self._last = now
                    if self._tokens >= 1.0:
                        self._tokens -= 1.0
                        break
                    await asyncio.sleep((1.0 - self._tokens) / self._rate)
        except BaseException:
            self._sem.release()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._sem.release()

    def note_429(self, retry_after: float | None) -> float:
        """Start (or extend) the back-off window; exponential when no Retry-After."""
        self._failures += 1
        delay = retry_after if retry_after is not None else min(300.0, 2.0**self._failures)
        self._blocked_until = max(self._blocked_until, time.monotonic() + delay)
        return delay

    def note_ok(self) -> None:
        self._failures = 0


# --------------------------------------------------------------------------------------
# Transport instrumentation
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------


@dataclass
class _CachedToken:
    token: str = field(repr=False)
    expires_at: float
    grants_pull: bool | None


class RegistryClient:
    """Shared across diagnoses: connection pool, ping cache, token cache, host gates.

    ``transport`` must enforce the address policy itself; the default is the guarded
    transport from :mod:`pullmedic.probe.netguard` (wrap it, e.g. in CountingTransport, rather
    than replacing it).
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config or ClientConfig()
        cfg = self.config
        self.transport = transport or guarded_transport(cfg.address_policy, verify=cfg.verify_tls)
        self._http = httpx.AsyncClient(
            transport=self.transport,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(
                cfg.read_timeout, connect=cfg.connect_timeout, pool=cfg.operation_timeout
            ),
            headers={"User-Agent": cfg.user_agent},
        )
        self._pings: dict[str, tuple[float, HttpResult]] = {}
        self._ping_flight: SingleFlight[str, HttpResult] = SingleFlight()
        self._tokens: dict[tuple[str, str, str, str], _CachedToken] = {}
        self._token_flight: SingleFlight[tuple[str, str, str, str], TokenResult] = SingleFlight()
        self._gates: dict[str, HostGate] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def gate(self, host: str) -> HostGate:
        g = self._gates.get(host)
        if g is None:
            cfg = self.config
            g = HostGate(host, cfg.per_host_concurrency, cfg.per_host_rate, cfg.per_host_burst)
            self._gates[host] = g
        return g

    def base_url(self, host: str) -> str:
        return f"{self.config.scheme_for(host)}://{host}"

    # ---- the one place requests are sent ----------------------------------------------
    async def send(
        self,
        rec: list[Evidence],
        *,
        kind: str,
        method: str,
        url: str,
        registry_host: str,
        headers: Mapping[str, str] | None = None,
        auth_header: str | None = None,
        auth_origin: tuple[str, str, int] | None = None,
        credential_label: str | None = None,
        data: Mapping[str, str] | None = None,
        max_bytes: int,
    ) -> HttpResult:
        """Send one request (following redirects by hand) and record evidence.

        ``auth_header`` is attached only while the request URL's origin equals
        ``auth_origin``; a redirect elsewhere drops it for that hop and every later one.
        """
        cfg = self.config
        current = url
        carry_auth = auth_header is not None
        method_now = method
        body_data = data
        for hop in range(cfg.max_redirects + 1):
            u = httpx.URL(current)
            if u.scheme not in ("http", "https"):
                raise ProbeError("blocked", kind, f"refused scheme {u.scheme!r}")
            if u.scheme == "http" and not cfg.is_insecure(registry_host):
                raise ProbeError(
                    "blocked", kind, f"refused plain-http URL {redact_url(u)} for a secure registry"
                )
            hdrs = dict(headers or {})
            if carry_auth and auth_header is not None and origin(u) == auth_origin:
                hdrs["Authorization"] = auth_header
            else:
                carry_auth = False
            gate_host = u.netloc.decode("ascii")
            gate = self.gate(gate_host)
            remaining = gate.backoff_remaining()
            if remaining > 0:
                if remaining > cfg.max_backoff_wait:
                    rec.append(
                        Evidence(
                            kind,
                            method_now,
                            redact_url(u),
                            None,
                            (),
                            f"not sent: {gate_host} answered 429, backing off {remaining:.0f}s",
                            credential_label,
                        )
                    )
                    raise HostBackingOff(gate_host, time.time() + remaining, remaining)
                await asyncio.sleep(remaining)
            try:
                async with gate, asyncio.timeout(cfg.operation_timeout):
                    # The overall cap also stops slow-drip bodies that never trip read_timeout.
                    result = await self._once(method_now, u, hdrs, body_data, max_bytes)
            except (ProbeError, HostBackingOff):
                raise
            except Exception as exc:
                failure, detail = _classify(exc)
                rec.append(
                    Evidence(
                        kind,
                        method_now,
                        redact_url(u),
                        None,
                        (),
                        f"{failure}: {detail}",
                        credential_label if carry_auth else None,
                    )
                )
                raise ProbeError(failure, kind, detail) from None
            note = ""
            if result.status == 429:
                delay = gate.note_429(result.retry_after)
                note = f"rate limited; backing off {delay:.0f}s"
                if result.header("ratelimit-remaining"):
                    note += f"; ratelimit-remaining {result.header('ratelimit-remaining')}"
            elif result.status < 500:
                gate.note_ok()
            if result.status == 401:
                errs = [c.error for c in parse_challenges(result.header("www-authenticate") or "")]
                err = next((e for e in errs if e), None)
                if err:
                    note = f"challenge error={err[:40]}"
            location = result.header("location")
            if result.status in (301, 302, 303, 307, 308) and location:
                target = urljoin(str(u), location)
                note = f"redirect to {redact_url(target)}"
            rec.append(
                Evidence(
                    kind,
                    method_now,
                    redact_url(u),
                    result.status,
                    result.error_codes,
                    note,
                    credential_label if "Authorization" in hdrs else None,
                )
            )
            if result.status in (301, 302, 303, 307, 308) and location:
                if hop >= cfg.max_redirects:
                    raise ProbeError("protocol", kind, f"more than {cfg.max_redirects} redirects")
                current = urljoin(str(u), location)
                if result.status == 303:
                    method_now, body_data = ("HEAD" if method_now == "HEAD" else "GET"), None
                continue
            return result
        raise ProbeError("protocol", kind, "redirect loop")  # pragma: no cover

    async def _once(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None,
        max_bytes: int,
    ) -> HttpResult:
        request = self._http.build_request(method, url, headers=headers, data=data)
        response = await self._http.send(request, stream=True)
        try:
            kept = {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers}
            if "www-authenticate" in response.headers:
                kept["www-authenticate"] = ", ".join(response.headers.get_list("www-authenticate"))
            body = b""
            if method != "HEAD":
                cap = max_bytes if response.status_code < 300 else self.config.max_error_bytes
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > cap:
                    if response.status_code < 300:
                        raise ResponseTooLarge(cap)
                    # Error bodies are only read for codes: skip a huge one silently.
                else:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > cap:
                            if response.status_code < 300:
                                raise ResponseTooLarge(cap)
                            break
                        chunks.append(chunk)
                    body = b"".join(chunks)
        finally:
            await response.aclose()
        codes = parse_error_codes(body) if response.status_code >= 400 and body else ()
        return HttpResult(
            status=response.status_code,
            url=redact_url(url),
            headers=kept,
            body=body,
            error_codes=codes,
            retry_after=parse_retry_after(kept.get("retry-after"), time.time()),
        )

    # ---- ping --------------------------------------------------------------------------
    async def ping(self, host: str, rec: list[Evidence]) -> HttpResult:
        """``GET /v2/`` without credentials; cached per host (answers are not secret)."""
        cached = self._pings.get(host) if self.config.cache_auth else None
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            rec.append(
                Evidence(
                    "ping", "GET", f"{self.base_url(host)}/v2/", cached[1].status, (), "cached"
                )
            )
            return cached[1]

        async def do() -> HttpResult:
            local: list[Evidence] = []
            try:
                result = await self.send(
                    local,
                    kind="ping",
                    method="GET",
                    url=f"{self.base_url(host)}/v2/",
                    registry_host=host,
                    max_bytes=self.config.max_error_bytes,
                )
            finally:
                rec.extend(local)
            if result.status in (200, 401) and self.config.cache_auth:
                self._pings[host] = (time.monotonic() + self.config.ping_ttl, result)
            return result

        if not self.config.cache_auth:
            return await do()
        before = len(rec)
        result = await self._ping_flight.do(host, do)
        if len(rec) == before:  # shared the flight with another caller
            rec.append(
                Evidence("ping", "GET", f"{self.base_url(host)}/v2/", result.status, (), "shared")
            )
        return result

    # ---- tokens ------------------------------------------------------------------------
    async def token(
        self,
        rec: list[Evidence],
        *,
        registry_host: str,
        challenge: Challenge,
        scope: str,
        repository: str,
        credential: RegistryCredential | None,
        fresh: bool = False,
    ) -> TokenResult:
        """A bearer token for ``scope`` from the realm ``registry_host``'s challenge named.

        The realm must be https unless the registry is insecure; the address policy is
        enforced at connect time. Cached by (realm, service, scope, credential identity)
        until shortly before ``expires_in``.
        """
        realm = challenge.realm or ""
        service = challenge.service or ""
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            rec.append(Evidence("token", "", redact_url(realm), None, (), "invalid realm"))
            raise ProbeError("blocked", "token", "the challenge names no usable token realm")
        if parts.scheme != "https" and not self.config.is_insecure(registry_host):
            rec.append(
                Evidence(
                    "token",
                    "",
                    redact_url(realm),
                    None,
                    (),
                    "not sent: realm is plain http for a secure registry",
                )
            )
            raise ProbeError(
                "blocked",
                "token",
                f"token realm {redact_url(realm)} is not https; credentials would travel "
                "in clear text",
            )
        ident = credential.identity if credential else "anonymous"
        key = (realm, service, scope, ident)
        cached = self._tokens.get(key) if self.config.cache_auth else None
        if cached is not None and not fresh and cached.expires_at > time.monotonic():
            rec.append(
                Evidence(
                    "token",
                    "GET",
                    redact_url(_token_url(realm, service, scope)),
                    200,
                    (),
                    "cached token",
                    credential.label if credential else None,
                )
            )
            return TokenResult(200, cached.token, cached.grants_pull, realm)
        if fresh:
            self._tokens.pop(key, None)

        async def do() -> TokenResult:
            return await self._fetch_token(
                rec, registry_host, realm, service, scope, repository, credential, key
            )

        if not self.config.cache_auth:
            return await do()
        return await self._token_flight.do(key, do)

    async def _fetch_token(
        self,
        rec: list[Evidence],
        registry_host: str,
        realm: str,
        service: str,
        scope: str,
        repository: str,
        credential: RegistryCredential | None,
        key: tuple[str, str, str, str],
    ) -> TokenResult:
        cfg = self.config
        label = credential.label if credential else None
        realm_origin = origin(realm)
        result: HttpResult | None = None
        if credential is not None and credential.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credential.identity_token,
                "service": service,
                "scope": scope,
                "client_id": "pullmedic",
            }
            result = await self.send(
                rec,
                kind="token",
                method="POST",
                url=realm,
                registry_host=registry_host,
                data=form,
                credential_label=label,
                max_bytes=cfg.max_token_bytes,
            )
            if result.status in (404, 405):
                result = None  # server has no OAuth2 endpoint: fall back to GET
        if result is None:
            result = await self.send(
                rec,
                kind="token",
                method="GET",
                url=_token_url(realm, service, scope),
                registry_host=registry_host,
                auth_header=credential.basic_header() if credential else None,
                auth_origin=realm_origin,
                credential_label=label,
                max_bytes=cfg.max_token_bytes,
            )
        if result.status != 200:
            return TokenResult(result.status, None, None, realm, result.retry_after)
        doc = result.json()
        token: str | None = None
        expires_in = 60.0
        if isinstance(doc, dict):
            for name in ("token", "access_token"):
                value = doc.get(name)
                if isinstance(value, str) and value:
                    token = value
                    break
            exp = doc.get("expires_in")
            if isinstance(exp, int | float) and exp > 0:
                expires_in = float(exp)
        if token is None:
            rec.append(Evidence("token", "", redact_url(realm), 200, (), "no token in response"))
            return TokenResult(502, None, None, realm)
        grants = token_grants(token, repository)
        # Renew a little early so a token never expires between use and answer.
        ttl = max(1.0, min(expires_in * 0.9, expires_in - 5))
        self._tokens[key] = _CachedToken(token, time.monotonic() + ttl, grants)
        if len(self._tokens) > 10000:
            self._expire_tokens()
        return TokenResult(200, token, grants, realm)

    def _expire_tokens(self) -> None:
        now = time.monotonic()
        for k in [k for k, v in self._tokens.items() if v.expires_at <= now]:
            del self._tokens[k]

    def session(
        self,
        host: str,
        repository: str,
        credential: RegistryCredential | None,
        rec: list[Evidence],
    ) -> RepositorySession:
        return RepositorySession(self, host, repository, credential, rec)


def _token_url(realm: str, service: str, scope: str) -> str:
    params = []
    if service:
        params.append(("service", service))
    if scope:
        params.append(("scope", scope))
    sep = "&" if "?" in realm else "?"
    return realm + (sep + urlencode(params) if params else "")


def _classify(exc: BaseException) -> tuple[FailureKind, str]:
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
    if isinstance(exc, httpx.HTTPError):
        return "protocol", type(exc).__name__
    return "protocol", type(exc).__name__


class RepositorySession:
    """Requests for one repository on one host with one credential (or none).

    Authentication is negotiated once per session from the host's challenge; the
    credential is only ever attached to this host's origin and its token realm.
    """

    def __init__(
        self,
        client: RegistryClient,
        host: str,
        repository: str,
        credential: RegistryCredential | None,
        rec: list[Evidence],
    ) -> None:
        self.client = client
        self.host = host
        self.repository = repository
        self.credential = credential
        self.rec = rec
        self.base = client.base_url(host)
        self.origin = origin(self.base)
        self.scope = f"repository:{repository}:pull"
        self.auth: AuthState | None = None
        self._auth_header: str | None = None
        self._challenge: Challenge | None = None

    @property
    def label(self) -> str | None:
        return self.credential.label if self.credential else None

    async def prepare(self) -> AuthState:
        """Ping the host and obtain what the challenge asks for (token or Basic)."""
        if self.auth is not None:
            return self.auth
        ping = await self.client.ping(self.host, self.rec)
        if ping.status == 200:
            self.auth = AuthState("none", ping)
            return self.auth
        if ping.status != 401:
            self.auth = AuthState("unknown", ping)
            return self.auth
        challenges = parse_challenges(ping.header("www-authenticate") or "")
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            self._challenge = bearer
            token = await self.client.token(
                self.rec,
                registry_host=self.host,
                challenge=bearer,
                scope=self.scope,
                repository=self.repository,
                credential=self.credential,
            )
            if token.token:
                self._auth_header = f"Bearer {token.token}"
            self.auth = AuthState("bearer", ping, token)
            return self.auth
        if basic is not None:
            if self.credential is not None:
                self._auth_header = self.credential.basic_header()
            self.auth = AuthState("basic", ping)
            return self.auth
        self.auth = AuthState("unknown", ping)
        return self.auth

    async def _request(
        self, kind: str, method: str, url: str, *, accept: str | None, max_bytes: int
    ) -> HttpResult:
        await self.prepare()
        headers = {"Accept": accept} if accept else {}

        async def send() -> HttpResult:
            return await self.client.send(
                self.rec,
                kind=kind,
                method=method,
                url=url,
                registry_host=self.host,
                headers=headers,
                auth_header=self._auth_header,  # read at call time: a retry has a new token
                auth_origin=self.origin,
                credential_label=self.label,
                max_bytes=max_bytes,
            )

        result = await send()
        if result.status == 401 and self._challenge is not None:
            # One retry: a new scope asked for (insufficient_scope), or a stale token.
            ch = next(
                (
                    c
                    for c in parse_challenges(result.header("www-authenticate") or "")
                    if c.scheme == "bearer" and c.realm
                ),
                None,
            )
            if ch is not None and ch.realm == self._challenge.realm:
                new_scope = ch.scope or self.scope
                if new_scope != self.scope or ch.error == "invalid_token":
                    token = await self.client.token(
                        self.rec,
                        registry_host=self.host,
                        challenge=ch,
                        scope=new_scope,
                        repository=self.repository,
                        credential=self.credential,
                        fresh=True,
                    )
                    if token.token:
                        self._auth_header = f"Bearer {token.token}"
                        result = await send()
        return result

    def _url(self, suffix: str) -> str:
        return f"{self.base}/v2/{self.repository}/{suffix}"

    async def head_manifest(self, ref: str) -> HttpResult:
        return await self._request(
            "manifest",
            "HEAD",
            self._url(f"manifests/{ref}"),
            accept=MANIFEST_ACCEPT,
            max_bytes=0,
        )

    async def get_manifest(self, ref: str) -> HttpResult:
        return await self._request(
            "manifest",
            "GET",
            self._url(f"manifests/{ref}"),
            accept=MANIFEST_ACCEPT,
            max_bytes=self.client.config.max_manifest_bytes,
        )

    async def get_blob(self, digest: str, max_bytes: int) -> HttpResult:
        return await self._request(
            "blob", "GET", self._url(f"blobs/{digest}"), accept=None, max_bytes=max_bytes
        )

    async def head_blob(self, digest: str) -> HttpResult:
        """Whether a blob can be served (the kubelet fetches every one), without its bytes."""
        return await self._request(
            "blob", "HEAD", self._url(f"blobs/{digest}"), accept=None, max_bytes=0
        )

    async def list_tags(self, *, max_pages: int | None = None) -> TagListing:
        """All tags (bounded pages), following ``Link`` on the same origin only."""
        cfg = self.client.config
        pages = max_pages if max_pages is not None else cfg.max_tags_pages
        url = self._url(f"tags/list?n={cfg.tags_page_size}")
        tags: list[str] = []
        for _ in range(max(1, pages)):
            result = await self._request(
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
            if origin(target) != self.origin:
                self.rec.append(
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


def manifest_platforms(doc: object) -> list[tuple[Mapping[str, object], str]]:
    """Runnable (platform, digest) entries of an index, attestations skipped."""
    out: list[tuple[Mapping[str, object], str]] = []
    if not isinstance(doc, dict):
        return out
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        return out
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        plat = entry.get("platform")
        annotations = entry.get("annotations")
        ann = (
            {k: v for k, v in annotations.items() if isinstance(v, str)}
            if isinstance(annotations, dict)
            else None
        )
        plat_map = plat if isinstance(plat, dict) else None
        if is_attestation(plat_map, ann):
            continue
        digest = entry.get("digest")
        if plat_map is None or not isinstance(digest, str):
            continue
        out.append((plat_map, digest))
    return out


def config_digest(doc: object) -> str | None:
    """The config blob digest of a single-platform manifest."""
    if not isinstance(doc, dict):
        return None
    cfg = doc.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("digest"), str):
        digest: str = cfg["digest"]
        return digest
    return None


def is_index(media_type: str | None, doc: object = None) -> bool:
    if media_type in INDEX_TYPES:
        return True
    return isinstance(doc, dict) and isinstance(doc.get("manifests"), list)


__all__: Sequence[str] = (
    "MANIFEST_ACCEPT",
    "AuthState",
    "Challenge",
    "ClientConfig",
    "CountingTransport",
    "HostBackingOff",
    "HostGate",
    "HttpResult",
    "ProbeError",
    "RegistryClient",
    "RegistryCredential",
    "RepositorySession",
    "SingleFlight",
    "TagListing",
    "TokenResult",
    "parse_challenges",
    "parse_error_codes",
    "parse_link_next",
    "redact_url",
    "token_grants",
)
