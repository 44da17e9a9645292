"""The emulator's own reference parser and keyring against the operator's test tables.

Two implementations of the kubelet's rules, written apart (sandbox/imageref.py and
sandbox/creds.py for the emulator, pullmedic.core.reference and pullmedic.core.keyring for the
operator), checked against the same upstream-derived cases: a disagreement is a bug in
one of them, instead of a bug shared by both.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sandbox import creds, imageref
from tests.unit import test_keyring, test_reference


def _table(fn: Any) -> list[Any]:
    return next(m.args[1] for m in fn.pytestmark if m.name == "parametrize")


@pytest.mark.parametrize(("image", "domain", "path", "tag", "digest"), test_reference.VALID)
def test_emulator_parses_what_the_kubelet_accepts(
    image: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = imageref.parse(image)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)


@pytest.mark.parametrize(
    ("image", "reason"),
    [row for row in test_reference.INVALID if isinstance(row[0], str)],
    ids=lambda v: repr(v)[:60],
)
def test_emulator_refuses_what_the_kubelet_refuses(image: str, reason: str) -> None:
    with pytest.raises(imageref.InvalidReference) as info:
        imageref.parse(image)
    assert reason in str(info.value)
    assert str(info.value).startswith("couldn't parse image name ")


def _ring(*keys: str) -> creds.Keyring:
    entries = {k: {"username": f"user-for-{k}", "password": "x"} for k in keys}
    doc = base64.b64encode(json.dumps({"auths": entries}).encode()).decode()
    secret = creds.PullSecret(
        "ns", "s", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": doc}
    )
    return creds.Keyring.from_secrets([secret])


@pytest.mark.parametrize(("key", "image", "expected"), test_keyring.MATCHES, ids=repr)
def test_emulator_key_matching(key: str, image: str, expected: bool) -> None:
    normalised = creds._key(key) if key else None
    name = imageref.parse(image).name
    assert bool(normalised is not None and creds._matches(normalised, name)) is expected


@pytest.mark.parametrize(("keys", "image", "users"), _table(test_keyring.test_lookup), ids=repr)
def test_emulator_lookup_order(keys: list[str], image: str, users: list[str]) -> None:
    assert [c.username for c in _ring(*keys).lookup(imageref.parse(image))] == users


def test_undecodable_auth_fails_the_pull_like_the_kubelet() -> None:
    doc = base64.b64encode(json.dumps({"auths": {"h:5000": {"auth": "bm9jb2xvbg"}}}).encode())
    secret = creds.PullSecret(
        "ns", "s", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": doc.decode()}
    )
    with pytest.raises(creds.SecretUnreadable, match=r"as base64\(username:password\)"):
        creds.Keyring.from_secrets([secret])


def test_emulator_does_not_import_the_operator() -> None:
    """In a fresh interpreter that could import pullmedic, loading the emulator does not."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    code = (
        "import sys, sandbox.emulator, sandbox.env; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pullmedic'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=repo,
        env={"PYTHONPATH": f"{repo}:{repo / 'operator'}", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"
