"""Whether an image can be pulled whole: what the kubelet checks after the manifest.

The manifest and the platform's child manifest must match their digests, and the config
and every layer blob must be served (HEAD: no bytes are read).
"""

from __future__ import annotations

from dataclasses import dataclass

from pullmedic.core.diagnosis import Evidence
from pullmedic.core.platforms import Platform, best_match
from pullmedic.probe.cache import Cache, CacheKey
from pullmedic.probe.documents import Blob, blobs_of, digest_matches, is_index, manifest_platforms
from pullmedic.probe.platform_check import Found
from pullmedic.probe.sender import HttpResult
from pullmedic.probe.session import RepositorySession

# (the missing or inconsistent piece, or None; whether everything was checked)
IntegrityVerdict = tuple[str | None, bool]


@dataclass(frozen=True)
class IntegrityKey(CacheKey[IntegrityVerdict]):
    host: str
    repository: str
    digest: str
    platform: str


class IntegrityCheck:
    """Verifies an image's pieces; cached by digest for this credential's own answer, so a
    storm of pods costs nothing extra."""

    def __init__(self, cache: Cache, ok_ttl: float, failure_ttl: float, max_blobs: int) -> None:
        self.cache = cache
        self.ok_ttl = ok_ttl
        self.failure_ttl = failure_ttl
        self.max_blobs = max_blobs

    async def __call__(self, image: Found) -> IntegrityVerdict:
        digest = image.digest
        if not digest:
            return await self._verify(image)
        note = f"integrity cached for {digest[:19]}"
        return await self.cache.load(
            IntegrityKey(*image.key_parts(digest)),
            lambda: self._verify(image),
            self._ttl,
            on_hit=lambda _: image.sess.rec.append(Evidence("blob", note=note)),
            share=False,  # a probe is single-flighted already; this runs inside one
        )

    def _ttl(self, verdict: IntegrityVerdict) -> float:
        """Only a complete check is kept; a problem found is kept as briefly as a failure."""
        if not verdict[1]:
            return 0.0
        return self.ok_ttl if verdict[0] is None else self.failure_ttl

    async def _verify(self, image: Found) -> IntegrityVerdict:
        sess, digest, platform, fetched = image.sess, image.digest, image.platform, image.fetched
        key = digest or image.ref.manifest_ref
        got = fetched.get(key) or await sess.get_manifest(key)
        if got.status == 404 and digest:
            # The tag answered with this digest, the digest is gone: a dangling tag (a
            # stale cache, or a registry that deletes manifests but not their tags).
            return f"the manifest {digest} its tag points at is missing (404)", True
        if got.status != 200:
            return None, False
        if digest and not digest_matches(got.body, digest):
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
            if not digest_matches(child.body, child_digest):
                return f"the {platform} manifest's content does not match {child_digest}", True
            doc = child.json()
        blobs = blobs_of(doc)
        if blobs is None:
            return "the manifest lists no config or layers", True
        for blob in blobs[: self.max_blobs]:
            problem = await self._blob_problem(sess, blob, fetched)
            if problem is not None:
                return problem if problem else None, bool(problem)
        return None, len(blobs) <= self.max_blobs

    @staticmethod
    async def _blob_problem(
        sess: RepositorySession, blob: Blob, fetched: dict[str, HttpResult]
    ) -> str | None:
        """None when the blob is served as declared; "" when it cannot be told; else why not."""
        what, digest, size = blob
        if digest in fetched and fetched[digest].status == 200:
            return None  # read whole already (the config, for the platform check)
        r = await sess.head_blob(digest)
        if r.status == 404:
            return f"{what} {digest} is missing (404)"
        if r.status != 200:
            return ""  # 401/5xx on a blob: not evidence of a broken image
        length = r.header("content-length")
        if size is not None and length is not None and length.isdigit() and int(length) != size:
            return f"{what} {digest} is {length} bytes, the manifest says {size}"
        return None
