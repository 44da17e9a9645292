"""One probe of one image reference with one credential: the steps, in the kubelet's order.

Ping and authenticate, HEAD the manifest (free: it answers whether the reference exists
and its digest), then only what the answer calls for: the error body of a 403, the tag
list after a 404, the platforms and the image's pieces after a 200. A manifest GET
withheld for the nodes' quota leaves what it would have answered unknown, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pullmedic.core.diagnosis import Evidence
from pullmedic.core.keyring import Credential
from pullmedic.core.observation import Observation
from pullmedic.core.platforms import Platform
from pullmedic.core.reference import ImageReference
from pullmedic.probe.client import RegistryClient
from pullmedic.probe.credential_order import registry_credential
from pullmedic.probe.errors import HostBackingOff, ProbeError
from pullmedic.probe.integrity import IntegrityCheck
from pullmedic.probe.platform_check import Found, PlatformCheck
from pullmedic.probe.quota import QuotaReserved, Withheld
from pullmedic.probe.session import RepositorySession
from pullmedic.probe.taglist import list_tags


@dataclass(frozen=True)
class ProbeResult:
    """One probe with one credential: the observation plus the tag list if it was read."""

    observation: Observation
    tags: tuple[str, ...] = ()
    tags_complete: bool = False
    quota_withheld: Withheld | None = None  # a manifest GET not sent, if one was not


class Draft:
    """The observation of a probe as its steps fill it in (each change type-checked)."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs


class ImageProbe:
    """Runs the steps of one probe; each answer is written into the observation's fields."""

    def __init__(
        self, client: RegistryClient, platforms: PlatformCheck, integrity: IntegrityCheck
    ) -> None:
        self.client = client
        self.platforms = platforms
        self.integrity = integrity
        self.probes = 0

    async def __call__(
        self, ref: ImageReference, cred: Credential | None, platform: Platform
    ) -> ProbeResult:
        self.probes += 1
        rec: list[Evidence] = []
        rcred = registry_credential(cred)
        sess = self.client.session(ref.registry_host, ref.path, rcred, rec)
        f = Draft(
            Observation(
                image=str(ref),
                registry_host=ref.registry_host,
                repository=ref.path,
                manifest_ref=ref.manifest_ref,
                is_digest=ref.digest is not None,
                credential=rcred.label if rcred else None,
                wanted_platform=str(platform),
                observed_at=time.time(),
            )
        )
        tags: tuple[str, ...] = ()
        complete = False
        withheld: Withheld | None = None
        try:
            tags, complete = await self._steps(ref, sess, platform, f)
        except QuotaReserved as exc:
            withheld = exc.withheld
        except ProbeError as exc:
            f.obs = replace(
                f.obs, failure=exc.kind, failure_step=exc.step, failure_detail=exc.detail
            )
        except HostBackingOff as exc:
            f.obs = replace(f.obs, rate_limited=True, retry_after=round(exc.remaining, 1))
        obs = replace(f.obs, evidence=tuple(rec))
        return ProbeResult(obs, tags, complete, withheld)

    async def _steps(
        self,
        ref: ImageReference,
        sess: RepositorySession,
        platform: Platform,
        f: Draft,
    ) -> tuple[tuple[str, ...], bool]:
        if not await self._authenticate(sess, f):
            return (), False
        head = await sess.head_manifest(ref.manifest_ref)
        f.obs = replace(f.obs, manifest_status=head.status)
        if head.status == 429:
            _rate_limited(f, head.retry_after, head.headers, "manifest")
            return (), False
        if head.status == 403:
            # HEAD has no body; the error code (DENIED...) needs a GET.
            got = await sess.get_manifest(ref.manifest_ref)
            f.obs = replace(f.obs, manifest_codes=got.error_codes)
            return (), False
        if head.status == 404:
            listing = await list_tags(sess)
            f.obs = replace(f.obs, tags_status=listing.status, tags_codes=listing.error_codes)
            if listing.status == 429:
                _rate_limited(f, listing.retry_after, {}, "tags")
            return listing.tags, listing.complete
        if head.status != 200:
            return (), False
        f.obs = replace(f.obs, digest=head.digest, media_type=head.media_type)
        image = Found(ref, sess, head.digest, head.media_type, platform)
        plats, matched = await self.platforms(image)
        f.obs = replace(f.obs, available_platforms=plats, platform_matched=matched)
        if matched is not False:  # unknown too: a config that cannot be read may be gone
            problem, checked = await self.integrity(image)
            f.obs = replace(f.obs, integrity_problem=problem, integrity_checked=checked)
        return (), False

    @staticmethod
    async def _authenticate(sess: RepositorySession, f: Draft) -> bool:
        """Ping and token; whether the probe can go on to the manifest."""
        auth = await sess.prepare()
        f.obs = replace(f.obs, auth_scheme=auth.scheme, ping_status=auth.ping.status)
        if auth.ping.status == 429:
            _rate_limited(f, auth.ping.retry_after, auth.ping.headers, "ping")
            return False
        if auth.ping.status >= 500:
            f.obs = replace(
                f.obs,
                failure="5xx",
                failure_step="ping",
                failure_detail=f"/v2/ answered {auth.ping.status}",
            )
            return False
        if auth.token is not None:
            f.obs = replace(
                f.obs,
                token_status=auth.token.status,
                token_realm=auth.token.realm,
                token_grants_pull=auth.token.grants_pull,
            )
            if auth.token.status == 429:
                _rate_limited(f, auth.token.retry_after, {}, "token")
                return False
            if auth.token.status != 200:
                return False
        return auth.ping.status in (200, 401)


def _rate_limited(
    f: Draft, retry_after: float | None, headers: Mapping[str, str], step: str
) -> None:
    f.obs = replace(f.obs, rate_limited=True, retry_after=retry_after, failure_step=step)
    if headers.get("ratelimit-limit"):
        f.obs = replace(f.obs, ratelimit_limit=headers["ratelimit-limit"])
    if headers.get("ratelimit-remaining"):
        f.obs = replace(f.obs, ratelimit_remaining=headers["ratelimit-remaining"])
