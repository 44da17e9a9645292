"""Image reference parsing must agree with the kubelet (distribution/reference).

Rows marked "upstream" are test cases published in distribution/reference
(reference_test.go, normalize_test.go) and go-digest, restated as facts.
"""

from __future__ import annotations

import pytest

from pullmedic.core.reference import (
    ImageReference,
    InvalidReference,
    is_valid_digest,
    is_valid_tag,
    parse,
)

F64 = "f" * 64
D256 = "sha256:" + F64
D512 = "sha512:" + "f" * 128
REDIS = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"


# (input, domain, path, tag, digest)
VALID = [
    # kubelet basics
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("library/nginx", "docker.io", "library/nginx", "latest", None),
    ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("docker.io/library/nginx:latest", "docker.io", "library/nginx", "latest", None),
    ("index.docker.io/nginx", "docker.io", "library/nginx", "latest", None),
    ("index.docker.io/docker/docker", "docker.io", "docker/docker", "latest", None),
    ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
    ("localhost/foo", "localhost", "foo", "latest", None),
    ("localhost:5000/team/app:v1", "localhost:5000", "team/app", "v1", None),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", None),
    ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None),
    ("nginx@" + D256, "docker.io", "library/nginx", None, D256),
    ("nginx:1@" + D256, "docker.io", "library/nginx", "1", D256),
    # upstream TestReferenceParse (via ParseNormalizedNamed)
    ("test_com", "docker.io", "library/test_com", "latest", None),
    ("test.com:tag", "docker.io", "library/test.com", "tag", None),
    ("test.com:5000", "docker.io", "library/test.com", "5000", None),
    ("test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test:5000/repo", "test:5000", "repo", "latest", None),
    ("test:5000/repo:tag", "test:5000", "repo", "tag", None),
    ("test:5000/repo@" + D256, "test:5000", "repo", None, D256),
    ("test:5000/repo:tag@" + D256, "test:5000", "repo", "tag", D256),
    ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", "latest", None),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
    ),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    ("xn--7o8h.com/myimage:xn--7o8h.com@" + D512, "xn--7o8h.com", "myimage", "xn--7o8h.com", D512),
    ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", "8080", None),
    ("192.168.1.1", "docker.io", "library/192.168.1.1", "latest", None),
    ("192.168.1.1:tag", "docker.io", "library/192.168.1.1", "tag", None),
    ("192.168.1.1:5000", "docker.io", "library/192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1", "repo", "latest", None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000", "repo", "latest", None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", "latest", None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo", "latest", None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo@" + D256, "[2001:db8::1]:5000", "repo", None, D256),
    ("[2001:db8::1]:5000/repo:tag@" + D256, "[2001:db8::1]:5000", "repo", "tag", D256),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", "latest", None),
    ("[::1]:5000/repo", "[::1]:5000", "repo", "latest", None),
    # upstream TestNormalizedSplitHostname / TestParseRepositoryInfo
    ("test_com/foo", "docker.io", "test_com/foo", "latest", None),
    ("docker/migrator", "docker.io", "docker/migrator", "latest", None),
    ("test-com:8080/foo", "test-com:8080", "foo", "latest", None),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", "latest", None),
    ("docker.io/library/foo/bar", "docker.io", "library/foo/bar", "latest", None),
    ("other/library", "docker.io", "other/library", "latest", None),
    ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000", "private/moonbase", "latest", None),
    ("example.com:8000/privatebasee", "example.com:8000", "privatebasee", "latest", None),
    ("ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", "latest", None),
    ("store/foo/bar", "docker.io", "store/foo/bar", "latest", None),
    ("Foo/bar", "Foo", "bar", "latest", None),
    ("FOO/bar", "FOO", "bar", "latest", None),
    # upstream TestValidateReferenceName / TestValidateRemoteName (valid)
    ("127.0.0.1:5000/docker/docker", "127.0.0.1:5000", "docker/docker", "latest", None),
    ("192.168.0.1", "docker.io", "library/192.168.0.1", "latest", None),
    ("192.168.0.1:80", "docker.io", "library/192.168.0.1", "80", None),
    ("192.168.0.1:8/debian", "192.168.0.1:8", "debian", "latest", None),
    ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000", "docker/docker", "latest", None),
    (
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "[fc00:1:2:3:4:5:6:7]:5000",
        "library/debian",
        "latest",
        None,
    ),
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io",
        "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "latest",
        None,
    ),
    ("docker.io/" + HEX64, "docker.io", "library/" + HEX64, "latest", None),
    ("Docker/docker", "Docker", "docker", "latest", None),
    ("docker-rules/docker", "docker.io", "docker-rules/docker", "latest", None),
    ("docker---rules/docker", "docker.io", "docker---rules/docker", "latest", None),
    ("d/docker", "docker.io", "d/docker", "latest", None),
    ("jess/t", "docker.io", "jess/t", "latest", None),
    ("dock__er/docker", "docker.io", "dock__er/docker", "latest", None),
    # upstream TestParseAnyReference (named forms)
    ("redis@" + REDIS, "docker.io", "library/redis", None, REDIS),
    ("dmcgowan/myapp@" + REDIS, "docker.io", "dmcgowan/myapp", None, REDIS),
    (
        "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9",
        "docker.io",
        "library/dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9",
        "latest",
        None,
    ),
    ("dbcc1", "docker.io", "library/dbcc1", "latest", None),
    # digests: other supported algorithms
    ("a/b@sha384:" + "d" * 96, "docker.io", "a/b", None, "sha384:" + "d" * 96),
    # name length: 255 is the limit on the path
    (
        "a/" * 127 + "a:tag-puts-this-over-max",
        "docker.io",
        "a/" * 127 + "a",
        "tag-puts-this-over-max",
        None,
    ),
    ("x/" + "a" * 253, "docker.io", "x/" + "a" * 253, "latest", None),
    # tags at the edge of the grammar
    ("a:" + "t" * 128, "docker.io", "library/a", "t" * 128, None),
    ("a:_x", "docker.io", "library/a", "_x", None),
    ("a:1.0-RC_2", "docker.io", "library/a", "1.0-RC_2", None),
]


@pytest.mark.parametrize(("image", "domain", "path", "tag", "digest"), VALID, ids=repr)
def test_parse_valid(
    image: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(image)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)


# (input, expected reason or a fragment of it)
INVALID = [
    # upstream TestReferenceParse
    ("", "invalid reference format"),
    (":justtag", "invalid reference format"),
    ("@" + D256, "invalid reference format"),
    ("repo@sha256:" + "f" * 34, "invalid checksum digest length"),
    ("validname@invaliddigest:" + F64, "unsupported digest algorithm"),
    (
        "Uppercase:tag",
        "invalid reference format: repository name (library/Uppercase) must be lowercase",
    ),
    (
        "test:5000/Uppercase/lowercase:tag",
        "repository name (Uppercase/lowercase) must be lowercase",
    ),
    ("a/" * 128 + "a:tag", "repository name must not be more than 255 characters"),
    ("aa/asdf$$^/aa", "invalid reference format"),
    ("[2001:db8::1]", "invalid reference format"),
    ("[2001:db8::1]:5000", "invalid reference format"),
    ("[2001:db8::1]:tag", "invalid reference format"),
    ("[fe80::1%eth0]:5000/repo", "invalid reference format"),
    ("[fe80::1%@invalidzone]:5000/repo", "invalid reference format"),
    # upstream TestValidateReferenceName / TestValidateRemoteName (invalid)
    ("https://github.com/docker/docker", "invalid reference format"),
    ("docker/Docker", "must be lowercase"),
    ("-docker", "invalid reference format"),
    ("-docker/docker", "invalid reference format"),
    ("-docker.io/docker/docker", "invalid reference format"),
    ("docker///docker", "invalid reference format"),
    ("docker.io/docker/Docker", "must be lowercase"),
    ("docker.io/docker///docker", "invalid reference format"),
    ("[fc00::1]", "invalid reference format"),
    ("[fc00::1]:5000", "invalid reference format"),
    ("fc00::1:5000/debian", "invalid reference format"),
    ("[fe80::1%eth0]:5000/debian", "invalid reference format"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid reference format"),
    (HEX64, "cannot specify 64-byte hexadecimal strings"),
    ("docker-/docker", "invalid reference format"),
    ("-docker-/docker", "invalid reference format"),
    ("____/____", "invalid reference format"),
    ("_docker/_docker", "invalid reference format"),
    ("dock..er/docker", "invalid reference format"),
    ("dock_.er/docker", "invalid reference format"),
    ("dock-.er/docker", "invalid reference format"),
    ("docker/", "invalid reference format"),
    (
        "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_" * 3
        + "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker",
        "repository name must not be more than 255 characters",
    ),
    # go-digest ParseDigest cases, as they surface through a reference
    ("a@sha256:abcdef0123456789", "invalid reference format"),  # under 32 hex: grammar
    ("a@sha512:" + "abcdef0123456789" * 4, "invalid checksum digest length"),
    ("a@foo:d41d8cd98f00b204e9800998ecf8427e", "unsupported digest algorithm"),
    ("a@sha384.foo+bar:" + "d" * 96, "unsupported digest algorithm"),
    ("a@sha384__foo+bar:" + "d" * 96, "invalid reference format"),
    ("a:t@sha256:" + "E" * 64, "invalid checksum digest format"),
    ("a:t@SHA256:" + F64, "invalid checksum digest format"),
    ("a@sha256+b64:" + "f" * 64, "unsupported digest algorithm"),
    ("a@sha256:" + "f" * 65, "invalid checksum digest length"),
    ("a@sha256:" + "f" * 63, "invalid checksum digest length"),
    # tags
    ("a:" + "t" * 129, "invalid reference format"),
    ("a:.tag", "invalid reference format"),
    ("a:-tag", "invalid reference format"),
    ("a:tag with space", "invalid reference format"),
    ("a:", "invalid reference format"),
    ("a@", "invalid reference format"),
    # separators, schemes, hostile input
    ("a..b", "invalid reference format"),
    ("a__b___c", "invalid reference format"),
    ("a/", "invalid reference format"),
    ("/a", "invalid reference format"),
    ("docker://nginx", "invalid reference format"),
    ("http://registry.example.com/app", "invalid reference format"),
    ("oci://registry.example.com/app", "invalid reference format"),
    ("../etc/passwd", "invalid reference format"),
    ("registry.example.com/../secret", "invalid reference format"),
    (" nginx", "invalid reference format"),
    ("nginx ", "invalid reference format"),
    ("nginx\n", "invalid reference format"),
    ("nginx:1\n", "invalid reference format"),
    ("ngi\x00nx", "invalid reference format"),
    ("nginx\t:1", "invalid reference format"),
    ("nginx:1\x1b[31m", "invalid reference format"),
    ("\uff4e\uff47\uff49\uff4e\uff58", "invalid reference format"),
    ("nginx:\uff11", "invalid reference format"),
    ("nginx:ta\u0301g", "invalid reference format"),
    ("registry.example.com:port/app", "invalid reference format"),
    ("registry.example.com:-1/app", "invalid reference format"),
    ("-registry.example.com/app", "invalid reference format"),
    ("registry-.example.com/app", "invalid reference format"),
    ("registry..example.com/app", "invalid reference format"),
    ("registry.example.com/app:1:2", "invalid reference format"),
    ("registry.example.com/app@@" + D256, "invalid reference format"),
    ("Registry.Example.COM/App", "must be lowercase"),
    ("a" * 300, "repository name must not be more than 255 characters"),
    ("x/" + "a" * 254, "repository name must not be more than 255 characters"),  # 256
    ("a" * 1_000_000 + "!", "invalid reference format"),
    ("a/" * 500_000 + "!", "invalid reference format"),
    ("a." * 500_000 + "a/b!", "invalid reference format"),
    ("a" + "-" * 1_000_000, "invalid reference format"),
]


@pytest.mark.parametrize(("image", "reason"), INVALID, ids=lambda v: repr(v)[:60])
def test_parse_invalid(image: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(image)
    assert reason in info.value.reason
    assert info.value.image == image
    assert str(info.value).startswith("couldn't parse image name ")


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("", "invalid reference format"),
        (
            "Uppercase:tag",
            "invalid reference format: repository name (library/Uppercase) must be lowercase",
        ),
        (HEX64, f"invalid repository name ({HEX64}), cannot specify 64-byte hexadecimal strings"),
        ("validname@invaliddigest:" + F64, "unsupported digest algorithm"),
        ("a/" * 128 + "a", "repository name must not be more than 255 characters"),
        ("x/Y:1", "invalid reference format: repository name (x/Y) must be lowercase"),
        ("Foo_bar/x", "repository name must be lowercase"),
        ("a:t@sha256:" + "E" * 64, "invalid checksum digest format"),
    ],
)
def test_reason_is_exact_upstream_text(image: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(image)
    assert info.value.reason == reason


def test_error_message_matches_kubelet_shape() -> None:
    with pytest.raises(InvalidReference) as info:
        parse("nginx:-bad")
    assert str(info.value) == 'couldn\'t parse image name "nginx:-bad": invalid reference format'


@pytest.mark.parametrize(
    "image", ["a\x00b", "x\n" * 1000, "\u202enginx", "a" * 10_000 + ":", "Ab\x00\n", "A" * 10_000]
)
def test_hostile_message_is_bounded_and_escaped(image: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(image)
    message = str(info.value)
    assert len(message) < 1000
    assert len(info.value.reason) < 500
    for text in (message, info.value.reason):
        assert "\x00" not in text and "\n" not in text


@pytest.mark.parametrize("value", [None, 42, b"nginx", ["nginx"]])
def test_non_string_gives_invalid_reference(value: object) -> None:
    with pytest.raises(InvalidReference):
        parse(value)  # type: ignore[arg-type]


# (input, canonical str, familiar)
RENDER = [
    ("nginx", "docker.io/library/nginx:latest", "nginx:latest"),
    ("redis:latest", "docker.io/library/redis:latest", "redis:latest"),
    ("docker.io/library/redis:latest", "docker.io/library/redis:latest", "redis:latest"),
    ("redis@" + REDIS, "docker.io/library/redis@" + REDIS, "redis@" + REDIS),
    ("dmcgowan/myapp", "docker.io/dmcgowan/myapp:latest", "dmcgowan/myapp:latest"),
    ("docker.io/mcgowan/myapp:latest", "docker.io/mcgowan/myapp:latest", "mcgowan/myapp:latest"),
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
    ("index.docker.io/fooo/bar", "docker.io/fooo/bar:latest", "fooo/bar:latest"),
    (
        "127.0.0.1:8000/privatebase",
        "127.0.0.1:8000/privatebase:latest",
        "127.0.0.1:8000/privatebase:latest",
    ),
    (
        "example.com/private/moonbase:1",
        "example.com/private/moonbase:1",
        "example.com/private/moonbase:1",
    ),
    (
        "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
        "docker.io/library/busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
        "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
    ),
    ("[::1]:5000/x:1", "[::1]:5000/x:1", "[::1]:5000/x:1"),
]


@pytest.mark.parametrize(("image", "canonical", "familiar"), RENDER, ids=repr)
def test_string_forms(image: str, canonical: str, familiar: str) -> None:
    ref = parse(image)
    assert str(ref) == canonical
    assert ref.familiar() == familiar
    assert parse(canonical) == ref  # canonical form round-trips


# (input, name, registry_host, is_docker_hub, manifest_ref)
PROPS = [
    ("nginx", "docker.io/library/nginx", "registry-1.docker.io", True, "latest"),
    ("index.docker.io/a/b:2", "docker.io/a/b", "registry-1.docker.io", True, "2"),
    (
        "registry-1.docker.io/a/b",
        "registry-1.docker.io/a/b",
        "registry-1.docker.io",
        False,
        "latest",
    ),
    ("localhost:5000/a:1@" + D256, "localhost:5000/a", "localhost:5000", False, D256),
    ("127.0.0.1:5000/a", "127.0.0.1:5000/a", "127.0.0.1:5000", False, "latest"),
    ("[::1]:5000/a@" + D256, "[::1]:5000/a", "[::1]:5000", False, D256),
    ("quay.io/coreos/etcd:v3", "quay.io/coreos/etcd", "quay.io", False, "v3"),
]


@pytest.mark.parametrize(("image", "name", "host", "hub", "manifest_ref"), PROPS, ids=repr)
def test_properties(image: str, name: str, host: str, hub: bool, manifest_ref: str) -> None:
    ref = parse(image)
    assert ref.name == name
    assert ref.registry_host == host
    assert ref.is_docker_hub is hub
    assert ref.manifest_ref == manifest_ref


@pytest.mark.parametrize(
    ("image", "tag", "expected"),
    [
        ("test.com/foo", "tag", "test.com/foo:tag"),
        ("foo", "tag2", "docker.io/library/foo:tag2"),
        ("test.com:8000/foo", "tag4", "test.com:8000/foo:tag4"),
        ("test.com:8000/foo", "TAG5", "test.com:8000/foo:TAG5"),
        ("test.com:8000/foo@" + D256, "TAG5", "test.com:8000/foo:TAG5"),
        ("nginx:1@" + D256, "2", "docker.io/library/nginx:2"),
    ],
)
def test_with_tag(image: str, tag: str, expected: str) -> None:
    ref = parse(image).with_tag(tag)
    assert str(ref) == expected
    assert ref.digest is None


@pytest.mark.parametrize("tag", ["-foo", ".foo", "", "a" * 129, "a b", "a/b", "a:b", "é"])
def test_with_tag_rejects_bad_tag(tag: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse("busybox").with_tag(tag)
    assert info.value.reason == "invalid tag format"


@pytest.mark.parametrize(
    ("image", "digest", "expected"),
    [
        ("test.com/foo", D256, "test.com/foo:latest@" + D256),
        ("foo@" + REDIS, D256, "docker.io/library/foo@" + D256),
        ("foo:1", D512, "docker.io/library/foo:1@" + D512),
    ],
)
def test_with_digest(image: str, digest: str, expected: str) -> None:
    ref = parse(image).with_digest(digest)
    assert str(ref) == expected
    assert ref.manifest_ref == digest


@pytest.mark.parametrize(
    ("digest", "reason"),
    [
        ("foo", "invalid checksum digest format"),
        ("sha256:" + "f" * 63, "invalid checksum digest length"),
        ("sha256:" + "F" * 64, "invalid checksum digest format"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported digest algorithm"),
        ("sha256:", "invalid checksum digest format"),
        (":" + F64, "invalid checksum digest format"),
    ],
)
def test_with_digest_rejects_bad_digest(digest: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse("busybox").with_digest(digest)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("latest", True),
        ("1.25.3-alpine", True),
        ("_", True),
        ("A", True),
        ("v1_2.3-4", True),
        ("t" * 128, True),
        ("t" * 129, False),
        ("", False),
        (".x", False),
        ("-x", False),
        ("x y", False),
        ("x\n", False),
        ("é", False),
        ("٣", False),  # Go's \w is ASCII only
    ],
)
def test_is_valid_tag(tag: str, ok: bool) -> None:
    assert is_valid_tag(tag) is ok


@pytest.mark.parametrize(
    ("digest", "ok"),
    [
        ("sha256:e58fcf7418d4390dec8e8fb69d88c06ec07039d651fedd3aa72af9972e7d046b", True),
        (
            "sha384:d3fc7881460b7e22e3d172954463dddd7866d17597e7248453c48b3e9d26d9596b"
            "f9c4a9cf8072c9d5bad76e19af801d",
            True,
        ),
        (D512, True),
        ("", False),
        ("     ", False),
        ("sha256:", False),
        (":", False),
        ("d41d8cd98f00b204e9800998ecf8427e", False),
        ("sha256:d41d8cd98f00b204e9800m98ecf8427e", False),
        ("sha256:abcdef0123456789", False),
        ("sha512:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789", False),
        ("foo:d41d8cd98f00b204e9800998ecf8427e", False),
        ("sha256:E58FCF7418D4390DEC8E8FB69D88C06EC07039D651FEDD3AA72AF9972E7D046B", False),
    ],
)
def test_is_valid_digest(digest: str, ok: bool) -> None:
    assert is_valid_digest(digest) is ok


def test_reference_is_frozen_and_hashable() -> None:
    ref = parse("nginx")
    assert {ref: 1}[parse("docker.io/library/nginx:latest")] == 1
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]
    assert isinstance(ref, ImageReference)
