"""Rank replacement tags for a tag that does not exist. Pure, no I/O.

Suggestions are candidates only: the prober verifies each one (HEAD + platform) before it
becomes a Fix. The rules encode what goes wrong in practice: "fixing" a tag by jumping
to ``latest`` or to the next major version is a downgrade/upgrade in disguise;
signature/attestation tags are not images; ``1.0.0-rc1`` is not a release; ``-alpine``
users want an ``-alpine`` tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

_SIG_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)", re.ASCII)
_VERSION = re.compile(
    r"(?P<v>[vV]?)(?P<nums>\d+(?:\.\d+){0,3})(?:-(?P<rest>[0-9A-Za-z][0-9A-Za-z.\-_]*))?"
    r"(?:\+(?P<build>[0-9A-Za-z.\-]+))?",
    re.ASCII,
)
_PRERELEASE_WORD = re.compile(
    r"(alpha|beta|rc|pre|preview|dev|snapshot|nightly|canary|m\d+|a\d+|b\d+)(?![a-z])",
    re.ASCII | re.IGNORECASE,
)


@dataclass(frozen=True)
class Version:
    """A tag read as ``[v]MAJOR[.MINOR[.PATCH]][-prerelease|-variant][+build]``."""

    tag: str
    numbers: tuple[int, ...]
    prefix_v: bool
    prerelease: str
    variant: str

    @property
    def major(self) -> int:
        return self.numbers[0]

    @property
    def minor(self) -> int:
        return self.numbers[1] if len(self.numbers) > 1 else 0

    @property
    def patch(self) -> int:
        return self.numbers[2] if len(self.numbers) > 2 else 0

    @property
    def family(self) -> str:
        """Variant with its version numbers removed: ``alpine3.19`` -> ``alpine``."""
        return re.sub(r"[\d.]+", "", self.variant).strip("-_")

    def key(self) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
        """Sort key: numbers padded to four parts, releases after their prereleases,
        prereleases in natural order (rc2 < rc10)."""
        nums = self.numbers + (0,) * (4 - len(self.numbers))
        return (nums, 0 if self.prerelease else 1, _natural(self.prerelease))


def _natural(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for chunk in re.findall(r"\d+|\D", text):
        out.append(1_000_000 + int(chunk) if chunk.isdigit() else ord(chunk))
    return tuple(out)


def parse_version(tag: str) -> Version | None:
    """Read a tag as a version, or None (``main``, ``latest``, ``sha-abc``...)."""
    m = _VERSION.fullmatch(tag)
    if m is None:
        return None
    nums = tuple(int(p) for p in m.group("nums").split("."))
    rest = m.group("rest") or ""
    prerelease, variant = "", ""
    if rest:
        if rest[0].isdigit() or _PRERELEASE_WORD.match(rest):
            # "1.0.0-rc1", "1.0.0-0.3.7", "2.0-beta-alpine": the prerelease part first.
            pre, _, var = rest.partition("-")
            if var and not _PRERELEASE_WORD.match(var) and not var[0].isdigit():
                prerelease, variant = pre, var
            else:
                prerelease = rest
        else:
            variant = rest
    return Version(tag, nums, bool(m.group("v")), prerelease, variant)


def is_signature_tag(tag: str) -> bool:
    """cosign/notation artifacts (``sha256-<hex>.sig|.att|.sbom``): never run these."""
    return _SIG_TAG.fullmatch(tag) is not None


def edit_distance(a: str, b: str, limit: int = 3) -> int:
    """Edit distance counting a swap of neighbours as one typo (optimal string
    alignment), cut off at ``limit + 1`` so long tag lists stay cheap."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            d = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                d = min(d, prev2[j - 2] + 1)
            cur.append(d)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------


class Strategy(Protocol):
    """Orders same-major, same-family version candidates for a wanted version."""

    def accepts(self, wanted: Version | None, candidate: Version) -> bool: ...

    def order(self, wanted: Version | None, candidate: Version) -> tuple[object, ...]: ...


@dataclass(frozen=True)
class HighestPatch:
    """Prefer the newest patch of the same MAJOR.MINOR, then the nearest minor."""

    def accepts(self, wanted: Version | None, candidate: Version) -> bool:
        return True

    def order(self, wanted: Version | None, candidate: Version) -> tuple[object, ...]:
        if wanted is None:
            return (0, _neg(candidate.key()))
        same_minor = candidate.minor == wanted.minor
        return (
            0 if same_minor else 1,
            abs(candidate.minor - wanted.minor),
            0 if len(candidate.numbers) == len(wanted.numbers) else 1,
            _neg(candidate.key()),
        )


@dataclass(frozen=True)
class ClosestMatch:
    """Prefer the version numerically closest to the wanted one (either direction)."""

    def accepts(self, wanted: Version | None, candidate: Version) -> bool:
        return True

    def order(self, wanted: Version | None, candidate: Version) -> tuple[object, ...]:
        if wanted is None:
            return (0, _neg(candidate.key()))
        distance = abs(_magnitude(candidate) - _magnitude(wanted))
        return (
            distance,
            0 if len(candidate.numbers) == len(wanted.numbers) else 1,
            _neg(candidate.key()),
        )


@dataclass(frozen=True)
class SemverRange:
    """Highest version satisfying a simple constraint: ``^1.2``, ``~1.2.3``, ``>=1.2 <2``,
    ``1.2.x``, ``=1.2.3``. Prereleases only when the constraint names one."""

    constraint: str
    _bounds: tuple[tuple[str, tuple[int, int, int]], ...] = field(
        init=False, repr=False, compare=False
    )
    _allow_pre: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounds: list[tuple[str, tuple[int, int, int]]] = []
        for raw in re.split(r"[\s,]+", self.constraint.strip()):
            if raw:
                bounds.extend(_parse_comparator(raw))
        if not bounds:
            raise ValueError(f"empty version constraint: {self.constraint!r}")
        object.__setattr__(self, "_bounds", tuple(bounds))
        object.__setattr__(self, "_allow_pre", "-" in self.constraint)

    def accepts(self, wanted: Version | None, candidate: Version) -> bool:
        if candidate.prerelease and not self._allow_pre:
            return False
        nums = _triple(candidate.numbers)
        for op, bound in self._bounds:
            ok = {
                ">=": nums >= bound,
                ">": nums > bound,
                "<=": nums <= bound,
                "<": nums < bound,
                "=": nums == bound,
            }[op]
            if not ok:
                return False
        return True

    def order(self, wanted: Version | None, candidate: Version) -> tuple[object, ...]:
        same_parts = wanted is None or len(candidate.numbers) == len(wanted.numbers)
        return (0 if same_parts else 1, _neg(candidate.key()))


def _magnitude(v: Version) -> int:
    """The version as one number (each part a 6-digit "digit"), for closeness."""
    total = 0
    for part in v.key()[0]:
        total = total * 1_000_000 + min(part, 999_999)
    return total


def _triple(nums: Sequence[int]) -> tuple[int, int, int]:
    padded = (*nums, 0, 0, 0)
    return (padded[0], padded[1], padded[2])


def _neg(key: tuple[tuple[int, ...], int, tuple[int, ...]]) -> tuple[object, ...]:
    """Descending order for a version key."""
    return (tuple(-n for n in key[0]), -key[1], tuple(-n for n in key[2]))


def _parse_comparator(raw: str) -> list[tuple[str, tuple[int, int, int]]]:
    m = re.fullmatch(
        r"(\^|~|>=|<=|>|<|=)?[vV]?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?"
        r"(?:-[0-9A-Za-z.\-]+)?",
        raw,
    )
    if m is None:
        raise ValueError(f"unsupported version constraint: {raw!r}")
    op = m.group(1) or ""
    parts = [p for p in (m.group(2), m.group(3), m.group(4)) if p is not None]
    wild = next((i for i, p in enumerate(parts) if p in ("x", "X", "*")), None)
    if wild is not None:
        parts = parts[:wild]
        if not op:
            op = "~" if parts else ">="
    nums = [int(p) for p in parts]
    given = len(nums)
    low = _triple(nums)
    if op == "^":
        if given == 0:
            return [(">=", (0, 0, 0))]
        if low[0] > 0 or given == 1:
            return [(">=", low), ("<", (low[0] + 1, 0, 0))]
        if low[1] > 0 or given == 2:
            return [(">=", low), ("<", (0, low[1] + 1, 0))]
        return [(">=", low), ("<", (0, 0, low[2] + 1))]
    if op == "~" or (op == "" and given < 3):
        if given <= 1:
            return [(">=", low), ("<", (low[0] + 1, 0, 0))]
        return [(">=", low), ("<", (low[0], low[1] + 1, 0))]
    return [(op or "=", low)]


# --------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A proposed tag and, in plain words, why it was proposed."""

    tag: str
    reason: str


def _typo_limit(tag: str) -> int:
    return 1 if len(tag) <= 4 else 2


def rank_tags(
    wanted: str,
    available: Iterable[str],
    strategy: Strategy | None = None,
    *,
    allow_latest: bool = False,
    allow_major_change: bool = False,
    limit: int = 5,
) -> list[Candidate]:
    """Best replacement tags for ``wanted`` among ``available``, best first.

    Never crosses the wanted major version (unless ``allow_major_change``), never
    proposes ``latest`` unless ``allow_latest``, skips signature/attestation/SBOM tags,
    and skips prereleases unless ``wanted`` is one.
    """
    strat: Strategy = strategy if strategy is not None else HighestPatch()
    want_v = parse_version(wanted)
    want_pre = bool(want_v and want_v.prerelease)
    scored: list[tuple[tuple[object, ...], Candidate]] = []
    for tag in dict.fromkeys(available):
        if tag == wanted or is_signature_tag(tag):
            continue
        if tag == "latest" and not allow_latest:
            continue
        cand_v = parse_version(tag)
        if cand_v is not None and cand_v.prerelease and not want_pre:
            continue
        if (
            want_v is not None
            and cand_v is not None
            and cand_v.major != want_v.major
            and not allow_major_change
        ):
            continue
        if want_v is not None and cand_v is None:
            # A version was wanted; a non-version tag only qualifies as a plain typo fix.
            dist = edit_distance(wanted, tag, _typo_limit(wanted))
            if dist <= _typo_limit(wanted) and tag != "latest":
                scored.append(((3, dist, tag), Candidate(tag, f"{dist} edit(s) from {wanted}")))
            continue
        # Same tag with/without the "v" prefix.
        if tag.lower().lstrip("v") == wanted.lower().lstrip("v") and tag.lower() != wanted.lower():
            scored.append(((0, tag), Candidate(tag, f"same version as {wanted}, other prefix")))
            continue
        if cand_v is None or want_v is None:
            dist = edit_distance(wanted, tag, _typo_limit(wanted))
            if dist <= _typo_limit(wanted):
                scored.append(((3, dist, tag), Candidate(tag, f"{dist} edit(s) from {wanted}")))
            continue
        same_numbers = cand_v.numbers == want_v.numbers
        same_family = cand_v.family == want_v.family
        if same_numbers and not same_family:
            dist = edit_distance(want_v.variant, cand_v.variant, 3)
            if dist <= 2:
                scored.append(
                    ((1, dist, tag), Candidate(tag, f"same version, variant spelled {tag}"))
                )
            continue
        if not same_family or not strat.accepts(want_v, cand_v):
            continue
        if same_numbers:
            # Same numbers and family: another prerelease, build or spelling.
            scored.append(
                ((1, 0, *strat.order(want_v, cand_v)), Candidate(tag, f"same version as {wanted}"))
            )
            continue
        if cand_v.minor == want_v.minor and len(want_v.numbers) > 1:
            why = f"newest patch of {want_v.major}.{want_v.minor}"
        else:
            why = f"same major version {want_v.major}"
        if want_v.family:
            why += f", {want_v.family} variant"
        scored.append(((2, *strat.order(want_v, cand_v)), Candidate(tag, why)))
    scored.sort(key=lambda item: _sortable(item[0]))
    return [c for _, c in scored[:limit]]


def _sortable(key: tuple[object, ...]) -> tuple[str, ...]:
    """Keys mix ints, strings and nested tuples; compare them as fixed-width strings."""
    out: list[str] = []

    def walk(x: object) -> None:
        if isinstance(x, tuple):
            for y in x:
                walk(y)
        elif isinstance(x, int):
            out.append(f"{x + 10**9:012d}")
        else:
            out.append(f"~{x}")

    walk(key)
    return tuple(out)
