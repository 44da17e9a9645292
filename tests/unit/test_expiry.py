"""An expired registry token in a pull secret is its own cause, not "wrong credentials"."""

from __future__ import annotations

import base64
import json

import pytest

from pullmedic.core.diagnosis import Cause, Diagnosis, Evidence
from pullmedic.core.expiry import expired_view, token_expiry
from pullmedic.core.keyring import Credential

NOW = 1_800_000_000.0


def ecr_token(expiration: object) -> str:
    doc = {"payload": "opaque", "datakey": "opaque", "version": "2", "type": "DATA_KEY"}
    if expiration is not None:
        doc["expiration"] = expiration
    return base64.b64encode(json.dumps(doc).encode()).decode()


def jwt(claims: dict[str, object]) -> str:
    def part(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256'})}.{part(claims)}.c2ln"


@pytest.mark.parametrize(
    ("password", "expiry"),
    [
        (ecr_token(1_700_000_000), 1_700_000_000.0),
        (ecr_token(None), None),
        (ecr_token("soon"), None),
        (ecr_token(True), None),
        (jwt({"exp": 1_700_000_123, "sub": "x"}), 1_700_000_123.0),
        (jwt({"sub": "x"}), None),
        ("a.b.c", None),
        ("plain-password", None),
        ("", None),
        (base64.b64encode(b"\xff\xfe").decode(), None),
    ],
)
def test_token_expiry(password: str, expiry: float | None) -> None:
    assert token_expiry(password) == expiry


LABEL = 'pull secret ns/ecr (.dockerconfigjson) key "123456789012.dkr.ecr.us-east-1.amazonaws.com"'


def rejected(cause: Cause = Cause.CredentialsRejected, label: str = LABEL) -> Diagnosis:
    return Diagnosis(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app:1",
        cause,
        "high",
        "rejected",
        (Evidence("manifest", status=401, credential=label),),
        {"credential": label},
    )


def cred(password: str) -> Credential:
    return Credential(
        "AWS", password, LABEL, "123456789012.dkr.ecr.us-east-1.amazonaws.com", "ns/ecr"
    )


def test_expired_token_is_its_own_cause() -> None:
    token = ecr_token(NOW - 3600)
    d = expired_view(rejected(), [cred(token)], NOW)
    assert d.cause is Cause.CredentialsExpired
    assert d.details["probeCause"] == "CredentialsRejected"
    assert d.details["expiredAt"] == "2027-01-15T07:00:00Z"
    assert "pull secret ns/ecr" in d.summary and "credential provider" in d.summary
    assert token not in json.dumps(d.to_dict())


@pytest.mark.parametrize(
    ("diagnosis", "password"),
    [
        (rejected(), ecr_token(NOW + 3600)),  # not expired yet: just wrong
        (rejected(), "plain-password"),  # says nothing: just wrong
        (rejected(Cause.AuthenticationRequired), ecr_token(NOW - 3600)),
        (rejected(label="another credential"), ecr_token(NOW - 3600)),
    ],
)
def test_other_cases_are_left_alone(diagnosis: Diagnosis, password: str) -> None:
    assert expired_view(diagnosis, [cred(password)], NOW) is diagnosis
