"""Replacement-tag ranking: the rules that keep a "fix" from being a silent up/downgrade."""

from __future__ import annotations

import pytest

from pullmedic.core.tags import (
    ClosestMatch,
    HighestPatch,
    SemverRange,
    Strategy,
    edit_distance,
    is_signature_tag,
    parse_version,
    rank_tags,
)

SIG = "sha256-" + "a" * 64


def top(
    wanted: str, available: list[str], strategy: Strategy | None = None, **kw: bool
) -> list[str]:
    return [c.tag for c in rank_tags(wanted, available, strategy, **kw)]


@pytest.mark.parametrize(
    ("wanted", "available", "expected_first"),
    [
        # v prefix toggled beats everything.
        ("1.2.3", ["1.2.4", "v1.2.3"], "v1.2.3"),
        ("v1.2.3", ["1.2.3", "v1.2.4"], "1.2.3"),
        # Highest patch on the same major.minor.
        ("1.25.9", ["1.25.1", "1.25.3", "1.26.0", "1.24.9"], "1.25.3"),
        # Same suffix family.
        ("1.25.9-alpine", ["1.25.3", "1.25.3-alpine", "1.25.4-bookworm"], "1.25.3-alpine"),
        ("1.25.9-alpine3.19", ["1.25.3-alpine3.18", "1.25.3"], "1.25.3-alpine3.18"),
        # Typo in the variant: same numbers, variant one edit away.
        ("1.25.3-alpin", ["1.25.3-alpine", "1.25.2-alpin"], "1.25.3-alpine"),
        # Non-version tags: small edit distance.
        ("mian", ["main", "dev", "latest"], "main"),
        ("stabel", ["stable", "latest"], "stable"),
        # Two-part versions are understood (unlike Flux).
        ("1.3", ["1.2", "1.4", "2.0"], "1.4"),
    ],
)
def test_best_candidate(wanted: str, available: list[str], expected_first: str) -> None:
    got = top(wanted, available)
    assert got and got[0] == expected_first, got


@pytest.mark.parametrize(
    ("wanted", "available", "never"),
    [
        ("1.2.3", ["2.0.0", "0.9.0", "latest"], {"2.0.0", "0.9.0", "latest"}),  # no major jump
        ("1.2.3", ["latest", "1.2.4"], {"latest"}),
        ("1.2.3", [f"{SIG}.sig", f"{SIG}.att", f"{SIG}.sbom", "1.2.4"], {f"{SIG}.sig"}),
        ("1.2.3", ["1.2.4-rc1", "1.2.4-beta.2", "1.2.2"], {"1.2.4-rc1", "1.2.4-beta.2"}),
        ("1.25.3-alpine", ["1.25.4-bookworm", "1.25.4"], {"1.25.4-bookworm", "1.25.4"}),
        ("mian", ["totally-different"], {"totally-different"}),
        ("1.2.3", ["1.2.3"], {"1.2.3"}),  # the wanted tag itself is not a suggestion
    ],
)
def test_never_proposed(wanted: str, available: list[str], never: set[str]) -> None:
    assert not set(top(wanted, available)) & never


def test_latest_only_when_asked() -> None:
    assert top("latets", ["latest"]) == []
    assert top("latets", ["latest"], allow_latest=True) == ["latest"]


def test_prerelease_allowed_when_wanted_is_one() -> None:
    got = top("2.0.0-rc3", ["2.0.0-rc1", "2.0.0-rc2", "1.9.0"])
    assert got[0] == "2.0.0-rc2" and "1.9.0" not in got


def test_release_sorts_after_its_prerelease() -> None:
    assert top("1.0.1", ["1.0.0-rc1", "1.0.0"])[0] == "1.0.0"


def test_limit_and_order_stable() -> None:
    tags = [f"1.2.{i}" for i in range(50)]
    got = top("1.2.99", tags)
    assert got == ["1.2.49", "1.2.48", "1.2.47", "1.2.46", "1.2.45"]


@pytest.mark.parametrize(
    ("constraint", "available", "expected"),
    [
        ("^1.2", ["1.1.9", "1.2.0", "1.9.3", "2.0.0"], "1.9.3"),
        ("~1.2", ["1.2.0", "1.2.7", "1.3.0"], "1.2.7"),
        ("~1.2.3", ["1.2.2", "1.2.8", "1.3.0"], "1.2.8"),
        (">=1.2.0 <1.5.0", ["1.1.0", "1.4.9", "1.5.0"], "1.4.9"),
        ("1.2.x", ["1.2.4", "1.3.0"], "1.2.4"),
        ("^0.2", ["0.2.1", "0.3.0"], "0.2.1"),
        ("=1.2.5", ["1.2.4", "1.2.5", "1.2.6"], "1.2.5"),
    ],
)
def test_semver_range(constraint: str, available: list[str], expected: str) -> None:
    got = top(
        "1.0.99" if not constraint.startswith("^0") else "0.0.99",
        available,
        SemverRange(constraint),
    )
    assert got and got[0] == expected, got


def test_semver_range_excludes_prerelease_unless_named() -> None:
    assert "1.3.0-rc1" not in top("1.0.0", ["1.3.0-rc1", "1.2.0"], SemverRange("^1.0"))


@pytest.mark.parametrize("bad", ["", "abc", "^^1", ">=1.2.3.4.5"])
def test_semver_range_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        SemverRange(bad)


def test_closest_match_prefers_nearest_either_direction() -> None:
    assert top("1.5.0", ["1.0.0", "1.4.0", "1.9.0"], ClosestMatch())[0] == "1.4.0"
    assert top("1.5.0", ["1.0.0", "1.6.0", "1.9.0"], ClosestMatch())[0] == "1.6.0"
    assert top("1.9.0", ["1.2.3", "1.2.4"], ClosestMatch())[0] == "1.2.4"


def test_highest_patch_prefers_same_minor_over_newer_minor() -> None:
    assert top("1.2.9", ["1.2.1", "1.3.0"], HighestPatch())[0] == "1.2.1"


@pytest.mark.parametrize(
    ("tag", "numbers", "pre", "variant"),
    [
        ("1.2.3", (1, 2, 3), "", ""),
        ("v1.2", (1, 2), "", ""),
        ("1.0.0-rc1", (1, 0, 0), "rc1", ""),
        ("1.25-alpine", (1, 25), "", "alpine"),
        ("2.0-beta-alpine", (2, 0), "beta", "alpine"),
        ("1.0.0+build.5", (1, 0, 0), "", ""),
    ],
)
def test_parse_version(tag: str, numbers: tuple[int, ...], pre: str, variant: str) -> None:
    v = parse_version(tag)
    assert v is not None
    assert (v.numbers, v.prerelease, v.variant) == (numbers, pre, variant)


@pytest.mark.parametrize("tag", ["latest", "main", "sha-abc123", ""])
def test_parse_version_none(tag: str) -> None:
    assert parse_version(tag) is None


def test_signature_tags() -> None:
    assert is_signature_tag(f"{SIG}.sig") and is_signature_tag(f"{SIG}.sbom")
    assert not is_signature_tag("sha256-abc.sig")


def test_edit_distance() -> None:
    assert edit_distance("main", "mian") == 1
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("a", "abcdefgh", limit=2) == 3


def test_major_change_only_when_allowed() -> None:
    assert top("1.2.3", ["2.0.0"]) == []
    got = [c.tag for c in rank_tags("1.2.3", ["2.0.0"], allow_major_change=True)]
    assert got == ["2.0.0"]
