"""Requests for one repository on one host with one credential (or none)."""

from __future__ import annotations

from pullmedic.core.diagnosis import Evidence
from pullmedic.probe.auth import AuthState, RegistryAuth
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.credentials import RegistryCredential
from pullmedic.probe.documents import MANIFEST_ACCEPT
from pullmedic.probe.sender import HttpResult, RegistryRequest, RequestSender
from pullmedic.probe.urls import origin


class RepositorySession:
    """Manifest, blob and tag requests, each through the session's auth flow.

    Evidence of every request lands in ``rec``, the probe's record.
    """

    def __init__(
        self,
        sender: RequestSender,
        auth: RegistryAuth,
        rec: list[Evidence],
    ) -> None:
        self.sender = sender
        self.config: ClientConfig = sender.config
        self.auth = auth
        self.host = auth.host
        self.repository = auth.repository
        self.credential: RegistryCredential | None = auth.credential
        self.rec = rec
        self.base = self.config.base_url(self.host)
        self.origin = origin(self.base)

    async def prepare(self) -> AuthState:
        return await self.auth.prepare()

    def url(self, suffix: str) -> str:
        return f"{self.base}/v2/{self.repository}/{suffix}"

    async def request(
        self, kind: str, method: str, url: str, *, accept: str | None, max_bytes: int
    ) -> HttpResult:
        """Send through the auth flow, the way httpx drives ``Auth.auth_flow``."""
        request = RegistryRequest(
            kind,
            method,
            url,
            self.host,
            max_bytes,
            headers={"Accept": accept} if accept else {},
            auth_origin=self.origin,
            credential_label=self.credential.label if self.credential else None,
        )
        flow = self.auth.auth_flow(request)
        try:
            result = await self.sender.send(self.rec, await anext(flow))
            while True:
                try:
                    request = await flow.asend(result)
                except StopAsyncIteration:
                    return result
                result = await self.sender.send(self.rec, request)
        finally:
            await flow.aclose()

    async def head_manifest(self, ref: str) -> HttpResult:
        return await self.request(
            "manifest", "HEAD", self.url(f"manifests/{ref}"), accept=MANIFEST_ACCEPT, max_bytes=0
        )

    async def get_manifest(self, ref: str) -> HttpResult:
        return await self.request(
            "manifest",
            "GET",
            self.url(f"manifests/{ref}"),
            accept=MANIFEST_ACCEPT,
            max_bytes=self.config.max_manifest_bytes,
        )

    async def get_blob(self, digest: str, max_bytes: int) -> HttpResult:
        return await self.request(
            "blob", "GET", self.url(f"blobs/{digest}"), accept=None, max_bytes=max_bytes
        )

    async def head_blob(self, digest: str) -> HttpResult:
        """Whether a blob can be served (the kubelet fetches every one), without its bytes."""
        return await self.request(
            "blob", "HEAD", self.url(f"blobs/{digest}"), accept=None, max_bytes=0
        )
