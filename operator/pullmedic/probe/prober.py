"""The probe engine: diagnose an image pull from the registry's point of view.

Probe economy matters as much as correctness - tools that probe registries on a loop
have rate-limited their own clusters. So: results are cached by (reference, credential
identity, platform) with a short TTL for failures; concurrent diagnoses of the same image
share one in-flight probe (1,000 pods of one Deployment cost one set of requests); the
registry client limits concurrency and rate per host and backs off on 429. HEAD is used
wherever it answers the question; GET only for bodies (index, config, tag list), and a
body read by digest is never read again. Manifest GETs count against the nodes' pull
quota on Docker Hub, so they stop while a host's quota is down to the nodes' reserve,
and the diagnosis says what that left unchecked.

Suggested fixes are verified before they are offered: a proposed tag must exist and
carry the wanted platform; a proposed secret must authenticate and grant pull.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from pullmedic.core.conclusion import conclude
from pullmedic.core.diagnosis import (
    CREDENTIAL_CAUSES,
    Cause,
    Diagnosis,
    Evidence,
    merge_evidence,
    secret_evidence,
)
from pullmedic.core.dockerconfig import SecretProblem
from pullmedic.core.keyring import Credential, Keyring
from pullmedic.core.observation import Observation
from pullmedic.core.platforms import Platform
from pullmedic.core.policy import TagCorrection
from pullmedic.core.reference import ImageReference, InvalidReference, parse
from pullmedic.core.tags import HighestPatch, Strategy
from pullmedic.core.tokenmode import PodIdentity
from pullmedic.probe.cache import Cache, CacheKey
from pullmedic.probe.client import RegistryClient
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.credential_order import (
    attempts,
    choose,
    identity,
    registry_credential,
    settles,
)
from pullmedic.probe.errors import HostBackingOff, ProbeError
from pullmedic.probe.integrity import IntegrityCheck, IntegrityKey
from pullmedic.probe.platform_check import PlatformCheck
from pullmedic.probe.probing import ImageProbe, ProbeResult
from pullmedic.probe.quota import Withheld
from pullmedic.probe.suggestions import Suggestions
from pullmedic.probe.taglist import list_tags

TagList = tuple[tuple[str, ...], int]  # (tags, the listing's status; 0 when not sent)


@dataclass(frozen=True)
class ProberConfig:
    """Cache and suggestion settings. ``cache``/``single_flight`` off gives the naive
    baseline the benchmark compares against. ``max_entries`` bounds the one cache, all
    kinds of entry together."""

    ok_ttl: float = 300.0
    failure_ttl: float = 30.0
    max_entries: int = 50_000
    cache: bool = True
    single_flight: bool = True
    max_candidates_checked: int = 5
    tag_strategy: Strategy = field(default_factory=HighestPatch)


@dataclass(frozen=True)
class DiagnosisKey(CacheKey[Diagnosis]):
    image: str
    identities: tuple[str, ...]
    platform: str
    suggest: bool
    candidates: tuple[tuple[str, tuple[str, ...]], ...]
    secret_problems: tuple[tuple[str, str], ...]
    tag_policy: TagCorrection | None


@dataclass(frozen=True)
class ProbeKey(CacheKey[ProbeResult]):
    image: str
    identity: str
    platform: str


@dataclass(frozen=True)
class TagsKey(CacheKey[TagList]):
    host: str
    repository: str
    identity: str


class Prober:
    """Diagnoses image pulls against real registries; share one instance per process.

    ``transport`` is for tests and benchmarks (a counting wrapper around the guarded
    transport, say); by default the address-checking transport is used.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        prober_config: ProberConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        client: RegistryClient | None = None,
    ) -> None:
        self.client = client or RegistryClient(config, transport)
        self.config = cfg = self.client.config
        self.pconfig = p = prober_config or ProberConfig()
        self.cache = Cache(p.max_entries, enabled=p.cache, single_flight=p.single_flight)
        self._probe = ImageProbe(
            self.client,
            PlatformCheck(self.cache, p.ok_ttl, cfg.max_config_bytes),
            IntegrityCheck(self.cache, p.ok_ttl, p.failure_ttl, cfg.max_verified_blobs),
        )
        self._suggest = Suggestions(self.probe, self.tags, p.tag_strategy, p.max_candidates_checked)
        self.diagnoses = 0

    @property
    def probes(self) -> int:
        return self._probe.probes

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Prober:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _ttl(self, result: ProbeResult) -> float:
        obs = result.observation
        if obs.manifest_status == 200 and obs.failure is None and not result.quota_withheld:
            return self.pconfig.ok_ttl
        if obs.rate_limited and obs.retry_after:
            return max(self.pconfig.failure_ttl, min(obs.retry_after, self.pconfig.ok_ttl))
        return self.pconfig.failure_ttl

    def _diagnosis_ttl(self, d: Diagnosis) -> float:
        if d.cause is Cause.ImageAvailable and "quotaReserved" not in d.details:
            return self.pconfig.ok_ttl
        if d.cause is Cause.RateLimited:
            ra = d.details.get("retryAfterSeconds")
            if isinstance(ra, int | float):
                return max(self.pconfig.failure_ttl, min(float(ra), self.pconfig.ok_ttl))
        return self.pconfig.failure_ttl

    # ---- public API ------------------------------------------------------------------
    async def diagnose(
        self,
        image: str,
        keyring: Keyring,
        platform: Platform,
        *,
        suggest: bool = True,
        candidate_keyrings: Mapping[str, Keyring] | None = None,
        secret_problems: Sequence[SecretProblem] = (),
        tag_policy: TagCorrection | None = None,
        distrust_available: bool = False,
        pod: PodIdentity | None = None,
    ) -> Diagnosis:
        """Probe ``image`` with the credentials ``keyring`` yields for it (as the kubelet
        would: each matching credential in turn, anonymous when none matches).

        ``candidate_keyrings`` (secret "ns/name" -> keyring) are tried only to verify a
        secret fix when authentication is the problem. ``secret_problems`` are the pod's
        unusable pull secrets, reported as MalformedSecret when they explain a failure.
        ``tag_policy`` picks the tag strategy for suggestions (default: highest patch,
        same major, never ``latest``); ``enabled=False`` turns tag suggestions off.
        ``distrust_available``: the caller saw a pull of ``image`` fail after a cached
        "pullable" answer (a tag deleted since, say), so cached successes for it are
        dropped and the registry is asked again; cached failures still count.
        ``pod`` (whose pull it is) matters to credential providers in token mode only
        (``plugins.ProviderDiagnoser``); the prober probes with ``keyring`` alone.
        """
        self.diagnoses += 1
        try:
            ref = parse(image)
        except InvalidReference as exc:
            return conclude(
                Observation(
                    image=image,
                    invalid_reason=exc.reason,
                    evidence=(Evidence("reference", note=f"parse failed: {exc.reason}"),),
                )
            )
        blocking = [p for p in secret_problems if p.blocks_pull]
        if blocking:
            names = ", ".join(sorted({p.secret for p in blocking}))
            return Diagnosis(
                image,
                Cause.MalformedSecret,
                "high",
                f"Pull secret {blocking[0].secret} cannot be decoded ({blocking[0].reason}); "
                "fix or remove it - the kubelet fails every pull that uses it.",
                secret_evidence([(p.secret, p.reason) for p in blocking]),
                {"malformedSecrets": names},
            )
        if distrust_available:
            self.cache.discard(_successes_of(ref))
        creds = keyring.lookup(ref)
        cand = candidate_keyrings or {}
        key = DiagnosisKey(
            str(ref),
            tuple(identity(c) for c in creds),
            str(platform),
            suggest,
            tuple(
                sorted((n, tuple(identity(c) for c in kr.lookup(ref))) for n, kr in cand.items())
            ),
            tuple((p.secret, p.reason) for p in secret_problems),
            tag_policy,
        )

        async def run() -> Diagnosis:
            return await self._diagnose(
                ref, creds, platform, suggest, cand, secret_problems, tag_policy
            )

        diag = await self.cache.load(key, run, self._diagnosis_ttl)
        return dataclasses.replace(diag, image=image) if diag.image != image else diag

    def clear_cache(self) -> None:
        self.cache.clear()

    # ---- the diagnosis -------------------------------------------------------------
    async def _diagnose(
        self,
        ref: ImageReference,
        creds: Sequence[Credential],
        platform: Platform,
        suggest: bool,
        candidates: Mapping[str, Keyring],
        secret_problems: Sequence[SecretProblem],
        tag_policy: TagCorrection | None = None,
    ) -> Diagnosis:
        tried: list[tuple[Credential | None, ProbeResult]] = []
        for cred in attempts(creds):
            result = await self.probe(ref, cred, platform)
            tried.append((cred, result))
            if settles(result.observation):
                break  # success, or the registry itself is the problem: no point going on
        chosen_cred, chosen = tried[choose([r.observation for _, r in tried])]
        obs = dataclasses.replace(
            chosen.observation,
            image=str(ref),
            secret_problems=tuple((p.secret, p.reason) for p in secret_problems),
            evidence=merge_evidence([r.observation.evidence for _, r in tried]),
        )
        diag = _with_quota_note(conclude(obs), chosen.quota_withheld)
        if not suggest:
            return diag
        tags_ok = tag_policy is None or tag_policy.enabled
        if (
            tags_ok
            and diag.cause in (Cause.TagNotFound, Cause.PlatformMismatch)
            and ref.tag
            and not ref.digest
        ):
            return await self._suggest.tag(diag, ref, chosen_cred, platform, chosen, tag_policy)
        if diag.cause in (*CREDENTIAL_CAUSES, Cause.MalformedSecret) and candidates:
            return await self._suggest.secret(diag, ref, platform, candidates)
        return diag

    # ---- probes ----------------------------------------------------------------------
    async def probe(
        self, ref: ImageReference, cred: Credential | None, platform: Platform
    ) -> ProbeResult:
        """One cached, single-flighted probe of ``ref`` with one credential (or none)."""

        async def run() -> ProbeResult:
            return await self._probe(ref, cred, platform)

        key = ProbeKey(str(ref), identity(cred), str(platform))
        return await self.cache.load(key, run, self._ttl)

    async def tags(self, ref: ImageReference, cred: Credential | None) -> TagList:
        """The repository's tags (bounded pages) and the listing status; cached."""

        async def run() -> TagList:
            rec: list[Evidence] = []
            sess = self.client.session(ref.registry_host, ref.path, registry_credential(cred), rec)
            try:
                listing = await list_tags(sess)
            except (ProbeError, HostBackingOff):
                return (), 0
            return listing.tags, listing.status

        p = self.pconfig
        key = TagsKey(ref.registry_host, ref.path, identity(cred))
        return await self.cache.load(key, run, lambda r: p.ok_ttl if r[1] == 200 else p.failure_ttl)


def _with_quota_note(diag: Diagnosis, withheld: Withheld | None) -> Diagnosis:
    """Say that a check was skipped to leave the nodes their pulls, rather than go quiet."""
    if withheld is None:
        return diag
    return dataclasses.replace(
        diag,
        summary=f"{diag.summary} Manifest reads from {withheld.host} withheld: {withheld.reason}.",
        details={**diag.details, "quotaReserved": withheld.reason},
    )


def _successes_of(ref: ImageReference) -> Callable[[CacheKey[Any], object], bool]:
    """What a failed pull after a cached "pullable" makes stale: the image's successes.

    Blobs can vanish under a digest (garbage collection), so verified integrity goes too.
    """
    name = str(ref)

    def stale(key: CacheKey[Any], value: object) -> bool:
        if isinstance(key, DiagnosisKey) and isinstance(value, Diagnosis):
            return key.image == name and value.cause is Cause.ImageAvailable
        if isinstance(key, ProbeKey) and isinstance(value, ProbeResult):
            return key.image == name and value.observation.manifest_status == 200
        if isinstance(key, IntegrityKey) and isinstance(value, tuple):
            return (key.host, key.repository) == (ref.registry_host, ref.path) and value[0] is None
        return False

    return stale
