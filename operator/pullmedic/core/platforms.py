"""Platform matching the way containerd does it when the kubelet pulls an image index.

"no match for platform in manifest" is a common pull failure, and whether an
image *would* run on a node depends on containerd's normalisation (``aarch64`` is
``arm64``, plain ``arm`` is ``arm/v7``) and its fallbacks (an arm64 node also runs
``arm/v8``..``arm/v5``, amd64 also runs ``386``).  This module reproduces those
rules (containerd/platforms: Normalize, Parse, Only) for Linux nodes so the
operator can predict the runtime's choice without pulling anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ATTESTATION_REFERENCE_TYPE",
    "Platform",
    "best_match",
    "compatible_platforms",
    "is_attestation",
]

DEFAULT_OS: Final = "linux"
ATTESTATION_REFERENCE_TYPE: Final = "attestation-manifest"
_REFERENCE_TYPE_ANNOTATION: Final = "vnd.docker.reference.type"

_OS_RE: Final = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_PART_RE: Final = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)

_KNOWN_OS: Final = frozenset(
    {
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "hurd",
        "illumos",
        "ios",
        "js",
        "linux",
        "nacl",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "windows",
        "zos",
    }
)
_KNOWN_ARCH: Final = frozenset(
    {
        "386",
        "amd64",
        "amd64p32",
        "arm",
        "armbe",
        "arm64",
        "arm64be",
        "ppc64",
        "ppc64le",
        "loong64",
        "mips",
        "mipsle",
        "mips64",
        "mips64le",
        "mips64p32",
        "mips64p32le",
        "ppc",
        "riscv",
        "riscv64",
        "s390",
        "s390x",
        "sparc",
        "sparc64",
        "wasm",
    }
)


def _normalize_os(os: str) -> str:
    if not os:
        return DEFAULT_OS
    os = os.lower()
    return "darwin" if os == "macos" else os


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's normalizeArch: canonical architecture names and default variants."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
        return "arm", variant
    return arch, variant


def _int_or_none(text: str) -> int | None:
    """Go's strconv.Atoi, for the small variant numbers used here."""
    body = text[1:] if text[:1] in "+-" else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    return int(text)


@dataclass(frozen=True)
class Platform:
    """An OCI platform (os/architecture/variant); compare via ``normalized()``."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, s: str) -> Platform:
        """Parse a specifier such as ``linux/arm64/v8``, ``linux/amd64`` or ``arm64``.

        Follows containerd's Parse, except that a missing OS is ``linux`` (not the
        host's) and a bare OS name is refused (there is no host architecture to assume).
        """
        if not isinstance(s, str) or not s:
            raise ValueError("platform specifier must be a non-empty string")
        if "*" in s:
            raise ValueError(f"{s!r}: wildcards are not supported")
        parts = s.split("/", 3)
        if not _OS_RE.fullmatch(parts[0]):
            raise ValueError(f"{parts[0]!r} is an invalid OS component of {s!r}")
        for part in parts[1:]:
            if not _PART_RE.fullmatch(part):
                raise ValueError(f"{part!r} is an invalid component of {s!r}")
        os = _normalize_os(parts[0])
        if len(parts) == 1:
            if os in _KNOWN_OS:
                raise ValueError(f"{s!r}: an architecture is required")
            arch, variant = _normalize_arch(parts[0], "")
            if arch == "arm" and variant == "v7":
                variant = ""
            if arch not in _KNOWN_ARCH:
                raise ValueError(f"{s!r}: unknown operating system or architecture")
            return cls(DEFAULT_OS, arch, variant)
        if len(parts) == 2:
            arch, variant = _normalize_arch(parts[1], "")
            if arch == "arm" and variant == "v7":
                variant = ""
            return cls(os, arch, variant)
        if len(parts) == 3:
            arch, variant = _normalize_arch(parts[1], parts[2])
            if arch == "arm64" and variant == "":
                variant = "v8"
            return cls(os, arch, variant)
        raise ValueError(f"{s!r}: cannot parse platform specifier")

    @classmethod
    def from_mapping(cls, platform: Mapping[str, object]) -> Platform:
        """Build from an index entry's ``platform`` object (non-string fields become empty)."""

        def text(key: str) -> str:
            value = platform.get(key)
            return value if isinstance(value, str) else ""

        return cls(text("os"), text("architecture"), text("variant"))

    def normalized(self) -> Platform:
        """The canonical form containerd compares: x86_64->amd64, aarch64->arm64, arm->arm/v7..."""
        arch, variant = _normalize_arch(self.architecture, self.variant)
        return Platform(_normalize_os(self.os), arch, variant)

    def __str__(self) -> str:
        """``os/arch[/variant]`` as containerd formats it, e.g. ``linux/arm/v7``."""
        if not self.os:
            return "unknown"
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def _vector(p: Platform) -> list[Platform]:
    """containerd's platformVector: the platform itself, then what it can also run."""
    vector = [p]
    if p.architecture == "amd64":
        level = _int_or_none(p.variant.removeprefix("v"))
        if level is not None and level > 1:
            vector.extend(Platform(p.os, "amd64", f"v{v}") for v in range(level - 1, 0, -1))
        vector.append(Platform(p.os, "386"))
    elif p.architecture == "arm":
        version = _int_or_none(p.variant.removeprefix("v"))
        if version is not None and version > 5:
            vector.extend(Platform(p.os, "arm", f"v{v}") for v in range(version - 1, 4, -1))
    elif p.architecture == "arm64":
        variant = p.variant or "v8"
        major_text, dot, minor_text = variant.partition(".")
        major = _int_or_none(major_text.removeprefix("v"))
        if major is not None and major >= 8:
            minor = 0
            if len(variant) == 4 and dot:
                parsed = _int_or_none(minor_text)
                if parsed is not None:
                    minor = parsed
            if major == 9:
                for m in range(minor - 1, -1, -1):
                    vector.append(Platform(p.os, "arm64", f"v9.{m}" if m else "v9"))
                # v9.x implements v8.(x+5), capped at v8.9.
                minor = min(minor + 5, 9)
                major = 8
                vector.append(Platform(p.os, "arm64", f"v8.{minor}"))
            for m in range(minor - 1, -1, -1):
                vector.append(Platform(p.os, "arm64", f"v{major}.{m}" if m else f"v{major}"))
        if variant.startswith(("v8.", "v9.")):
            variant = "v8"
        vector.extend(_vector(Platform(p.os, "arm", variant)))
    return vector


def compatible_platforms(wanted: Platform) -> list[Platform]:
    """Platforms a node of ``wanted`` can run, most preferred first (containerd ``Only``).

    arm64 also runs arm/v8..v5, arm/v7 runs v6 and v5, amd64 runs 386.
    """
    return _vector(wanted.normalized())


def best_match(wanted: Platform, available: Sequence[Platform]) -> int | None:
    """Index of the entry containerd would pick from an index for ``wanted``, or None.

    Earlier entries win ties, as containerd's stable sort does.
    """
    normalized = [p.normalized() for p in available]
    for candidate in compatible_platforms(wanted):
        target = candidate.normalized()
        for index, platform in enumerate(normalized):
            if platform == target:
                return index
    return None


def is_attestation(
    platform: Mapping[str, object] | None, annotations: Mapping[str, str] | None
) -> bool:
    """True for BuildKit attestation entries, which are not runnable images."""
    if annotations and annotations.get(_REFERENCE_TYPE_ANNOTATION) == ATTESTATION_REFERENCE_TYPE:
        return True
    if platform:
        return platform.get("os") == "unknown" and platform.get("architecture") == "unknown"
    return False
