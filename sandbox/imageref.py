"""Image references for the node emulator, parsed as the kubelet does.

The kubelet calls distribution/reference ``ParseNormalizedNamed`` (via
``parsers.ParseImageName``) and wraps failures as ``couldn't parse image name "<image>":
<reason>``. The emulator has this parser of its own rather than the operator's: a shared
parser would mirror an operator bug into the "kubelet" the tests run against.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE = re.compile(rf"(({_DOMAIN})/({_PATH}))(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
IDENTIFIER = re.compile(r"[a-f0-9]{64}")
GO_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}  # what go-digest can verify


class InvalidReference(ValueError):
    """What the kubelet reports for an unparsable image (then InvalidImageName)."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"couldn't parse image name {json.dumps(image)}: {reason}")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def manifest_ref(self) -> str:
        return self.digest or self.tag or "latest"


def _split_domain(name: str) -> tuple[str, str]:
    """``splitDockerDomain``: only localhost, dotted, ported or uppercase parts are hosts."""
    first, slash, rest = name.partition("/")
    if not slash or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = "docker.io", name
    else:
        domain, remainder = first, rest
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in remainder:
        remainder = "library/" + remainder
    return domain, remainder


def _digest_error(digest: str) -> str | None:
    algorithm, _, encoded = digest.partition(":")
    if algorithm not in HEX_LENGTH:
        return (
            "unsupported digest algorithm"
            if GO_DIGEST.fullmatch(digest)
            else "invalid checksum digest format"
        )
    if len(encoded) != HEX_LENGTH[algorithm]:
        return "invalid checksum digest length"
    if not re.fullmatch(r"[a-f0-9]+", encoded):
        return "invalid checksum digest format"
    return None


def parse(image: str) -> Reference:
    """``ParseNormalizedNamed`` plus the kubelet's default tag ``latest``."""
    if IDENTIFIER.fullmatch(image):
        raise InvalidReference(
            image, f"invalid repository name ({image}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_domain(image)
    remote = remainder.split(":", 1)[0]
    if remote.lower() != remote:
        raise InvalidReference(
            image, f"invalid reference format: repository name ({remote}) must be lowercase"
        )
    full = f"{domain}/{remainder}"
    m = REFERENCE.fullmatch(full)
    if m is None:
        if REFERENCE.fullmatch(full.lower()):
            raise InvalidReference(image, "repository name must be lowercase")
        raise InvalidReference(image, "invalid reference format")
    _, domain, path, tag, digest = m.groups()
    if len(path) > 255:
        raise InvalidReference(image, "repository name must not be more than 255 characters")
    if digest is not None and (problem := _digest_error(digest)):
        raise InvalidReference(image, problem)
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain, path, tag, digest)
