"""The one place registry requests are sent, as a few named steps.

Before the first hop, a manifest GET is held back while the host's pull quota is down
to the nodes' reserve. Each hop of a request: check the URL's scheme, scope the
credential to its origin, pass the host's gate, exchange (capped body, typed failure;
counted by method, the quota headers read), record evidence, and follow a redirect by
hand (so ``Authorization`` never crosses origins and every hop is address-checked by the
transport).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx

from pullmedic.core.diagnosis import Evidence
from pullmedic.probe.challenges import parse_challenges
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.errors import (
    HostBackingOff,
    ProbeError,
    ResponseTooLarge,
    classify,
    parse_error_codes,
)
from pullmedic.probe.hostgate import HostGate, HostGates, parse_retry_after
from pullmedic.probe.netguard import guarded_transport
from pullmedic.probe.quota import QuotaReserved, Quotas
from pullmedic.probe.urls import Origin, origin, redact_url
from pullmedic.telemetry import metrics

REDIRECTS = frozenset({301, 302, 303, 307, 308})

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


@dataclass(frozen=True)
class RegistryRequest:
    """What to send, and to whom the credential may go (``auth_origin`` only)."""

    kind: str  # evidence kind: ping, token, manifest, blob, tags
    method: str
    url: str
    registry_host: str
    max_bytes: int
    headers: Mapping[str, str] = field(default_factory=dict)
    auth_header: str | None = field(default=None, repr=False)
    auth_origin: Origin | None = None
    credential_label: str | None = None
    data: Mapping[str, str] | None = field(default=None, repr=False)

    def with_auth(self, header: str | None) -> RegistryRequest:
        return dataclasses.replace(self, auth_header=header)


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
class _Hop:
    """One hop of a request: where it goes now and how (a 303 turns it into a GET)."""

    url: httpx.URL
    method: str
    data: Mapping[str, str] | None
    carry_auth: bool


def _settle(gate: HostGate, result: HttpResult) -> str:
    """Tell the gate how the host answered; the back-off note for a 429."""
    if result.status == 429:
        delay = gate.note_429(result.retry_after)
        note = f"rate limited; backing off {delay:.0f}s"
        if result.header("ratelimit-remaining"):
            note += f"; ratelimit-remaining {result.header('ratelimit-remaining')}"
        return note
    if result.status < 500:
        gate.note_ok()
    return ""


def _unanswered(request: RegistryRequest, hop: _Hop, note: str, label: str | None) -> Evidence:
    """Evidence of a hop that got no HTTP answer (not sent, or failed in transport)."""
    return Evidence(request.kind, hop.method, redact_url(hop.url), None, (), note, label)


class RequestSender:
    """Connection pool and host gates; ``transport`` must enforce the address policy.

    The default is the guarded transport from :mod:`pullmedic.probe.netguard`: wrap it
    (to count requests, say) rather than replacing it.
    """

    def __init__(
        self, config: ClientConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = cfg = config
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
        self.gate = HostGates(cfg.per_host_concurrency, cfg.per_host_rate, cfg.per_host_burst)
        self.quotas = Quotas(cfg.quota_reserve)
        # Requests sent, by (registry host, method): what benchmarks report as GETs.
        self.requests: Counter[tuple[str, str]] = Counter()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, rec: list[Evidence], request: RegistryRequest) -> HttpResult:
        """Send one request (following redirects by hand) and record evidence per hop."""
        hop = _Hop(
            httpx.URL(request.url), request.method, request.data, request.auth_header is not None
        )
        if request.kind == "manifest" and request.method == "GET":
            self._check_quota(rec, request, hop)
        for n in range(self.config.max_redirects + 1):
            self._check_scheme(request, hop.url)
            headers = dict(request.headers)
            if hop.carry_auth and request.auth_header is not None:
                if origin(hop.url) == request.auth_origin:
                    headers["Authorization"] = request.auth_header
                else:
                    hop = dataclasses.replace(hop, carry_auth=False)  # and for every later hop
            gate = await self._pass_gate(rec, request, hop)
            result = await self._exchange(rec, request, hop, gate, headers)
            rec.append(self._evidence(request, hop, result, _settle(gate, result)))
            nxt = self._redirect(request, hop, result, n)
            if nxt is None:
                return result
            hop = nxt
        raise ProbeError("protocol", request.kind, "redirect loop")  # pragma: no cover

    def _check_quota(self, rec: list[Evidence], request: RegistryRequest, hop: _Hop) -> None:
        """Withhold a manifest GET (QuotaReserved) while the host's quota is at the reserve."""
        try:
            self.quotas.check_get(request.registry_host)
        except QuotaReserved as exc:
            rec.append(_unanswered(request, hop, f"not sent: {exc.withheld.reason}", None))
            raise

    def _check_scheme(self, request: RegistryRequest, url: httpx.URL) -> None:
        """Only http(s), and plain http only for a registry marked insecure."""
        if url.scheme not in ("http", "https"):
            raise ProbeError("blocked", request.kind, f"refused scheme {url.scheme!r}")
        if url.scheme == "http" and not self.config.is_insecure(request.registry_host):
            raise ProbeError(
                "blocked",
                request.kind,
                f"refused plain-http URL {redact_url(url)} for a secure registry",
            )

    async def _pass_gate(
        self, rec: list[Evidence], request: RegistryRequest, hop: _Hop
    ) -> HostGate:
        """The hop's host gate; not sent (HostBackingOff) while the host's back-off runs."""
        host = hop.url.netloc.decode("ascii")
        gate = self.gate(host)
        remaining = gate.backoff_remaining()
        if remaining > 0:
            if remaining > self.config.max_backoff_wait:
                note = f"not sent: {host} answered 429, backing off {remaining:.0f}s"
                rec.append(_unanswered(request, hop, note, request.credential_label))
                raise HostBackingOff(host, time.time() + remaining, remaining)
            await asyncio.sleep(remaining)
        return gate

    async def _exchange(
        self,
        rec: list[Evidence],
        request: RegistryRequest,
        hop: _Hop,
        gate: HostGate,
        headers: Mapping[str, str],
    ) -> HttpResult:
        """One HTTP exchange through the gate; a transport failure becomes a ProbeError."""
        self.requests[(request.registry_host, hop.method)] += 1
        metrics.REGISTRY_REQUESTS.labels(
            host=metrics.host_label(request.registry_host), method=hop.method
        ).inc()
        try:
            async with gate, asyncio.timeout(self.config.operation_timeout):
                # The overall cap also stops slow-drip bodies that never trip read_timeout.
                result = await self._once(hop, headers, request.max_bytes)
        except (ProbeError, HostBackingOff):
            raise
        except Exception as exc:
            failure, detail = classify(exc)
            label = request.credential_label if hop.carry_auth else None
            rec.append(_unanswered(request, hop, f"{failure}: {detail}", label))
            raise ProbeError(failure, request.kind, detail) from None
        self.quotas.observe(request.registry_host, result.headers)
        return result

    def _evidence(
        self, request: RegistryRequest, hop: _Hop, result: HttpResult, note: str
    ) -> Evidence:
        """The hop as evidence; the note says the most telling thing about the answer."""
        if result.status == 401:
            errs = [c.error for c in parse_challenges(result.header("www-authenticate") or "")]
            err = next((e for e in errs if e), None)
            if err:
                note = f"challenge error={err[:40]}"
        location = result.header("location")
        if result.status in REDIRECTS and location:
            note = f"redirect to {redact_url(urljoin(str(hop.url), location))}"
        return Evidence(
            request.kind,
            hop.method,
            redact_url(hop.url),
            result.status,
            result.error_codes,
            note,
            request.credential_label if hop.carry_auth else None,
        )

    def _redirect(
        self, request: RegistryRequest, hop: _Hop, result: HttpResult, n: int
    ) -> _Hop | None:
        """The next hop of a redirect, or None when the answer is final."""
        location = result.header("location")
        if result.status not in REDIRECTS or not location:
            return None
        if n >= self.config.max_redirects:
            raise ProbeError(
                "protocol", request.kind, f"more than {self.config.max_redirects} redirects"
            )
        nxt = dataclasses.replace(hop, url=httpx.URL(urljoin(str(hop.url), location)))
        if result.status == 303:
            method = "HEAD" if hop.method == "HEAD" else "GET"
            nxt = dataclasses.replace(nxt, method=method, data=None)
        return nxt

    async def _once(self, hop: _Hop, headers: Mapping[str, str], max_bytes: int) -> HttpResult:
        request = self._http.build_request(hop.method, hop.url, headers=headers, data=hop.data)
        response = await self._http.send(request, stream=True)
        try:
            kept = {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers}
            if "www-authenticate" in response.headers:
                kept["www-authenticate"] = ", ".join(response.headers.get_list("www-authenticate"))
            body = b""
            if hop.method != "HEAD":
                body = await self._read_capped(response, max_bytes)
        finally:
            await response.aclose()
        codes = parse_error_codes(body) if response.status_code >= 400 and body else ()
        return HttpResult(
            status=response.status_code,
            url=redact_url(hop.url),
            headers=kept,
            body=body,
            error_codes=codes,
            retry_after=parse_retry_after(kept.get("retry-after"), time.time()),
        )

    async def _read_capped(self, response: httpx.Response, max_bytes: int) -> bytes:
        """The body up to its cap: too large a success raises, an error body is cut short."""
        ok = response.status_code < 300
        cap = max_bytes if ok else self.config.max_error_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            if ok:
                raise ResponseTooLarge(cap)
            return b""  # error bodies are only read for codes: skip a huge one silently
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                if ok:
                    raise ResponseTooLarge(cap)
                break
            chunks.append(chunk)
        return b"".join(chunks)
