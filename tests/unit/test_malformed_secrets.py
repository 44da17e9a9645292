"""A pull secret the kubelet cannot use is named by the diagnosis, with what is wrong in it.

Each malformed form goes through the operator's own path: the keyring reads the secret as
the kubelet would, the prober diagnoses with the problems it found, and the diagnosis
carries the secret's name and the problem in its summary and as evidence. Forms the
kubelet fails on need no registry at all; forms it silently ignores (no ``auths``) only
matter when the registry wants credentials, so a Basic registry answers 401 here.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from pullmedic.core.diagnosis import Cause
from pullmedic.core.dockerconfig import PullSecret
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.probe.prober import Prober

IMAGE = "registry.example.com/team/app:1.0"
SECRET = "team-a/regcred"


def b64(raw: bytes | str) -> str:
    return base64.b64encode(raw.encode() if isinstance(raw, str) else raw).decode()


def secret(document: bytes | str) -> PullSecret:
    return PullSecret(
        "team-a", "regcred", "kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64(document)}
    )


def auths(entry: dict[str, str]) -> str:
    return json.dumps({"auths": {"registry.example.com": entry}})


def registry(request: httpx.Request) -> httpx.Response:
    """A registry that wants a Basic login for everything."""
    return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})


# (secret document, what the diagnosis must say is wrong, does the kubelet fail on it?)
MALFORMED = [
    (auths({"auth": "%%%not-base64"}), "'auth' is not valid base64", True),
    (auths({"auth": "dXNlc"}), "'auth' is not valid base64", True),  # a 5-char base64 tail
    (auths({"auth": b64("no-colon-here")}), "must be base64 of username:password", True),
    ('{"auths": {"registry.example.com": {"auth": ', "is not valid JSON", True),
    ("not json at all", "is not valid JSON", True),
    (json.dumps({"auths": ["registry.example.com"]}), "'auths' is an array", True),
    (
        json.dumps({"registry.example.com": {"auth": b64("u:p")}}),
        "has no 'auths' object",
        False,
    ),
]


@pytest.mark.parametrize(("document", "wrong", "kubelet_fails"), MALFORMED)
async def test_the_diagnosis_names_the_secret_and_what_is_wrong(
    document: str, wrong: str, kubelet_fails: bool
) -> None:
    keyring, problems = Keyring.from_secrets([secret(document)])
    assert [(p.secret, p.blocks_pull) for p in problems] == [(SECRET, kubelet_fails)]
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return registry(request)

    async with Prober(transport=httpx.MockTransport(answer)) as prober:
        d = await prober.diagnose(
            IMAGE, keyring, Platform.parse("linux/amd64"), secret_problems=problems
        )
    assert d.cause is Cause.MalformedSecret
    assert SECRET in d.summary and wrong in d.summary
    notes = [e.note for e in d.evidence if e.kind == "secret"]
    assert any(SECRET in n and wrong in n for n in notes), notes
    assert d.details["malformedSecrets"] == SECRET
    # The kubelet never pulls with a secret it cannot decode: neither does the probe.
    assert (sent == []) is kubelet_fails
    assert "u:p" not in json.dumps(d.to_dict()) and b64("u:p") not in json.dumps(d.to_dict())
