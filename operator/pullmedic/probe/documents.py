"""OCI and Docker manifest documents: media types and what the prober reads from them.

Pure functions over parsed JSON; every input is someone else's document, so nothing
here trusts a field's type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pullmedic.core.platforms import is_attestation

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
# Without the index types distribution answers MANIFEST_UNKNOWN for multi-arch tags.
MANIFEST_ACCEPT = ", ".join(
    (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
)

Blob = tuple[str, str, int | None]  # (what, digest, declared size)


def is_index(media_type: str | None, doc: object = None) -> bool:
    """An index (manifest list), by media type or, failing that, by shape."""
    if media_type in INDEX_TYPES:
        return True
    return isinstance(doc, dict) and isinstance(doc.get("manifests"), list)


def manifest_platforms(doc: object) -> list[tuple[Mapping[str, object], str]]:
    """Runnable (platform, digest) entries of an index, attestations skipped."""
    out: list[tuple[Mapping[str, object], str]] = []
    if not isinstance(doc, dict):
        return out
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        return out
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        plat = entry.get("platform")
        annotations = entry.get("annotations")
        ann = (
            {k: v for k, v in annotations.items() if isinstance(v, str)}
            if isinstance(annotations, dict)
            else None
        )
        plat_map = plat if isinstance(plat, dict) else None
        if is_attestation(plat_map, ann):
            continue
        digest = entry.get("digest")
        if plat_map is None or not isinstance(digest, str):
            continue
        out.append((plat_map, digest))
    return out


def _descriptor(entry: object) -> tuple[str, int | None] | None:
    """(digest, declared size) of a content descriptor, or None if it names no digest."""
    if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
        return None
    size = entry.get("size")
    return entry["digest"], size if isinstance(size, int) else None


def config_digest(doc: object) -> str | None:
    """The config blob digest of a single-platform manifest."""
    found = _descriptor(doc.get("config")) if isinstance(doc, dict) else None
    return found[0] if found else None


def blobs_of(doc: object) -> list[Blob] | None:
    """(what, digest, declared size) of the config and each layer of an image manifest."""
    if not isinstance(doc, dict):
        return None
    out: list[Blob] = []
    cfg = _descriptor(doc.get("config"))
    if cfg is not None:
        out.append(("config blob", *cfg))
    layers = doc.get("layers")
    if isinstance(layers, list):
        for i, layer in enumerate(layers):
            found = _descriptor(layer)
            if found is not None:
                out.append((f"layer {i + 1}", *found))
    return out or None


_HEX_LENGTH = {"sha256": 64, "sha512": 128}


def is_digest(ref: str) -> bool:
    """Whether a manifest reference is a digest this module can verify (not a tag)."""
    algo, _, hexpart = ref.partition(":")
    return len(hexpart) == _HEX_LENGTH.get(algo) and all(c in "0123456789abcdef" for c in hexpart)


def digest_matches(body: bytes, digest: str) -> bool:
    """What containerd checks on every manifest it fetches; unknown algorithms pass."""
    algo, _, want = digest.partition(":")
    if algo not in ("sha256", "sha512"):
        return True
    return hashlib.new(algo, body).hexdigest() == want
