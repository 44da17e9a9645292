"""The keyring must pick the credentials the kubelet would send (pkg/credentialprovider).

Rows marked "upstream" restate cases from kubernetes keyring_test.go / config_test.go.
"""

from __future__ import annotations

import base64
import json

import pytest

from pullmedic.core.dockerconfig import PullSecret, SecretProblem
from pullmedic.core.keyring import Credential, Keyring
from pullmedic.core.reference import parse
from pullmedic.core.registrykeys import key_matches, normalize_key

PASSWORD = "s3cr3t-P4ss:w0rd"
DCJ_TYPE = "kubernetes.io/dockerconfigjson"
USERNAME = "robot$ci"


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def auth(user: str = USERNAME, password: str = PASSWORD) -> str:
    return b64(f"{user}:{password}")


def dockerconfigjson(auths: object, name: str = "regcred", ns: str = "team-a") -> PullSecret:
    doc = json.dumps({"auths": auths})
    return PullSecret(ns, name, "kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64(doc)})


def dockercfg(entries: object, name: str = "legacy", ns: str = "team-a") -> PullSecret:
    return PullSecret(ns, name, "kubernetes.io/dockercfg", {".dockercfg": b64(json.dumps(entries))})


def keyring_for(*keys: str) -> Keyring:
    """One credential per key; the username records the key it was stored under."""
    entries = {key: {"username": f"user-for-{key}", "password": "x"} for key in keys}
    keyring, problems = Keyring.from_secrets([dockerconfigjson(entries)])
    assert problems == (
        []
        if keys
        else [SecretProblem("team-a/regcred", ".dockerconfigjson contains no registries")]
    )
    return keyring


def users(creds: list[Credential]) -> list[str]:
    return [c.username for c in creds]


# --- key normalisation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "key"),
    [
        ("registry.example.com", "registry.example.com"),
        ("https://registry.example.com", "registry.example.com"),
        ("http://registry.example.com", "registry.example.com"),
        ("https://registry.example.com/", "registry.example.com"),
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("index.docker.io/v1/", "index.docker.io"),
        ("https://registry.example.com/v2/", "registry.example.com"),
        ("registry.example.com:5000/v2/team", "registry.example.com:5000/team"),
        ("https://registry.example.com/v1/team/app", "registry.example.com/team/app"),
        ("registry.example.com/v1", "registry.example.com/v1"),
        ("registry.example.com/team", "registry.example.com/team"),
        ("quay.io/coreos/etcd", "quay.io/coreos/etcd"),
        ("user@registry.example.com", "registry.example.com"),
        ("registry.example.com?tls=1", "registry.example.com"),
        ("Registry.Example.com", "Registry.Example.com"),
        ("[::1]:5000", "[::1]:5000"),
        ("*.docker.io/v2/", "*.docker.io"),
        ("registry.example.com/a%2Fb", "registry.example.com/a/b"),
        ("", ""),
    ],
)
def test_normalize_key(loc: str, key: str) -> None:
    assert normalize_key(loc) == key


@pytest.mark.parametrize(
    "loc",
    [
        "registry.example.com:abc",
        "registry.example.com:5000x/team",
        "registry example.com",
        "registry.example.com/a%zz",
        "registry\x00.example.com",
        "registry.example.com\n",
        "[::1",
        "[::1]x",
        "reg{istry}.example.com",
    ],
)
def test_normalize_key_rejects_what_go_url_parse_rejects(loc: str) -> None:
    with pytest.raises(ValueError):
        normalize_key(loc)


# --- matching ------------------------------------------------------------------------------

# upstream TestURLsMatch rows (target given as an image name) plus the notes' rules
MATCHES = [
    ("*.kubernetes.io", "prefix.kubernetes.io/app", True),
    ("prefix.*.io", "prefix.kubernetes.io/app", True),
    ("prefix.kubernetes.*", "prefix.kubernetes.io/app", True),
    ("*-good.kubernetes.io", "prefix-good.kubernetes.io/app", True),
    ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", True),
    ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", True),
    ("*.kubernetes.io:1111/blah", "prefix.kubernetes.io:1111/blah", True),
    ("prefix.*.io:1111/foo", "prefix.kubernetes.io:1111/foo/bar", True),
    ("*.kubernetes.io", "kubernetes.io/app", False),
    ("*.*.kubernetes.io", "prefix.kubernetes.io/app", False),
    ("*.*.kubernetes.io", "kubernetes.io/app", False),
    ("kubernetes.io", "kubernetes.com/app", False),
    ("k*.io", "quay.io/app", False),
    ("*.kubernetes.io:1234/blah", "prefix.kubernetes.io:1111/blah", False),
    ("prefix.*.io/foo", "prefix.kubernetes.io:1111/foo/bar", False),
    # upstream TestDockerKeyringForGlob / TestKeyringMiss (after key normalisation)
    ("hello.kubernetes.io", "hello.kubernetes.io/foo/bar", True),
    ("prefix.docker.*", "prefix.docker.io/path/foo/bar", True),
    ("*.docker.io:8888", "prefix.docker.io:8888/foo/bar", True),
    ("prefix.docker.io:1111", "prefix.docker.io:1111/path/foo/bar", True),
    ("hello.kubernetes.io", "world.mesos.org/foo/bar", False),
    ("*.docker.com", "prefix.docker.io/foo/bar", False),
    ("suffix.*.io", "prefix.docker.io/foo/bar", False),
    ("prefix.docker.c*", "prefix.docker.io/foo/bar", False),
    # ports must be identical: no port is not :443, and vice versa
    ("registry.example.com", "registry.example.com:443/app", False),
    ("registry.example.com:443", "registry.example.com/app", False),
    ("registry.example.com:5000", "registry.example.com:5000/app", True),
    ("localhost:5000", "localhost:5000/app", True),
    ("localhost", "localhost:5000/app", False),
    ("127.0.0.1:5000", "127.0.0.1:5000/app", True),
    ("[::1]:5000", "[::1]:5000/app", True),
    ("[::1]:5000", "[::1]:5001/app", False),
    # path is a plain string prefix of the image path (not per component)
    ("registry.example.com/team", "registry.example.com/team/app", True),
    ("registry.example.com/team", "registry.example.com/teamster/app", True),
    ("registry.example.com/team/", "registry.example.com/team/app", True),
    ("registry.example.com/other", "registry.example.com/team/app", False),
    ("registry.example.com/team/app/x", "registry.example.com/team/app", False),
    # Docker Hub names are normalised before matching
    ("docker.io", "nginx", True),
    ("docker.io/library", "nginx", True),
    ("docker.io/library/nginx", "nginx:1.25", True),
    ("docker.io/bitnami", "nginx", False),
    ("index.docker.io", "nginx", False),
    ("registry-1.docker.io", "nginx", False),
    # case-sensitive
    ("Registry.example.com", "registry.example.com/app", False),
    ("registry.example.com/Team", "registry.example.com/team/app", False),
    # globs are per label, Go filepath.Match syntax
    ("*", "localhost/app", True),
    ("*", "registry.example.com/app", False),
    ("reg?stry.example.com", "registry.example.com/app", False),  # '?' starts a URL query
    ("reg[a-j]stry.example.com", "registry.example.com/app", True),
    ("reg[^i]stry.example.com", "registry.example.com/app", False),
    ("reg[!i]stry.example.com", "registry.example.com/app", True),  # '!' is literal in Go
    ("reg[x-z]stry.example.com", "registry.example.com/app", False),
    ("reg[stry.example.com", "registry.example.com/app", False),  # malformed: no match
    ("reg\\istry.example.com", "registry.example.com/app", False),  # url.Parse rejects it
    ("*.example.com", "a.b.example.com/app", False),
    ("*.example.com", "example.com/app", False),
    ("*.example.com", "a.example.com/app", True),
    ("", "nginx", False),
]


@pytest.mark.parametrize(("key", "image", "expected"), MATCHES, ids=repr)
def test_key_matches(key: str, image: str, expected: bool) -> None:
    assert key_matches(key, parse(image)) is expected


# --- lookup --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "image", "expected_users"),
    [
        # Docker Hub spellings that work, and the one that does not
        (["docker.io"], "nginx", ["user-for-docker.io"]),
        (["index.docker.io"], "nginx", ["user-for-index.docker.io"]),
        (["https://index.docker.io/v1/"], "nginx", ["user-for-https://index.docker.io/v1/"]),
        (
            ["https://index.docker.io/v1/"],
            "google/docker-registry",
            ["user-for-https://index.docker.io/v1/"],
        ),
        (
            ["https://index.docker.io/v1/"],
            "index.docker.io/google/docker-registry",
            ["user-for-https://index.docker.io/v1/"],
        ),
        (["registry-1.docker.io"], "nginx", []),
        # upstream TestKeyringMissWithDockerHubCredentials
        (["https://index.docker.io/v1/"], "world.mesos.org/foo/bar", []),
        # the fallback only applies when nothing else matched
        (["index.docker.io", "docker.io/library"], "nginx", ["user-for-docker.io/library"]),
        (["index.docker.io", "docker.io/bitnami"], "nginx", ["user-for-index.docker.io"]),
        # upstream quirk: a first part without '.' or ':' counts as Docker Hub
        (["index.docker.io"], "localhost/app", ["user-for-index.docker.io"]),
        (["index.docker.io"], "localhost:5000/app", []),
        # most specific first: reverse lexical order of keys
        (
            ["quay.io", "quay.io/coreos", "quay.io/coreos/etcd"],
            "quay.io/coreos/etcd",
            ["user-for-quay.io/coreos/etcd", "user-for-quay.io/coreos", "user-for-quay.io"],
        ),
        (["quay.io/coreos", "quay.io"], "quay.io/other/app", ["user-for-quay.io"]),
        (
            ["*.example.com", "a.example.com"],
            "a.example.com/app",
            ["user-for-a.example.com", "user-for-*.example.com"],
        ),
        (["registry.example.com:5000"], "registry.example.com/app", []),
        ([], "nginx", []),
    ],
)
def test_lookup(keys: list[str], image: str, expected_users: list[str]) -> None:
    assert users(keyring_for(*keys).lookup(parse(image))) == expected_users


def test_lookup_returns_every_secret_for_a_key_in_secret_order() -> None:
    first = dockerconfigjson({"registry.example.com": {"auth": auth("one", "p1")}}, name="a")
    second = dockercfg({"https://registry.example.com/v2/": {"auth": auth("two", "p2")}})
    keyring, problems = Keyring.from_secrets([first, second])
    assert problems == []
    creds = keyring.lookup(parse("registry.example.com/app"))
    assert [(c.username, c.password, c.secret, c.key) for c in creds] == [
        ("one", "p1", "team-a/a", "registry.example.com"),
        ("two", "p2", "team-a/legacy", "registry.example.com"),
    ]
    assert creds[0].source == (
        'pull secret team-a/a (.dockerconfigjson) key "registry.example.com"'
    )
    assert len(keyring) == 2
    assert not keyring.is_empty()


# --- entry decoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "user", "password"),
    [
        ({"username": "u", "password": "p"}, "u", "p"),
        ({"auth": b64("u:p")}, "u", "p"),
        ({"auth": b64("u:p"), "username": "ignored", "password": "ignored"}, "u", "p"),
        ({"auth": "dXNlcjpwdw=="}, "user", "pw"),  # padded
        ({"auth": "dXNlcjpwdw"}, "user", "pw"),  # padding is optional
        ({"auth": "dXNlcjpw\ndw=="}, "user", "pw"),  # Go skips newlines
        ({"auth": b64("u:p:q")}, "u", "p:q"),
        ({"auth": b64(":p")}, "", "p"),
        ({"auth": b64("u:")}, "u", ""),
        ({"auth": "", "username": "u", "password": "p"}, "u", "p"),
        ({"Username": "u", "PASSWORD": "p"}, "u", "p"),  # Go's JSON keys are case-insensitive
        ({"Auth": b64("u:p")}, "u", "p"),
        ({"username": "u", "password": "p", "email": "e@x", "identitytoken": "tok"}, "u", "p"),
        ({"username": None, "password": "p"}, "", "p"),
        ({"auth": b64(b"u:\xff\xfe")}, "u", b"\xff\xfe".decode("utf-8", "surrogateescape")),
    ],
)
def test_entry_decoding(entry: dict[str, object], user: str, password: str) -> None:
    keyring, problems = Keyring.from_secrets([dockerconfigjson({"r.example.com": entry})])
    assert problems == []
    [cred] = keyring.lookup(parse("r.example.com/app"))
    assert (cred.username, cred.password) == (user, password)


# (secret, fragment of the reason, blocks_pull)
BAD_SECRETS = [
    (
        PullSecret("ns", "s", "Opaque", {".dockerconfigjson": b64('{"auths":{}}')}),
        "only reads kubernetes.io/dockerconfigjson",
        False,
    ),
    (
        PullSecret("ns", "s", "kubernetes.io/dockerconfigjson", {".dockercfg": b64("{}")}),
        "no '.dockerconfigjson' key",
        False,
    ),
    (
        PullSecret("ns", "s", "kubernetes.io/dockercfg", {".dockerconfigjson": b64("{}")}),
        "no '.dockercfg' key",
        False,
    ),
    (
        PullSecret("ns", "s", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": "%%%"}),
        "not valid base64",
        False,
    ),
    (
        PullSecret("ns", "s", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": ""}),
        "is empty",
        False,
    ),
    (
        PullSecret(
            "ns",
            "s",
            "kubernetes.io/dockerconfigjson",
            {".dockerconfigjson": b64('{"auths": {"r.io": {"auth": "' + PASSWORD)},
        ),
        "not valid JSON",
        True,
    ),
    (
        PullSecret(
            "ns", "s", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64(b"\xff")}
        ),
        "not valid UTF-8",
        True,
    ),
    (
        PullSecret(
            "ns",
            "s",
            "kubernetes.io/dockerconfigjson",
            {".dockerconfigjson": b64('{"auths": {"r.io": {"password": NaN}}}')},
        ),
        "not valid JSON",
        True,
    ),
    (dockerconfigjson([1, 2]), "'auths' is an array", True),
    (dockerconfigjson({"r.io": PASSWORD}), 'entry "r.io" is a string, expected an object', True),
    (dockerconfigjson({"r.io": [PASSWORD]}), "is an array", True),
    (
        dockerconfigjson({"r.io": {"auth": b64(PASSWORD.replace(":", ""))}}),
        "must be base64 of username:password",
        True,
    ),
    (dockerconfigjson({"r.io": {"auth": "!!" + PASSWORD}}), "'auth' is not valid base64", True),
    (dockerconfigjson({"r.io": {"auth": "YWJjZA="}}), "'auth' is not valid base64", True),
    (dockerconfigjson({"r.io": {"auth": "YWJjZ"}}), "'auth' is not valid base64", True),
    (
        dockerconfigjson({"r.io": {"username": 7, "password": PASSWORD}}),
        "field 'username' is a number",
        True,
    ),
    (
        dockerconfigjson({"r.io": {"password": {"v": PASSWORD}}}),
        "field 'password' is an object",
        True,
    ),
    (dockercfg({"auths": {"r.io": {"auth": auth()}}}), "looks like a .dockerconfigjson", False),
    (dockercfg(["r.io"]), "the document is an array", True),
    (dockerconfigjson({}), "contains no registries", False),
    # No "auths" at all: the kubelet decodes it fine and sends nothing (pulls anonymously).
    (
        PullSecret(
            "ns",
            "s",
            "kubernetes.io/dockerconfigjson",
            {".dockerconfigjson": b64(json.dumps({"r.io": {"auth": auth()}}))},
        ),
        "has no 'auths' object, so the kubelet finds no credentials in it; its top level "
        "looks like a .dockercfg map",
        False,
    ),
    (
        PullSecret(
            "ns",
            "s",
            "kubernetes.io/dockerconfigjson",
            {".dockerconfigjson": b64(json.dumps({"credsStore": "desktop"}))},
        ),
        "has no 'auths' object",
        False,
    ),
    (
        dockerconfigjson({"r.io:abc": {"auth": auth()}}),
        "invalid port; the kubelet ignores it",
        False,
    ),
    (
        dockerconfigjson({"r.io": {"identitytoken": PASSWORD}}),
        "identitytoken and registrytoken are ignored",
        False,
    ),
]


@pytest.mark.parametrize(("secret", "fragment", "blocks"), BAD_SECRETS, ids=repr)
def test_secret_problems(secret: PullSecret, fragment: str, blocks: bool) -> None:
    keyring, problems = Keyring.from_secrets([secret])
    assert problems, "expected a problem"
    problem = problems[0]
    assert problem.secret == f"{secret.namespace}/{secret.name}"
    assert fragment in problem.reason
    assert problem.blocks_pull is blocks
    for p in problems:
        assert PASSWORD not in p.reason
        assert USERNAME not in p.reason
        assert "s3cr3t" not in p.reason
    if blocks:
        assert keyring.is_empty()


def test_problem_secret_does_not_hide_good_ones() -> None:
    bad = dockerconfigjson({"r.io": "oops"}, name="bad")
    good = dockerconfigjson({"r.io": {"auth": auth()}}, name="good")
    keyring, problems = Keyring.from_secrets([bad, good])
    assert [p.secret for p in problems] == ["team-a/bad"]
    assert users(keyring.lookup(parse("r.io/app"))) == [USERNAME]


def test_empty_credential_entry_is_still_offered() -> None:
    keyring, problems = Keyring.from_secrets([dockerconfigjson({"r.io": {"registrytoken": "t"}})])
    assert len(problems) == 1 and not problems[0].blocks_pull
    [cred] = keyring.lookup(parse("r.io/app"))
    assert (cred.username, cred.password) == ("", "")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Credential(USERNAME, PASSWORD, "secret ns/s", "r.io", "ns/s"),
        lambda: PullSecret("ns", "s", DCJ_TYPE, {".dockerconfigjson": b64(PASSWORD)}),
        lambda: Keyring.from_secrets([dockerconfigjson({"r.io": {"auth": auth()}})])[0],
        lambda: Keyring.from_secrets([dockerconfigjson({"r.io": {"auth": auth()}})])[0].lookup(
            parse("r.io/a")
        ),
        lambda: SecretProblem("ns/s", "x"),
    ],
)
def test_repr_never_shows_secret_material(make: object) -> None:
    obj = make()  # type: ignore[operator]
    for text in (repr(obj), str(obj)):
        assert PASSWORD not in text
        assert b64(PASSWORD) not in text
        assert auth() not in text


def test_credential_repr_shape() -> None:
    cred = Credential(USERNAME, PASSWORD, "secret ns/s", "r.io", "ns/s")
    assert repr(cred) == (
        "Credential(username='robot$ci', source='secret ns/s', key='r.io', password=<redacted>)"
    )


# --- docker config files (CLI) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "image", "expected_users", "problem"),
    [
        (json.dumps({"auths": {"r.io": {"auth": auth()}}}), "r.io/a", [USERNAME], None),
        (json.dumps({"auths": {"r.io": {"auth": auth()}}}).encode(), "r.io/a", [USERNAME], None),
        (json.dumps({"r.io": {"username": "u", "password": "p"}}), "r.io/a", ["u"], None),
        (
            json.dumps(
                {
                    "auths": {"https://index.docker.io/v1/": {"auth": auth()}},
                    "credsStore": "desktop",
                }
            ),
            "nginx",
            [USERNAME],
            "credential helpers",
        ),
        (json.dumps({"auths": {}}), "nginx", [], "contains no registries"),
        ("{not json", "nginx", [], "not valid JSON"),
        (json.dumps({"auths": {"r.io": {"auth": "bad"}}}), "r.io/a", [], "username:password"),
        (json.dumps({"auths": {"r.io": {"auth": "b"}}}), "r.io/a", [], "not valid base64"),
    ],
)
def test_from_docker_config(
    raw: str | bytes, image: str, expected_users: list[str], problem: str | None
) -> None:
    keyring, problems = Keyring.from_docker_config(raw, "~/.docker/config.json")
    assert users(keyring.lookup(parse(image))) == expected_users
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p.reason for p in problems)
        assert all(p.secret == "~/.docker/config.json" for p in problems)
    for p in problems:
        assert PASSWORD not in p.reason


def test_keys_are_listed_most_specific_first() -> None:
    keyring = keyring_for("a.io", "a.io/x", "b.io", "a.io/x/y")
    assert keyring.keys() == ["b.io", "a.io/x/y", "a.io/x", "a.io"]
    assert len(keyring) == 4
    assert Keyring().is_empty() and len(Keyring()) == 0
