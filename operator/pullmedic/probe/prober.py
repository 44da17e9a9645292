"""The probe engine: diagnose an image pull from the registry's point of view.

Probe economy matters as much as correctness - tools that probe registries on a loop
have rate-limited their own clusters. So: results are cached by (reference, credential
identity, platform) with a short TTL for failures; concurrent diagnoses of the same image
share one in-flight probe (1,000 pods of one Deployment cost one set of requests); the
registry client limits concurrency and rate per host and backs off on 429. HEAD is used
wherever it answers the question; GET only for bodies (index, config, tag list).

Suggested fixes are verified before they are offered: a proposed tag must exist and
carry the wanted platform; a proposed secret must authenticate and grant pull.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import httpx

from pullmedic.core.conclusion import conclude
from pullmedic.core.diagnosis import (
    CREDENTIAL_CAUSES,
    Cause,
    Diagnosis,
    Evidence,
    Fix,
    merge_evidence,
    secret_evidence,
)
from pullmedic.core.keyring import Credential, Keyring, SecretProblem
from pullmedic.core.observation import Observation
from pullmedic.core.platforms import Platform, best_match
from pullmedic.core.policy import TagCorrection, TagStrategy
from pullmedic.core.reference import ImageReference, InvalidReference, parse
from pullmedic.core.tags import ClosestMatch, HighestPatch, SemverRange, Strategy, rank_tags
from pullmedic.probe.registry import (
    INDEX_TYPES,
    ClientConfig,
    HostBackingOff,
    HttpResult,
    ProbeError,
    RegistryClient,
    RegistryCredential,
    RepositorySession,
    SingleFlight,
    config_digest,
    is_index,
    manifest_platforms,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class ProberConfig:
    """Cache and suggestion settings. ``cache``/``single_flight`` off gives the naive
    baseline the benchmark compares against."""

    ok_ttl: float = 300.0
    failure_ttl: float = 30.0
    max_entries: int = 10_000
    cache: bool = True
    single_flight: bool = True
    max_candidates_checked: int = 5
    tag_strategy: Strategy = field(default_factory=HighestPatch)


class TTLCache(Generic[K, V]):
    """Tiny TTL cache; evicts the oldest entries when full (insertion order)."""

    def __init__(self, max_entries: int) -> None:
        self._data: dict[K, tuple[float, V]] = {}
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        item = self._data.get(key)
        if item is None or item[0] <= time.monotonic():
            if item is not None:
                del self._data[key]
            self.misses += 1
            return None
        self.hits += 1
        return item[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._data) >= self._max:
            now = time.monotonic()
            for k in [k for k, (exp, _) in self._data.items() if exp <= now]:
                del self._data[k]
            while len(self._data) >= self._max:
                del self._data[next(iter(self._data))]
        self._data[key] = (time.monotonic() + ttl, value)

    def clear(self) -> None:
        self._data.clear()

    def discard_where(self, pred: Callable[[K, V], bool]) -> int:
        doomed = [k for k, (_, v) in self._data.items() if pred(k, v)]
        for k in doomed:
            del self._data[k]
        return len(doomed)


@dataclass(frozen=True)
class ProbeResult:
    """One probe with one credential: the observation plus the tag list if it was read."""

    observation: Observation
    tags: tuple[str, ...] = ()
    tags_complete: bool = False


def _label(cred: Credential | None) -> str | None:
    if cred is None:
        return None
    return cred.source or (f"secret {cred.secret} key {cred.key}" if cred.secret else cred.key)


def _registry_credential(cred: Credential | None) -> RegistryCredential | None:
    if cred is None:
        return None
    return RegistryCredential(cred.username, cred.password, _label(cred) or cred.key)


def _identity(cred: Credential | None) -> str:
    rc = _registry_credential(cred)
    return rc.identity if rc else "anonymous"


class Prober:
    """Diagnoses image pulls against real registries; share one instance per process.

    ``transport`` is for tests and benchmarks (e.g. a CountingTransport around the
    guarded transport); by default the address-checking transport is used.
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
        self.config = self.client.config
        self.pconfig = prober_config or ProberConfig()
        self._diag_cache: TTLCache[Hashable, Diagnosis] = TTLCache(self.pconfig.max_entries)
        self._probe_cache: TTLCache[Hashable, ProbeResult] = TTLCache(self.pconfig.max_entries)
        self._tags_cache: TTLCache[Hashable, tuple[tuple[str, ...], int]] = TTLCache(
            self.pconfig.max_entries
        )
        self._platform_cache: TTLCache[Hashable, tuple[tuple[str, ...], bool | None]] = TTLCache(
            self.pconfig.max_entries
        )
        self._integrity_cache: TTLCache[Hashable, tuple[str | None, bool]] = TTLCache(
            self.pconfig.max_entries
        )
        self._diag_flight: SingleFlight[Hashable, Diagnosis] = SingleFlight()
        self._probe_flight: SingleFlight[Hashable, ProbeResult] = SingleFlight()
        self._tags_flight: SingleFlight[Hashable, tuple[tuple[str, ...], int]] = SingleFlight()
        self.diagnoses = 0
        self.probes = 0

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Prober:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- caching plumbing ------------------------------------------------------------
    async def _cached(
        self,
        cache: TTLCache[Hashable, V],
        flight: SingleFlight[Hashable, V],
        key: Hashable,
        fn: Callable[[], Awaitable[V]],
        ttl_of: Callable[[V], float],
    ) -> V:
        if self.pconfig.cache:
            hit = cache.get(key)
            if hit is not None:
                return hit

        async def run() -> V:
            value = await fn()
            if self.pconfig.cache:
                cache.put(key, value, ttl_of(value))
            return value

        if self.pconfig.single_flight:
            return await flight.do(key, run)
        return await run()

    def _ttl(self, obs: Observation) -> float:
        if obs.manifest_status == 200 and obs.failure is None:
            return self.pconfig.ok_ttl
        if obs.rate_limited and obs.retry_after:
            return max(self.pconfig.failure_ttl, min(obs.retry_after, self.pconfig.ok_ttl))
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
            name = str(ref)
            self._diag_cache.discard_where(
                lambda k, v: k[0] == name and v.cause is Cause.ImageAvailable  # type: ignore[index]
            )
            self._probe_cache.discard_where(
                lambda k, v: (
                    k[1] == name  # type: ignore[index]
                    and v.observation.manifest_status == 200
                )
            )
            # Blobs can vanish under a digest (garbage collection): check them again.
            self._integrity_cache.discard_where(
                lambda k, v: k[1:3] == (ref.registry_host, ref.path) and v[0] is None  # type: ignore[index]
            )
        creds = keyring.lookup(ref)
        cand = candidate_keyrings or {}
        key = (
            str(ref),
            tuple(_identity(c) for c in creds),
            str(platform),
            suggest,
            tuple(
                sorted((n, tuple(_identity(c) for c in kr.lookup(ref))) for n, kr in cand.items())
            ),
            tuple((p.secret, p.reason) for p in secret_problems),
            tag_policy,
        )

        async def run() -> Diagnosis:
            return await self._diagnose(
                ref, creds, platform, suggest, cand, secret_problems, tag_policy
            )

        def ttl(d: Diagnosis) -> float:
            if d.cause is Cause.ImageAvailable:
                return self.pconfig.ok_ttl
            if d.cause is Cause.RateLimited:
                ra = d.details.get("retryAfterSeconds")
                if isinstance(ra, int | float):
                    return max(self.pconfig.failure_ttl, min(float(ra), self.pconfig.ok_ttl))
            return self.pconfig.failure_ttl

        diag = await self._cached(self._diag_cache, self._diag_flight, key, run, ttl)
        return dataclasses.replace(diag, image=image) if diag.image != image else diag

    def clear_cache(self) -> None:
        for c in (
            self._diag_cache,
            self._probe_cache,
            self._tags_cache,
            self._platform_cache,
            self._integrity_cache,
        ):
            c.clear()

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
        attempts: list[Credential | None] = [*creds] or [None]
        for cred in attempts:
            result = await self.probe(ref, cred, platform)
            tried.append((cred, result))
            o = result.observation
            if o.manifest_status == 200 or o.failure is not None or o.rate_limited:
                break  # success, or the registry itself is the problem: no point going on
        chosen_cred, chosen = _choose(tried)
        obs = dataclasses.replace(
            chosen.observation,
            image=str(ref),
            secret_problems=tuple((p.secret, p.reason) for p in secret_problems),
            evidence=merge_evidence([r.observation.evidence for _, r in tried]),
        )
        diag = conclude(obs)
        if not suggest:
            return diag
        tags_ok = tag_policy is None or tag_policy.enabled
        if (
            tags_ok
            and diag.cause in (Cause.TagNotFound, Cause.PlatformMismatch)
            and ref.tag
            and not ref.digest
        ):
            return await self._suggest_tag(diag, ref, chosen_cred, platform, chosen, tag_policy)
        if diag.cause in (*CREDENTIAL_CAUSES, Cause.MalformedSecret) and candidates:
            return await self._suggest_secret(diag, ref, platform, candidates)
        return diag

    async def _suggest_tag(
        self,
        diag: Diagnosis,
        ref: ImageReference,
        cred: Credential | None,
        platform: Platform,
        probe: ProbeResult,
        tag_policy: TagCorrection | None = None,
    ) -> Diagnosis:
        tags = probe.tags
        if not tags:
            tags, _status = await self.tags(ref, cred)
        if not tags or ref.tag is None:
            return diag
        try:
            strategy = _strategy(tag_policy, self.pconfig.tag_strategy)
        except ValueError as exc:
            note = Evidence("suggestion", note=f"tag policy unusable: {exc}")
            return dataclasses.replace(diag, evidence=(*diag.evidence, note))
        ranked = rank_tags(
            ref.tag,
            tags,
            strategy,
            allow_latest=bool(tag_policy and tag_policy.allow_latest),
            allow_major_change=bool(tag_policy and tag_policy.allow_major_change),
            limit=self.pconfig.max_candidates_checked,
        )
        checked: list[Evidence] = []
        for cand in ranked:
            alt = ref.with_tag(cand.tag)
            result = await self.probe(alt, cred, platform)
            o = result.observation
            ok = o.manifest_status == 200 and o.platform_matched is True
            checked.append(
                Evidence(
                    "suggestion",
                    note=f"candidate {cand.tag}: "
                    + ("verified" if ok else _why_not(o, str(platform))),
                )
            )
            if ok:
                fix = Fix(
                    kind="tag",
                    image=str(alt),
                    digest=o.digest,
                    reason=f"{cand.reason}; verified to exist for {platform}",
                )
                return dataclasses.replace(diag, fix=fix, evidence=diag.evidence + tuple(checked))
        return dataclasses.replace(diag, evidence=diag.evidence + tuple(checked))

    async def _suggest_secret(
        self,
        diag: Diagnosis,
        ref: ImageReference,
        platform: Platform,
        candidates: Mapping[str, Keyring],
    ) -> Diagnosis:
        notes: list[Evidence] = []
        not_found: tuple[str, Diagnosis] | None = None
        for name, keyring in candidates.items():
            for cred in keyring.lookup(ref):
                result = await self.probe(ref, cred, platform)
                o = result.observation
                if o.manifest_status == 200:
                    notes.append(Evidence("suggestion", note=f"secret {name}: grants pull"))
                    fix = Fix(
                        kind="secret",
                        secret=name,
                        reason=f"authenticates to {ref.registry_host} and grants pull on "
                        f"{ref.path} (verified)",
                    )
                    if diag.cause is Cause.NotFoundOrPrivate:
                        return dataclasses.replace(
                            diag,
                            cause=Cause.AuthenticationRequired,
                            confidence="high",
                            summary=f"{ref.registry_host}/{ref.path} is private and the pod "
                            f"has no working credentials for it; pull secret {name} grants "
                            "access - add it to the pod's imagePullSecrets or ServiceAccount.",
                            fix=fix,
                            evidence=diag.evidence + tuple(notes),
                        )
                    return dataclasses.replace(diag, fix=fix, evidence=diag.evidence + tuple(notes))
                c = conclude(o)
                notes.append(Evidence("suggestion", note=f"secret {name}: {c.cause}"))
                if (
                    not_found is None
                    and c.cause
                    in (Cause.RepositoryNotFound, Cause.TagNotFound, Cause.DigestNotFound)
                    and c.confidence == "high"
                ):
                    not_found = (name, c)
        if not_found is not None and diag.cause is Cause.NotFoundOrPrivate:
            name, c = not_found
            return dataclasses.replace(
                c,
                image=diag.image,
                summary=c.summary.rstrip(".") + f" (confirmed with candidate secret {name}).",
                evidence=merge_evidence([diag.evidence, c.evidence, notes]),
            )
        return dataclasses.replace(diag, evidence=diag.evidence + tuple(notes))

    # ---- probes ----------------------------------------------------------------------
    async def probe(
        self, ref: ImageReference, cred: Credential | None, platform: Platform
    ) -> ProbeResult:
        """One cached, single-flighted probe of ``ref`` with one credential (or none)."""
        key = ("probe", str(ref), _identity(cred), str(platform))

        async def run() -> ProbeResult:
            return await self._probe(ref, cred, platform)

        return await self._cached(
            self._probe_cache, self._probe_flight, key, run, lambda r: self._ttl(r.observation)
        )

    async def tags(
        self, ref: ImageReference, cred: Credential | None
    ) -> tuple[tuple[str, ...], int]:
        """The repository's tags (bounded pages) and the listing status; cached."""
        key = ("tags", ref.registry_host, ref.path, _identity(cred))

        async def run() -> tuple[tuple[str, ...], int]:
            rec: list[Evidence] = []
            sess = self.client.session(ref.registry_host, ref.path, _registry_credential(cred), rec)
            try:
                listing = await sess.list_tags()
            except (ProbeError, HostBackingOff):
                return (), 0
            return listing.tags, listing.status

        return await self._cached(
            self._tags_cache,
            self._tags_flight,
            key,
            run,
            lambda r: self.pconfig.ok_ttl if r[1] == 200 else self.pconfig.failure_ttl,
        )

    async def _probe(
        self, ref: ImageReference, cred: Credential | None, platform: Platform
    ) -> ProbeResult:
        self.probes += 1
        rec: list[Evidence] = []
        rcred = _registry_credential(cred)
        sess = self.client.session(ref.registry_host, ref.path, rcred, rec)
        f: dict[str, object] = {
            "image": str(ref),
            "registry_host": ref.registry_host,
            "repository": ref.path,
            "manifest_ref": ref.manifest_ref,
            "is_digest": ref.digest is not None,
            "credential": rcred.label if rcred else None,
            "wanted_platform": str(platform),
            "observed_at": time.time(),
        }
        tags: tuple[str, ...] = ()
        complete = False
        try:
            tags, complete = await self._probe_steps(ref, sess, platform, f)
        except ProbeError as exc:
            f.update(failure=exc.kind, failure_step=exc.step, failure_detail=exc.detail)
        except HostBackingOff as exc:
            f.update(rate_limited=True, retry_after=round(exc.remaining, 1))
        obs = Observation(evidence=tuple(rec), **f)  # type: ignore[arg-type]
        return ProbeResult(obs, tags, complete)

    async def _probe_steps(
        self,
        ref: ImageReference,
        sess: RepositorySession,
        platform: Platform,
        f: dict[str, object],
    ) -> tuple[tuple[str, ...], bool]:
        auth = await sess.prepare()
        f["auth_scheme"] = auth.scheme
        f["ping_status"] = auth.ping.status
        if auth.ping.status == 429:
            _rate_limited(f, auth.ping.retry_after, auth.ping.headers, "ping")
            return (), False
        if auth.ping.status >= 500:
            f.update(
                failure="5xx",
                failure_step="ping",
                failure_detail=f"/v2/ answered {auth.ping.status}",
            )
            return (), False
        if auth.token is not None:
            f["token_status"] = auth.token.status
            f["token_realm"] = auth.token.realm
            f["token_grants_pull"] = auth.token.grants_pull
            if auth.token.status == 429:
                _rate_limited(f, auth.token.retry_after, {}, "token")
                return (), False
            if auth.token.status != 200:
                return (), False
        if auth.ping.status not in (200, 401):
            return (), False

        head = await sess.head_manifest(ref.manifest_ref)
        f["manifest_status"] = head.status
        if head.status == 429:
            _rate_limited(f, head.retry_after, head.headers, "manifest")
            return (), False
        if head.status == 403:
            # HEAD has no body; the error code (DENIED...) needs a GET.
            got = await sess.get_manifest(ref.manifest_ref)
            f["manifest_codes"] = got.error_codes
            return (), False
        if head.status == 401:
            return (), False
        if head.status == 404:
            listing = await sess.list_tags()
            f["tags_status"] = listing.status
            f["tags_codes"] = listing.error_codes
            if listing.status == 429:
                _rate_limited(f, listing.retry_after, {}, "tags")
            return listing.tags, listing.complete
        if head.status != 200:
            return (), False

        f["digest"] = head.digest
        f["media_type"] = head.media_type
        fetched: dict[str, HttpResult] = {}  # what the platform check already read
        plats, matched = await self._platforms(
            ref, sess, head.digest, head.media_type, platform, fetched
        )
        f["available_platforms"] = plats
        f["platform_matched"] = matched
        if matched is not False:  # unknown too: a config that cannot be read may be gone
            problem, checked = await self._integrity(ref, sess, head.digest, platform, fetched)
            f["integrity_problem"] = problem
            f["integrity_checked"] = checked
        return (), False

    async def _integrity(
        self,
        ref: ImageReference,
        sess: RepositorySession,
        digest: str | None,
        platform: Platform,
        fetched: dict[str, HttpResult] | None = None,
    ) -> tuple[str | None, bool]:
        """What the kubelet checks after the manifest: (the missing or inconsistent piece,
        whether everything was checked).

        The manifest and the platform's child manifest must match their digests, and the
        config and every layer blob must be served (HEAD: no bytes are read). Cached by
        digest for this credential's own answer, so a storm of pods costs nothing extra.
        """
        key = ("integrity", ref.registry_host, ref.path, digest, str(platform))
        if digest and self.pconfig.cache:
            hit = self._integrity_cache.get(key)
            if hit is not None:
                sess.rec.append(Evidence("blob", note=f"integrity cached for {digest[:19]}"))
                return hit
        result = await self._verify(ref, sess, digest, platform, fetched or {})
        if digest and self.pconfig.cache and result[1]:
            ttl = self.pconfig.ok_ttl if result[0] is None else self.pconfig.failure_ttl
            self._integrity_cache.put(key, result, ttl)
        return result

    async def _verify(
        self,
        ref: ImageReference,
        sess: RepositorySession,
        digest: str | None,
        platform: Platform,
        fetched: dict[str, HttpResult],
    ) -> tuple[str | None, bool]:
        key = digest or ref.manifest_ref
        got = fetched.get(key) or await sess.get_manifest(key)
        if got.status != 200:
            return None, False
        if digest and not _digest_matches(got.body, digest):
            return f"the manifest's content does not match its digest {digest}", True
        doc = got.json()
        if not isinstance(doc, dict):
            return "the manifest is not a JSON document", True
        if is_index(got.media_type, doc):
            entries = manifest_platforms(doc)
            idx = best_match(platform, [Platform.from_mapping(p) for p, _ in entries])
            if idx is None:
                return None, False
            child_digest = entries[idx][1]
            child = await sess.get_manifest(child_digest)
            if child.status == 404:
                return f"the {platform} manifest {child_digest} is missing (404)", True
            if child.status != 200:
                return None, False
            if not _digest_matches(child.body, child_digest):
                return f"the {platform} manifest's content does not match {child_digest}", True
            doc = child.json()
        blobs = _blobs_of(doc)
        if blobs is None:
            return "the manifest lists no config or layers", True
        limit = self.config.max_verified_blobs
        for what, blob_digest, size in blobs[:limit]:
            if blob_digest in fetched and fetched[blob_digest].status == 200:
                continue  # read whole already (the config, for the platform check)
            r = await sess.head_blob(blob_digest)
            if r.status == 404:
                return f"{what} {blob_digest} is missing (404)", True
            if r.status != 200:
                return None, False  # 401/5xx on a blob: not evidence of a broken image
            length = r.header("content-length")
            if (
                size is not None
                and length is not None
                and length.isdigit()
                and (int(length) != size)
            ):
                return f"{what} {blob_digest} is {length} bytes, the manifest says {size}", True
        return None, len(blobs) <= limit

    async def _platforms(
        self,
        ref: ImageReference,
        sess: RepositorySession,
        digest: str | None,
        media_type: str | None,
        platform: Platform,
        fetched: dict[str, HttpResult] | None = None,
    ) -> tuple[tuple[str, ...], bool | None]:
        """Platforms the image offers and whether ``platform`` can run one of them.

        Content-addressed, so cached by digest - but only consulted after this
        credential's own HEAD returned that digest.
        """
        key = ("platforms", ref.registry_host, ref.path, digest, str(platform))
        if digest and self.pconfig.cache:
            hit = self._platform_cache.get(key)
            if hit is not None:
                sess.rec.append(Evidence("platform", note=f"cached for {digest[:19]}"))
                return hit
        ref_for_get = digest or ref.manifest_ref
        got = await sess.get_manifest(ref_for_get)
        if fetched is not None:
            fetched[ref_for_get] = got
        if got.status != 200:
            return (), None
        doc = got.json()
        available: list[Platform] = []
        if is_index(media_type or got.media_type, doc) or (got.media_type in INDEX_TYPES):
            available = [Platform.from_mapping(p) for p, _d in manifest_platforms(doc)]
            if not available and isinstance(doc, dict):
                return (), False  # an index with no runnable entry: nothing for any node
        else:
            cfg_digest = config_digest(doc)
            if cfg_digest is None:
                return (), None
            blob = await sess.get_blob(cfg_digest, self.config.max_config_bytes)
            if fetched is not None:
                fetched[cfg_digest] = blob
            if blob.status != 200:
                return (), None
            cfg = blob.json()
            if isinstance(cfg, dict):
                available = [Platform.from_mapping(cfg)]
        if not available:
            return (), None
        names = tuple(str(p) for p in available)
        matched = best_match(platform, available) is not None
        result = (names, matched)
        if digest and self.pconfig.cache:
            self._platform_cache.put(key, result, self.pconfig.ok_ttl)
        return result


def _digest_matches(body: bytes, digest: str) -> bool:
    """What containerd checks on every manifest it fetches; unknown algorithms pass."""
    algo, _, want = digest.partition(":")
    if algo not in ("sha256", "sha512"):
        return True
    return hashlib.new(algo, body).hexdigest() == want


def _blobs_of(doc: object) -> list[tuple[str, str, int | None]] | None:
    """(what, digest, declared size) of the config and each layer of an image manifest."""
    if not isinstance(doc, dict):
        return None
    out: list[tuple[str, str, int | None]] = []
    cfg = doc.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("digest"), str):
        size = cfg.get("size")
        out.append(("config blob", cfg["digest"], size if isinstance(size, int) else None))
    layers = doc.get("layers")
    if isinstance(layers, list):
        for i, layer in enumerate(layers):
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                size = layer.get("size")
                out.append(
                    (f"layer {i + 1}", layer["digest"], size if isinstance(size, int) else None)
                )
    return out or None


def _strategy(tag_policy: TagCorrection | None, default: Strategy) -> Strategy:
    """The tag-ranking strategy a policy asks for (ValueError on a bad range)."""
    if tag_policy is None:
        return default
    if tag_policy.strategy is TagStrategy.SEMVER_RANGE and tag_policy.range:
        return SemverRange(tag_policy.range)
    if tag_policy.strategy is TagStrategy.CLOSEST_MATCH:
        return ClosestMatch()
    return HighestPatch()


def _rate_limited(
    f: dict[str, object], retry_after: float | None, headers: Mapping[str, str], step: str
) -> None:
    f.update(rate_limited=True, retry_after=retry_after, failure_step=step)
    if headers.get("ratelimit-limit"):
        f["ratelimit_limit"] = headers["ratelimit-limit"]
    if headers.get("ratelimit-remaining"):
        f["ratelimit_remaining"] = headers["ratelimit-remaining"]


def _choose(
    tried: Sequence[tuple[Credential | None, ProbeResult]],
) -> tuple[Credential | None, ProbeResult]:
    """Which credential's outcome explains the pull: success first, then an authorised
    404 (the most informative failure), else the first credential's (most specific)."""
    for cred, r in tried:
        if r.observation.manifest_status == 200:
            return cred, r
    for cred, r in tried:
        if r.observation.manifest_status == 404 and r.observation.authorised:
            return cred, r
    for cred, r in tried:
        if r.observation.failure is not None or r.observation.rate_limited:
            return cred, r
    return tried[0]


def _why_not(o: Observation, platform: str) -> str:
    if o.manifest_status == 200 and o.platform_matched is False:
        return f"no {platform} variant"
    if o.manifest_status == 200:
        return "platform could not be checked"
    if o.failure:
        return f"probe failed ({o.failure})"
    if o.rate_limited:
        return "rate limited"
    return f"manifest answered {o.manifest_status}"
