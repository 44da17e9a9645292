"""Platform normalisation and selection must follow containerd/platforms.

Rows marked "upstream" restate containerd's compare_test.go / platforms_test.go cases.
"""

from __future__ import annotations

import pytest

from pullmedic.core.platforms import Platform, best_match, compatible_platforms, is_attestation

P = Platform.parse


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),  # containerd keeps v8 here
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64", Platform("linux", "amd64")),
        ("linux/i386", Platform("linux", "386")),
        ("linux/arm", Platform("linux", "arm")),
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/armhf", Platform("linux", "arm")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("linux/ppc64le", Platform("linux", "ppc64le")),
        ("linux/s390x", Platform("linux", "s390x")),
        ("LINUX/AMD64", Platform("linux", "amd64")),
        ("macos/arm64", Platform("darwin", "arm64")),
        ("windows/amd64", Platform("windows", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/arm64/v9.0", Platform("linux", "arm64", "v9")),
        ("linux/arm64/v8.2", Platform("linux", "arm64", "v8.2")),
        # a single part is an architecture; the OS defaults to linux
        ("arm64", Platform("linux", "arm64")),
        ("aarch64", Platform("linux", "arm64")),
        ("amd64", Platform("linux", "amd64")),
        ("x86_64", Platform("linux", "amd64")),
        ("armhf", Platform("linux", "arm")),
        ("armel", Platform("linux", "arm", "v6")),
        ("i386", Platform("linux", "386")),
    ],
)
def test_parse(spec: str, expected: Platform) -> None:
    assert P(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "linux",  # no architecture to assume
        "windows",
        "nonsense",
        "linux/*",
        "*",
        "linux/amd64/v2/extra",
        "linux//amd64",
        "linux/",
        "/amd64",
        "linux/am d64",
        "linux/amd64\n",
        "lin ux/amd64",
        "windows(10.0.17763)/amd64",
    ],
)
def test_parse_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        P(spec)


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        (Platform("linux", "x86_64"), Platform("linux", "amd64")),
        (Platform("linux", "x86-64"), Platform("linux", "amd64")),
        (Platform("linux", "amd64", "v1"), Platform("linux", "amd64")),
        (Platform("linux", "amd64", "v2"), Platform("linux", "amd64", "v2")),
        (Platform("linux", "aarch64"), Platform("linux", "arm64")),
        (Platform("linux", "arm64", "v8"), Platform("linux", "arm64")),
        (Platform("linux", "arm64", "8"), Platform("linux", "arm64")),
        (Platform("linux", "arm64", "v8.0"), Platform("linux", "arm64")),
        (Platform("linux", "arm64", "9"), Platform("linux", "arm64", "v9")),
        (Platform("linux", "arm64", "v9.0"), Platform("linux", "arm64", "v9")),
        (Platform("linux", "arm64", "v8.1"), Platform("linux", "arm64", "v8.1")),
        (Platform("linux", "armhf"), Platform("linux", "arm", "v7")),
        (Platform("linux", "armel"), Platform("linux", "arm", "v6")),
        (Platform("linux", "arm"), Platform("linux", "arm", "v7")),
        (Platform("linux", "arm", "7"), Platform("linux", "arm", "v7")),
        (Platform("linux", "arm", "6"), Platform("linux", "arm", "v6")),
        (Platform("linux", "arm", "5"), Platform("linux", "arm", "v5")),
        (Platform("linux", "arm", "8"), Platform("linux", "arm", "v8")),
        (Platform("linux", "i386", "whatever"), Platform("linux", "386")),
        (Platform("Linux", "AMD64"), Platform("linux", "amd64")),
        (Platform("macos", "arm64"), Platform("darwin", "arm64")),
        (Platform("", "amd64"), Platform("linux", "amd64")),
        (Platform("linux", "riscv64"), Platform("linux", "riscv64")),
    ],
)
def test_normalized(platform: Platform, expected: Platform) -> None:
    assert platform.normalized() == expected
    assert platform.normalized().normalized() == expected  # idempotent


@pytest.mark.parametrize(
    ("platform", "text"),
    [
        (Platform("linux", "arm", "v7"), "linux/arm/v7"),
        (Platform("linux", "amd64"), "linux/amd64"),
        (Platform("linux", "arm64", "v8"), "linux/arm64/v8"),
        (Platform("", "amd64"), "unknown"),
    ],
)
def test_str(platform: Platform, text: str) -> None:
    assert str(platform) == text


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("linux/amd64", ["linux/amd64", "linux/386"]),
        ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64/v1", "linux/386"]),
        ("linux/386", ["linux/386"]),
        ("linux/arm/v7", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm/v6", ["linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm/v5", ["linux/arm/v5"]),
        (
            "linux/arm64",
            ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"],
        ),
        (
            "linux/arm64/v8.2",
            [
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64/v8",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        (
            "linux/arm64/v9",
            [
                "linux/arm64/v9",
                "linux/arm64/v8.5",
                "linux/arm64/v8.4",
                "linux/arm64/v8.3",
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64/v8",
                "linux/arm/v9",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        (
            "linux/arm64/v9.5",
            [
                "linux/arm64/v9.5",
                "linux/arm64/v9.4",
                "linux/arm64/v9.3",
                "linux/arm64/v9.2",
                "linux/arm64/v9.1",
                "linux/arm64/v9",
                "linux/arm64/v8.9",
                "linux/arm64/v8.8",
                "linux/arm64/v8.7",
                "linux/arm64/v8.6",
                "linux/arm64/v8.5",
                "linux/arm64/v8.4",
                "linux/arm64/v8.3",
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64/v8",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        ("linux/s390x", ["linux/s390x"]),
    ],
)
def test_compatible_platforms(wanted: str, expected: list[str]) -> None:
    assert [str(p) for p in compatible_platforms(P(wanted))] == expected


# upstream TestOnly: (node platform, platforms it runs, platforms it does not)
ONLY = [
    (
        "linux/amd64",
        ["linux/amd64", "linux/386"],
        ["linux/amd64/v2", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"],
    ),
    (
        "linux/amd64/v2",
        ["linux/amd64", "linux/amd64/v1", "linux/amd64/v2", "linux/386"],
        ["linux/amd64/v3", "linux/amd64/v4", "linux/arm/v7", "linux/arm64", "windows/amd64"],
    ),
    (
        "linux/386",
        ["linux/386"],
        ["linux/amd64", "linux/arm/v7", "linux/arm64", "windows/amd64", "windows/arm"],
    ),
    (
        "linux/arm/v8",
        ["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm/v8"],
        ["linux/amd64", "linux/arm/v4", "linux/arm64", "windows/amd64", "windows/arm"],
    ),
    (
        "linux/arm/v7",
        ["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
        ["linux/amd64", "linux/arm/v4", "linux/arm/v8", "linux/arm64", "windows/arm"],
    ),
    (
        "linux/arm/v6",
        ["linux/arm/v5", "linux/arm/v6"],
        ["linux/amd64", "linux/arm", "linux/arm/v4", "linux/arm/v7", "linux/arm/v8", "linux/arm64"],
    ),
    (
        "linux/arm/v5",
        ["linux/arm/v5"],
        ["linux/amd64", "linux/arm", "linux/arm/v4", "linux/arm/v6", "linux/arm/v7", "linux/arm64"],
    ),
    (
        "linux/arm/v4",
        ["linux/arm/v4"],
        ["linux/amd64", "linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm64"],
    ),
    (
        "linux/arm64/v9",
        [
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "linux/arm64/v8",
            "linux/arm64/v8.1",
            "linux/arm64/v8.2",
            "linux/arm64/v8.3",
            "linux/arm64/v8.4",
            "linux/arm64/v8.5",
            "linux/arm64/v9",
            "linux/arm64/v9.0",
        ],
        ["linux/amd64", "linux/arm/v4", "windows/amd64", "windows/arm", "linux/arm64/v8.6"],
    ),
    (
        "linux/arm64/v8.1",
        [
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "linux/arm64/v8",
            "linux/arm64/v8.1",
        ],
        ["linux/amd64", "linux/arm/v4", "linux/arm/v9", "linux/arm64/v9", "windows/arm"],
    ),
    (
        "linux/arm64",
        [
            "linux/arm",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/arm64",
            "linux/arm64/v8",
        ],
        ["linux/amd64", "linux/arm/v4", "linux/arm/v9", "linux/arm64/v9", "windows/amd64"],
    ),
]


def _only_rows() -> list[tuple[str, str, bool]]:
    rows = []
    for wanted, yes, no in ONLY:
        rows += [(wanted, p, True) for p in yes] + [(wanted, p, False) for p in no]
    return rows


@pytest.mark.parametrize(("wanted", "offered", "runs"), _only_rows())
def test_only_matches_upstream(wanted: str, offered: str, runs: bool) -> None:
    assert (best_match(P(wanted), [P(offered)]) == 0) is runs


@pytest.mark.parametrize(
    ("wanted", "available", "expected"),
    [
        ("linux/amd64", ["linux/arm64", "linux/amd64", "linux/386"], 1),
        ("linux/amd64", ["linux/386", "linux/arm64"], 0),
        ("linux/amd64", ["linux/arm64", "linux/arm/v7"], None),
        ("linux/amd64", [], None),
        ("linux/arm64", ["linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"], 2),
        ("linux/arm64", ["linux/arm/v6", "linux/arm/v7"], 1),
        ("linux/arm64", ["linux/aarch64"], 0),
        ("linux/arm/v7", ["linux/arm64", "linux/arm/v6", "linux/armhf"], 2),
        ("linux/arm/v7", ["linux/arm/v5", "linux/arm/v6"], 1),
        ("linux/arm/v6", ["linux/arm", "linux/arm/v7"], None),
        ("linux/amd64", ["linux/x86_64", "linux/amd64"], 0),  # ties: first entry wins
        ("linux/amd64", ["windows/amd64", "linux/amd64"], 1),
        ("linux/amd64", ["unknown/unknown", "linux/amd64"], 1),
        ("linux/amd64", ["linux/amd64/v3"], None),
        ("linux/amd64/v3", ["linux/amd64/v2", "linux/amd64/v3"], 1),
    ],
)
def test_best_match(wanted: str, available: list[str], expected: int | None) -> None:
    parsed = [Platform(*a.split("/")) for a in available]
    assert best_match(P(wanted), parsed) == expected


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"os": "linux", "architecture": "arm", "variant": "v7"}, Platform("linux", "arm", "v7")),
        ({"os": "linux", "architecture": "amd64", "os.version": "x"}, Platform("linux", "amd64")),
        ({"architecture": 5, "os": None}, Platform("", "")),
    ],
)
def test_from_mapping(mapping: dict[str, object], expected: Platform) -> None:
    assert Platform.from_mapping(mapping) == expected


@pytest.mark.parametrize(
    ("platform", "annotations", "expected"),
    [
        ({"os": "unknown", "architecture": "unknown"}, None, True),
        (
            {"os": "unknown", "architecture": "unknown"},
            {
                "vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": "sha256:" + "a" * 64,
            },
            True,
        ),
        (None, {"vnd.docker.reference.type": "attestation-manifest"}, True),
        ({"os": "linux", "architecture": "amd64"}, None, False),
        (
            {"os": "linux", "architecture": "amd64"},
            {"org.opencontainers.image.ref.name": "1"},
            False,
        ),
        ({"os": "linux", "architecture": "unknown"}, None, False),
        ({"os": "unknown", "architecture": "amd64"}, {}, False),
        (None, None, False),
        ({}, {}, False),
        (None, {"vnd.docker.reference.type": "other"}, False),
    ],
)
def test_is_attestation(
    platform: dict[str, object] | None, annotations: dict[str, str] | None, expected: bool
) -> None:
    assert is_attestation(platform, annotations) is expected
