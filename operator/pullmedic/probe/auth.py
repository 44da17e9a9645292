"""Registry authentication as a flow object, in the shape of ``httpx.Auth.auth_flow``.

A session's :class:`RegistryAuth` negotiates once from the host's ping (anonymous,
Basic, or a bearer token from the challenge's realm), then wraps every request: it
yields the request with the credential attached, sees the answer, and yields it once
more with a fresh token when the registry asks for another scope or calls the token
stale. The credential is only ever attached to the registry's own origin (the sender
drops it on a redirect elsewhere) and sent to the realm that host's challenge names.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal

from pullmedic.core.diagnosis import Evidence
from pullmedic.probe.cache import Cache, CacheKey
from pullmedic.probe.challenges import Challenge, bearer_challenge, parse_challenges
from pullmedic.probe.credentials import RegistryCredential
from pullmedic.probe.sender import HttpResult, RegistryRequest, RequestSender
from pullmedic.probe.tokens import TokenResult, TokenService


@dataclass(frozen=True)
class AuthState:
    """How a session authenticates: what the ping said and what the token server gave."""

    scheme: Literal["none", "basic", "bearer", "unknown"]
    ping: HttpResult
    token: TokenResult | None = None


@dataclass(frozen=True)
class PingKey(CacheKey[HttpResult]):
    host: str


class Pings:
    """``GET /v2/`` without credentials, cached per host (the answers are not secret)."""

    def __init__(self, sender: RequestSender, cache: Cache) -> None:
        self.sender = sender
        self.config = sender.config
        self.cache = cache

    async def ping(self, host: str, rec: list[Evidence]) -> HttpResult:
        url = f"{self.config.base_url(host)}/v2/"

        def cached(hit: HttpResult) -> None:
            rec.append(Evidence("ping", "GET", url, hit.status, (), "cached"))

        async def do() -> HttpResult:
            local: list[Evidence] = []
            try:
                request = RegistryRequest("ping", "GET", url, host, self.config.max_error_bytes)
                return await self.sender.send(local, request)
            finally:
                rec.extend(local)

        before = len(rec)
        result = await self.cache.load(
            PingKey(host),
            do,
            lambda r: self.config.ping_ttl if r.status in (200, 401) else 0.0,
            on_hit=cached,
        )
        if len(rec) == before:  # shared the flight with another caller
            rec.append(Evidence("ping", "GET", url, result.status, (), "shared"))
        return result


class RegistryAuth:
    """Authentication for one repository on one host with one credential (or none)."""

    def __init__(
        self,
        pings: Pings,
        tokens: TokenService,
        host: str,
        repository: str,
        credential: RegistryCredential | None,
        rec: list[Evidence],
    ) -> None:
        self.pings = pings
        self.tokens = tokens
        self.host = host
        self.repository = repository
        self.credential = credential
        self.rec = rec
        self.scope = f"repository:{repository}:pull"
        self.state: AuthState | None = None
        self._header: str | None = None
        self._challenge: Challenge | None = None

    async def prepare(self) -> AuthState:
        """Ping the host and obtain what the challenge asks for (token or Basic)."""
        if self.state is None:
            self.state = await self._negotiate()
        return self.state

    async def _negotiate(self) -> AuthState:
        ping = await self.pings.ping(self.host, self.rec)
        if ping.status == 200:
            return AuthState("none", ping)
        if ping.status != 401:
            return AuthState("unknown", ping)
        header = ping.header("www-authenticate")
        bearer = bearer_challenge(header)
        if bearer is not None:
            self._challenge = bearer
            token = await self._token(bearer, self.scope, fresh=False)
            return AuthState("bearer", ping, token)
        if any(c.scheme == "basic" for c in parse_challenges(header or "")):
            if self.credential is not None:
                self._header = self.credential.basic_header()
            return AuthState("basic", ping)
        return AuthState("unknown", ping)

    async def _token(self, challenge: Challenge, scope: str, *, fresh: bool) -> TokenResult:
        token = await self.tokens.token(
            self.rec,
            registry_host=self.host,
            challenge=challenge,
            scope=scope,
            repository=self.repository,
            credential=self.credential,
            fresh=fresh,
        )
        if token.token:
            self._header = f"Bearer {token.token}"
        return token

    async def auth_flow(
        self, request: RegistryRequest
    ) -> AsyncGenerator[RegistryRequest, HttpResult]:
        """Yield ``request`` authenticated; once more after a 401 that a new token answers."""
        await self.prepare()
        result = yield request.with_auth(self._header)
        if result.status != 401 or self._challenge is None:
            return
        # One retry: a new scope asked for (insufficient_scope), or a stale token.
        ch = bearer_challenge(result.header("www-authenticate"))
        if ch is None or ch.realm != self._challenge.realm:
            return
        scope = ch.scope or self.scope
        if scope != self.scope or ch.error == "invalid_token":
            token = await self._token(ch, scope, fresh=True)
            if token.token:
                yield request.with_auth(self._header)
