"""Image references, parsed exactly as the kubelet parses them.

The kubelet turns ``spec.containers[*].image`` into a reference with
distribution/reference ``ParseNormalizedNamed`` and then adds the default tag.
When that fails the pod is stuck in ``InvalidImageName`` forever, so the
operator must agree with the kubelet on every corner case: which part is the
registry, when ``library/`` is added, what a valid tag or digest is.  This module
re-implements that grammar (not the Go code) and reports failures with the same
wording the kubelet shows, so messages can be compared and explained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "DOCKER_HUB_REGISTRY",
    "ImageReference",
    "InvalidReference",
    "is_valid_digest",
    "is_valid_tag",
    "parse",
]

DEFAULT_DOMAIN: Final = "docker.io"
LEGACY_DEFAULT_DOMAIN: Final = "index.docker.io"
DOCKER_HUB_REGISTRY: Final = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX: Final = "library/"
DEFAULT_TAG: Final = "latest"
NAME_TOTAL_LENGTH_MAX: Final = 255

# Upstream error texts, kept verbatim so operator messages match kubelet events.
ERR_INVALID_FORMAT: Final = "invalid reference format"
ERR_UPPERCASE: Final = "repository name must be lowercase"
ERR_TOO_LONG: Final = f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
ERR_TAG_FORMAT: Final = "invalid tag format"
ERR_DIGEST_FORMAT: Final = "invalid checksum digest format"
ERR_DIGEST_LENGTH: Final = "invalid checksum digest length"
ERR_DIGEST_UNSUPPORTED: Final = "unsupported digest algorithm"

# --- grammar (distribution/reference regexp.go, rewritten for Python's re) ---
# re.ASCII matters: Go's \w is ASCII-only, Python's is Unicode by default.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN_AND_PORT = rf"{_HOST}(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME}"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"

_REFERENCE_RE: Final = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_NAME_RE: Final = re.compile(rf"(?:({_DOMAIN_AND_PORT})/)?({_REMOTE_NAME})", re.ASCII)
_TAG_RE: Final = re.compile(_TAG, re.ASCII)
_DIGEST_RE: Final = re.compile(_DIGEST, re.ASCII)
_IDENTIFIER_RE: Final = re.compile(r"[a-f0-9]{64}", re.ASCII)

# Algorithms the kubelet's go-digest can verify, with their exact hex length.
# Anything else that is well-formed is "unsupported", as upstream says.
_DIGEST_HEX_LENGTH: Final = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX_RE: Final = re.compile(r"[a-f0-9]+", re.ASCII)
# go-digest's own (stricter) grammar, used to tell "unsupported" from "malformed".
_GO_DIGEST_RE: Final = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+", re.ASCII)

_MAX_SHOWN: Final = 300


def _go_lower(s: str) -> str:
    """Lower-case like Go's strings.ToLower (simple mappings), not Python's full mapping."""
    return s.replace("\u0130", "i").lower()


def _shown(value: str) -> str:
    """Quote a user value for a message, bounded in size, control characters escaped."""
    if len(value) > _MAX_SHOWN:
        value = value[:_MAX_SHOWN] + "..."
    return json.dumps(value, ensure_ascii=False)


def _bounded(value: str) -> str:
    """Keep an echoed fragment short and printable inside a reason (no quotes)."""
    return _shown(value)[1:-1]


class InvalidReference(ValueError):
    """An image string the kubelet would reject with InvalidImageName.

    ``str()`` reads like the kubelet's own text so it can sit next to the event.
    """

    def __init__(self, image: str, reason: str) -> None:
        self.image = image
        self.reason = reason
        super().__init__(f"couldn't parse image name {_shown(image)}: {reason}")


def _digest_problem(digest: str) -> str | None:
    """Return why a digest would be refused (go-digest rules), or None if it is fine."""
    if not _DIGEST_RE.fullmatch(digest):
        return ERR_DIGEST_FORMAT
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTH.get(algorithm)
    if length is None:
        return ERR_DIGEST_UNSUPPORTED if _GO_DIGEST_RE.fullmatch(digest) else ERR_DIGEST_FORMAT
    if len(encoded) != length:
        return ERR_DIGEST_LENGTH
    if not _LOWER_HEX_RE.fullmatch(encoded):
        return ERR_DIGEST_FORMAT
    return None


def is_valid_tag(tag: str) -> bool:
    """True when ``tag`` is a tag the kubelet accepts (``[\\w][\\w.-]{0,127}``)."""
    return isinstance(tag, str) and _TAG_RE.fullmatch(tag) is not None


def is_valid_digest(digest: str) -> bool:
    """True when ``digest`` is well formed with a supported algorithm and exact length."""
    return isinstance(digest, str) and _digest_problem(digest) is None


@dataclass(frozen=True)
class ImageReference:
    """A normalised image reference: what the kubelet actually asks the runtime to pull."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """Repository name with domain, e.g. ``docker.io/library/nginx`` (the keyring key)."""
        return f"{self.domain}/{self.path}"

    @property
    def is_docker_hub(self) -> bool:
        """True for Docker Hub, whose registry host differs from its reference domain."""
        return self.domain == DEFAULT_DOMAIN

    @property
    def registry_host(self) -> str:
        """The ``host[:port]`` to contact; Docker Hub is served by registry-1.docker.io."""
        return DOCKER_HUB_REGISTRY if self.is_docker_hub else self.domain

    @property
    def manifest_ref(self) -> str:
        """What goes in ``/v2/<path>/manifests/<ref>``: a digest wins over a tag."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else DEFAULT_TAG

    def with_tag(self, tag: str) -> ImageReference:
        """Same repository at another tag; the digest is dropped so the tag is what resolves."""
        if not is_valid_tag(tag):
            raise InvalidReference(f"{self.name}:{tag}", ERR_TAG_FORMAT)
        return ImageReference(self.domain, self.path, tag, None)

    def with_digest(self, digest: str) -> ImageReference:
        """Same repository pinned to ``digest`` (the tag is kept, as docker does)."""
        problem = _digest_problem(digest)
        if problem is not None:
            raise InvalidReference(f"{self.name}@{digest}", problem)
        return ImageReference(self.domain, self.path, self.tag, digest)

    def _suffix(self) -> str:
        out = ""
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        """Canonical form, e.g. ``docker.io/library/nginx:latest``."""
        return self.name + self._suffix()

    def familiar(self) -> str:
        """Short form as docker prints it: ``nginx:latest``, ``bitnami/redis:7``."""
        if self.domain != DEFAULT_DOMAIN:
            return str(self)
        path = self.path
        if path.startswith(OFFICIAL_REPO_PREFIX):
            rest = path[len(OFFICIAL_REPO_PREFIX) :]
            if "/" not in rest:
                path = rest
        return path + self._suffix()


def _split_docker_domain(name: str) -> tuple[str, str]:
    """Split off the registry the way docker does: only some first parts are hosts."""
    maybe_domain, slash, maybe_remote = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + name
    if maybe_domain == "localhost":
        domain, remote = maybe_domain, maybe_remote
    elif maybe_domain == LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, maybe_remote
    elif "." in maybe_domain or ":" in maybe_domain:
        domain, remote = maybe_domain, maybe_remote
    elif _go_lower(maybe_domain) != maybe_domain:
        # Repository paths are lowercase, so an uppercase first part must be a host.
        domain, remote = maybe_domain, maybe_remote
    else:
        domain, remote = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_REPO_PREFIX + remote
    return domain, remote


def _parse_canonical(image: str, s: str) -> ImageReference:
    """distribution/reference ``Parse`` applied to the already-prefixed string ``s``."""
    match = _REFERENCE_RE.fullmatch(s)
    if match is None:
        lowered = _go_lower(s)
        if lowered != s and _REFERENCE_RE.fullmatch(lowered) is not None:
            raise InvalidReference(image, ERR_UPPERCASE)
        raise InvalidReference(image, ERR_INVALID_FORMAT)
    name, tag, digest = match.group(1), match.group(2), match.group(3)
    name_match = _NAME_RE.fullmatch(name)
    if name_match is None or name_match.group(1) is None:  # pragma: no cover - prefixed above
        raise InvalidReference(image, ERR_INVALID_FORMAT)
    domain, path = name_match.group(1), name_match.group(2)
    if len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(image, ERR_TOO_LONG)
    if digest is not None:
        problem = _digest_problem(digest)
        if problem is not None:
            raise InvalidReference(image, problem)
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest)


def parse(image: str) -> ImageReference:
    """Parse an image string like the kubelet and add ``latest`` when there is no tag or digest.

    Raises InvalidReference (never anything else) with the upstream reason text.
    """
    if not isinstance(image, str):
        raise InvalidReference(repr(image), "image must be a string")
    if _IDENTIFIER_RE.fullmatch(image):
        raise InvalidReference(
            image,
            f"invalid repository name ({image}), cannot specify 64-byte hexadecimal strings",
        )
    domain, remainder = _split_docker_domain(image)
    remote = remainder.partition(":")[0]
    if _go_lower(remote) != remote:
        raise InvalidReference(
            image, f"{ERR_INVALID_FORMAT}: repository name ({_bounded(remote)}) must be lowercase"
        )
    ref = _parse_canonical(image, f"{domain}/{remainder}")
    if ref.tag is None and ref.digest is None:
        ref = ImageReference(ref.domain, ref.path, DEFAULT_TAG, None)
    return ref
