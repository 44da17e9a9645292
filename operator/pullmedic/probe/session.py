"""Requests for one repository on one host with one credential (or none).

Reads by digest come from the process's content store when they can: a digest this
session has not seen answered yet is confirmed with a HEAD (free, and it says whether
this credential may read it here) before the stored body stands in for a GET.
"""

from __future__ import annotations

from pullmedic.core.diagnosis import Evidence
from pullmedic.probe.auth import AuthState, RegistryAuth
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.content import ContentStore
from pullmedic.probe.credentials import RegistryCredential
from pullmedic.probe.documents import MANIFEST_ACCEPT, is_digest
from pullmedic.probe.sender import HttpResult, RegistryRequest, RequestSender
from pullmedic.probe.urls import origin, redact_url


class RepositorySession:
    """Manifest, blob and tag requests, each through the session's auth flow.

    Evidence of every request lands in ``rec``, the probe's record.
    """

    def __init__(
        self,
        sender: RequestSender,
        auth: RegistryAuth,
        rec: list[Evidence],
        content: ContentStore | None = None,
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
        self.content = content or ContentStore(0)
        self._answered: set[tuple[str, str]] = set()  # (kind, digest) answered 200 here

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
        """Whether the manifest exists, and its digest: free, where a GET is a pull."""
        return await self._head("manifest", ref)

    async def get_manifest(self, ref: str) -> HttpResult:
        """The manifest's body; by digest from the content store when it holds it."""
        return await self._get("manifest", ref, self.config.max_manifest_bytes)

    async def head_blob(self, digest: str) -> HttpResult:
        """Whether a blob can be served (the kubelet fetches every one), without its bytes."""
        return await self._head("blob", digest)

    async def get_blob(self, digest: str, max_bytes: int) -> HttpResult:
        """A (config) blob's body; from the content store when it holds it."""
        return await self._get("blob", digest, max_bytes)

    def _path(self, kind: str, ref: str) -> str:
        return self.url(f"manifests/{ref}" if kind == "manifest" else f"blobs/{ref}")

    def _accept(self, kind: str) -> str | None:
        return MANIFEST_ACCEPT if kind == "manifest" else None

    def _note(self, kind: str, ref: str, result: HttpResult) -> None:
        """Remember which digests answered 200 to this credential here."""
        if result.status == 200:
            self._answered.add((kind, ref))
            if kind == "manifest" and result.digest:
                self._answered.add((kind, result.digest))

    async def _head(self, kind: str, ref: str) -> HttpResult:
        path = self._path(kind, ref)
        result = await self.request(kind, "HEAD", path, accept=self._accept(kind), max_bytes=0)
        self._note(kind, ref, result)
        return result

    async def _get(self, kind: str, ref: str, max_bytes: int) -> HttpResult:
        path = self._path(kind, ref)
        stored = self.content.get(self.host, ref)
        if stored is not None:
            if (kind, ref) not in self._answered:
                head = await self._head(kind, ref)
                if head.status != 200:
                    return head
            note = "not sent: read before by digest"
            self.rec.append(Evidence(kind, "GET", redact_url(path), None, (), note))
            return stored
        result = await self.request(
            kind, "GET", path, accept=self._accept(kind), max_bytes=max_bytes
        )
        self._note(kind, ref, result)
        if is_digest(ref):
            self.content.put(self.host, ref, result)
        return result
