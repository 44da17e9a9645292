"""Bearer tokens from the realm a registry's challenge names (the Docker token flow).

The realm must be https unless the registry is marked insecure (the address policy is
enforced at connect time); the credential goes to that realm only. Tokens are cached by
(realm, service, scope, credential identity) until shortly before they expire.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from pullmedic.core.diagnosis import Evidence
from pullmedic.probe.cache import Cache, CacheKey
from pullmedic.probe.challenges import Challenge
from pullmedic.probe.credentials import RegistryCredential
from pullmedic.probe.errors import ProbeError
from pullmedic.probe.sender import HttpResult, RegistryRequest, RequestSender
from pullmedic.probe.urls import origin, redact_url


@dataclass(frozen=True)
class TokenResult:
    """What the token server answered; ``ttl`` is how long the token may be reused."""

    status: int
    token: str | None = field(default=None, repr=False)
    grants_pull: bool | None = None
    realm: str = ""
    retry_after: float | None = None
    ttl: float = 0.0


@dataclass(frozen=True)
class TokenKey(CacheKey[TokenResult]):
    realm: str
    service: str
    scope: str
    identity: str


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


def token_url(realm: str, service: str, scope: str) -> str:
    params = []
    if service:
        params.append(("service", service))
    if scope:
        params.append(("scope", scope))
    sep = "&" if "?" in realm else "?"
    return realm + (sep + urlencode(params) if params else "")


class TokenService:
    """Fetches and caches bearer tokens; shared by every session of a client."""

    def __init__(self, sender: RequestSender, cache: Cache) -> None:
        self.sender = sender
        self.config = sender.config
        self.cache = cache

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
        """A bearer token for ``scope`` from the realm ``registry_host``'s challenge named."""
        realm = challenge.realm or ""
        service = challenge.service or ""
        self._check_realm(rec, registry_host, realm)
        key = TokenKey(realm, service, scope, credential.identity if credential else "anonymous")
        if fresh:
            self.cache.forget(key)

        def cached(_hit: TokenResult) -> None:
            url = redact_url(token_url(realm, service, scope))
            label = credential.label if credential else None
            rec.append(Evidence("token", "GET", url, 200, (), "cached token", label))

        async def fetch() -> TokenResult:
            return await self._fetch(rec, registry_host, key, repository, credential)

        return await self.cache.load(key, fetch, lambda t: t.ttl, on_hit=cached)

    def _check_realm(self, rec: list[Evidence], registry_host: str, realm: str) -> None:
        """A realm must be a URL, and https unless the registry itself is insecure."""
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

    async def _fetch(
        self,
        rec: list[Evidence],
        registry_host: str,
        key: TokenKey,
        repository: str,
        credential: RegistryCredential | None,
    ) -> TokenResult:
        """OAuth2 refresh with an identity token (falling back to GET), else GET with Basic."""
        label = credential.label if credential else None
        request = RegistryRequest(
            "token",
            "GET",
            token_url(key.realm, key.service, key.scope),
            registry_host,
            self.config.max_token_bytes,
            auth_header=credential.basic_header() if credential else None,
            auth_origin=origin(key.realm),
            credential_label=label,
        )
        result: HttpResult | None = None
        if credential is not None and credential.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credential.identity_token,
                "service": key.service,
                "scope": key.scope,
                "client_id": "pullmedic",
            }
            oauth = RegistryRequest(
                "token",
                "POST",
                key.realm,
                registry_host,
                self.config.max_token_bytes,
                credential_label=label,
                data=form,
            )
            result = await self.sender.send(rec, oauth)
            if result.status in (404, 405):
                result = None  # server has no OAuth2 endpoint: fall back to GET
        if result is None:
            result = await self.sender.send(rec, request)
        if result.status != 200:
            return TokenResult(result.status, None, None, key.realm, result.retry_after)
        return self._parse(rec, result, key.realm, repository)

    @staticmethod
    def _parse(rec: list[Evidence], result: HttpResult, realm: str, repository: str) -> TokenResult:
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
        # Renew a little early so a token never expires between use and answer.
        ttl = max(1.0, min(expires_in * 0.9, expires_in - 5))
        return TokenResult(200, token, token_grants(token, repository), realm, None, ttl)
