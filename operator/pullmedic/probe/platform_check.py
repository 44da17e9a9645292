"""Which platforms an image offers, and whether the node's platform runs one of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from pullmedic.core.diagnosis import Evidence
from pullmedic.core.platforms import Platform, best_match
from pullmedic.core.reference import ImageReference
from pullmedic.probe.cache import Cache, CacheKey
from pullmedic.probe.documents import INDEX_TYPES, config_digest, is_index, manifest_platforms
from pullmedic.probe.sender import HttpResult
from pullmedic.probe.session import RepositorySession

# (platform names offered, whether the wanted one can run: None when it cannot be told)
PlatformVerdict = tuple[tuple[str, ...], bool | None]


@dataclass(frozen=True)
class Found:
    """The image a check looks at: its reference, the session reading it, what its HEAD
    answered, the wanted platform, and what earlier steps already read (by digest or
    reference) for later steps to reuse."""

    ref: ImageReference
    sess: RepositorySession
    digest: str | None
    media_type: str | None
    platform: Platform
    fetched: dict[str, HttpResult] = field(default_factory=dict)

    def key_parts(self, digest: str) -> tuple[str, str, str, str]:
        return (self.ref.registry_host, self.ref.path, digest, str(self.platform))


@dataclass(frozen=True)
class PlatformKey(CacheKey[PlatformVerdict]):
    host: str
    repository: str
    digest: str
    platform: str


class PlatformCheck:
    """Reads the index (or the config of a single-platform manifest) for its platforms.

    Content-addressed, so cached by digest - but only consulted after this credential's
    own HEAD returned that digest.
    """

    def __init__(self, cache: Cache, ttl: float, max_config_bytes: int) -> None:
        self.cache = cache
        self.ttl = ttl
        self.max_config_bytes = max_config_bytes

    async def __call__(self, image: Found) -> PlatformVerdict:
        digest = image.digest
        if not digest:
            return await self._read(image)
        note = f"cached for {digest[:19]}"
        return await self.cache.load(
            PlatformKey(*image.key_parts(digest)),
            lambda: self._read(image),
            lambda verdict: self.ttl if verdict[0] else 0.0,
            on_hit=lambda _: image.sess.rec.append(Evidence("platform", note=note)),
            share=False,  # a probe is single-flighted already; this runs inside one
        )

    async def _read(self, image: Found) -> PlatformVerdict:
        sess, fetched, media_type = image.sess, image.fetched, image.media_type
        ref_for_get = image.digest or image.ref.manifest_ref
        got = fetched[ref_for_get] = await sess.get_manifest(ref_for_get)
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
            blob = fetched[cfg_digest] = await sess.get_blob(cfg_digest, self.max_config_bytes)
            if blob.status != 200:
                return (), None
            cfg = blob.json()
            if isinstance(cfg, dict):
                available = [Platform.from_mapping(cfg)]
        if not available:
            return (), None
        return tuple(str(p) for p in available), best_match(image.platform, available) is not None
