"""The registry client the prober shares across diagnoses: it wires the edge's parts.

One connection pool with per-host gates and quotas (:mod:`~pullmedic.probe.sender`),
pings and tokens cached for every session (:mod:`~pullmedic.probe.auth`,
:mod:`~pullmedic.probe.tokens`), documents by digest for the life of the process
(:mod:`~pullmedic.probe.content`), and a session per repository and credential
(:mod:`~pullmedic.probe.session`).
"""

from __future__ import annotations

import httpx

from pullmedic.core.diagnosis import Evidence
from pullmedic.probe.auth import Pings, RegistryAuth
from pullmedic.probe.cache import Cache
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.content import ContentStore
from pullmedic.probe.credentials import RegistryCredential
from pullmedic.probe.sender import RequestSender
from pullmedic.probe.session import RepositorySession
from pullmedic.probe.tokens import TokenService

AUTH_CACHE_ENTRIES = 10_000


class RegistryClient:
    """Shared across diagnoses; ``transport`` must enforce the address policy itself.

    The default transport is the guarded one from :mod:`pullmedic.probe.netguard`; wrap it
    (to count requests, say) rather than replacing it.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = cfg = config or ClientConfig()
        self.sender = RequestSender(cfg, transport)
        self.transport = self.sender.transport
        shared = Cache(AUTH_CACHE_ENTRIES, enabled=cfg.cache_auth, single_flight=cfg.cache_auth)
        self.pings = Pings(self.sender, shared)
        self.tokens = TokenService(self.sender, shared)
        self.content = ContentStore(cfg.content_cache_bytes)

    async def aclose(self) -> None:
        await self.sender.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def session(
        self,
        host: str,
        repository: str,
        credential: RegistryCredential | None,
        rec: list[Evidence],
    ) -> RepositorySession:
        auth = RegistryAuth(self.pings, self.tokens, host, repository, credential, rec)
        return RepositorySession(self.sender, auth, rec, self.content)
