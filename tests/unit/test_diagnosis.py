"""Observation -> Diagnosis rules, table-driven. The central honesty rule: "not found"
only from a 404 the registry gave to an authorised request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pullmedic.core.conclusion import conclude
from pullmedic.core.diagnosis import Cause, Diagnosis, Evidence, Fix
from pullmedic.core.nodeview import node_view
from pullmedic.core.observation import Observation

BASE: dict[str, Any] = {
    "image": "reg.example/team/app:1.2.3",
    "registry_host": "reg.example",
    "repository": "team/app",
    "manifest_ref": "1.2.3",
    "wanted_platform": "linux/amd64",
    "ping_status": 401,
    "observed_at": 1_700_000_000.0,
}
CRED = 'secret ns/regcred (.dockerconfigjson) key "reg.example"'


def obs(**kw: Any) -> Observation:
    return Observation(**{**BASE, **kw})


CASES: list[tuple[str, Observation, Cause, str]] = [
    ("invalid", obs(invalid_reason="invalid reference format"), Cause.InvalidReference, "high"),
    ("blocked", obs(failure="blocked", failure_detail="link-local"), Cause.BlockedAddress, "high"),
    ("dns", obs(failure="dns", failure_step="ping"), Cause.RegistryUnreachable, "high"),
    ("connect", obs(failure="connect"), Cause.RegistryUnreachable, "high"),
    ("tls", obs(failure="tls"), Cause.RegistryUnreachable, "high"),
    ("timeout", obs(failure="timeout"), Cause.RegistryUnreachable, "medium"),
    ("reset", obs(failure="reset"), Cause.RegistryUnreachable, "medium"),
    ("oversized", obs(failure="oversized", failure_step="manifest"), Cause.Unknown, "low"),
    (
        "429",
        obs(rate_limited=True, retry_after=30.0, manifest_status=429),
        Cause.RateLimited,
        "high",
    ),
    ("ping 503", obs(failure="5xx", ping_status=503), Cause.RegistryUnreachable, "medium"),
    (
        "manifest 502",
        obs(auth_scheme="none", ping_status=200, manifest_status=502),
        Cause.RegistryUnreachable,
        "medium",
    ),
    ("not a registry", obs(ping_status=404), Cause.Unknown, "medium"),
    # Open registry: 404 is authoritative.
    (
        "open tag missing",
        obs(auth_scheme="none", ping_status=200, manifest_status=404, tags_status=200),
        Cause.TagNotFound,
        "high",
    ),
    (
        "open repo missing",
        obs(
            auth_scheme="none",
            ping_status=200,
            manifest_status=404,
            tags_status=404,
            tags_codes=("NAME_UNKNOWN",),
        ),
        Cause.RepositoryNotFound,
        "high",
    ),
    (
        "open digest missing",
        obs(
            auth_scheme="none",
            ping_status=200,
            manifest_status=404,
            is_digest=True,
            manifest_ref="sha256:" + "a" * 64,
            tags_status=200,
        ),
        Cause.DigestNotFound,
        "high",
    ),
    (
        "bearer granted digest missing, tags unreadable",
        obs(
            auth_scheme="bearer",
            token_status=200,
            token_grants_pull=True,
            manifest_status=404,
            is_digest=True,
            manifest_ref="sha256:" + "a" * 64,
        ),
        Cause.DigestNotFound,
        "high",
    ),
    (
        "bearer not granted digest 404",
        obs(
            auth_scheme="bearer",
            token_status=200,
            token_grants_pull=False,
            manifest_status=404,
            is_digest=True,
            manifest_ref="sha256:" + "a" * 64,
        ),
        Cause.NotFoundOrPrivate,
        "medium",
    ),
    (
        "open tags unreadable",
        obs(auth_scheme="none", ping_status=200, manifest_status=404, tags_status=401),
        Cause.TagNotFound,
        "medium",
    ),
    # Bearer: the token's grant decides how sure a 404 is.
    (
        "bearer granted 404",
        obs(
            auth_scheme="bearer",
            token_status=200,
            token_grants_pull=True,
            manifest_status=404,
            tags_status=200,
        ),
        Cause.TagNotFound,
        "high",
    ),
    (
        "bearer not granted 404",
        obs(auth_scheme="bearer", token_status=200, token_grants_pull=False, manifest_status=404),
        Cause.NotFoundOrPrivate,
        "medium",
    ),
    (
        "bearer opaque 404",
        obs(
            auth_scheme="bearer",
            token_status=200,
            token_grants_pull=None,
            manifest_status=404,
            tags_status=404,
        ),
        Cause.RepositoryNotFound,
        "medium",
    ),
    (
        "bearer anon 401",
        obs(auth_scheme="bearer", token_status=200, token_grants_pull=False, manifest_status=401),
        Cause.NotFoundOrPrivate,
        "medium",
    ),
    (
        "bearer cred 401",
        obs(
            auth_scheme="bearer",
            credential=CRED,
            token_status=200,
            token_grants_pull=False,
            manifest_status=401,
        ),
        Cause.CredentialsRejected,
        "medium",
    ),
    (
        "token rejects cred",
        obs(auth_scheme="bearer", credential=CRED, token_status=401),
        Cause.CredentialsRejected,
        "high",
    ),
    (
        "token refuses anon",
        obs(auth_scheme="bearer", token_status=403),
        Cause.NotFoundOrPrivate,
        "medium",
    ),
    ("token 500", obs(auth_scheme="bearer", token_status=500), Cause.RegistryUnreachable, "medium"),
    ("token 400", obs(auth_scheme="bearer", token_status=400), Cause.Unknown, "low"),
    # Basic.
    (
        "basic anon",
        obs(auth_scheme="basic", manifest_status=401),
        Cause.AuthenticationRequired,
        "high",
    ),
    (
        "basic bad cred",
        obs(auth_scheme="basic", credential=CRED, manifest_status=401),
        Cause.CredentialsRejected,
        "high",
    ),
    (
        "basic cred 404",
        obs(auth_scheme="basic", credential=CRED, manifest_status=404, tags_status=200),
        Cause.TagNotFound,
        "high",
    ),
    (
        "basic cred 403",
        obs(auth_scheme="basic", credential=CRED, manifest_status=403, manifest_codes=("DENIED",)),
        Cause.CredentialsRejected,
        "high",
    ),
    (
        "anon 403",
        obs(auth_scheme="bearer", token_status=200, manifest_status=403),
        Cause.NotFoundOrPrivate,
        "medium",
    ),
    (
        "malformed secret explains anon",
        obs(auth_scheme="basic", manifest_status=401, secret_problems=(("ns/bad", "not base64"),)),
        Cause.MalformedSecret,
        "medium",
    ),
    # Available / platform.
    (
        "available",
        obs(
            auth_scheme="none",
            manifest_status=200,
            platform_matched=True,
            integrity_checked=True,
            digest="sha256:" + "b" * 64,
        ),
        Cause.ImageAvailable,
        "high",
    ),
    (
        "available, blobs not all checked",
        obs(auth_scheme="none", manifest_status=200, platform_matched=True),
        Cause.ImageAvailable,
        "medium",
    ),
    (
        "listed but a layer is gone",
        obs(
            auth_scheme="none",
            manifest_status=200,
            platform_matched=True,
            integrity_checked=True,
            integrity_problem="layer 2 sha256:" + "c" * 64 + " is missing (404)",
        ),
        Cause.ImageIncomplete,
        "high",
    ),
    (
        "config unreadable and gone",
        obs(
            auth_scheme="none",
            manifest_status=200,
            platform_matched=None,
            integrity_checked=True,
            integrity_problem="config blob sha256:" + "d" * 64 + " is missing (404)",
        ),
        Cause.ImageIncomplete,
        "high",
    ),
    (
        "available unchecked",
        obs(auth_scheme="none", manifest_status=200, platform_matched=None),
        Cause.ImageAvailable,
        "medium",
    ),
    (
        "platform mismatch",
        obs(
            auth_scheme="none",
            manifest_status=200,
            platform_matched=False,
            available_platforms=("linux/arm64", "linux/s390x"),
        ),
        Cause.PlatformMismatch,
        "high",
    ),
    ("weird status", obs(auth_scheme="none", manifest_status=418), Cause.Unknown, "low"),
]


@pytest.mark.parametrize(
    ("name", "observation", "cause", "confidence"), CASES, ids=[c[0] for c in CASES]
)
def test_rules(name: str, observation: Observation, cause: Cause, confidence: str) -> None:
    d = conclude(observation)
    assert (d.cause, d.confidence) == (cause, confidence), d.summary
    assert d.summary and d.summary.endswith(".")
    assert "\n" not in d.summary


# Observations that two phases would answer: the more certain phase must win.
PHASE_ORDER: list[tuple[str, Observation, Cause]] = [
    (
        "reference before reachability",
        obs(invalid_reason="bad", failure="dns"),
        Cause.InvalidReference,
    ),
    ("blocked before rate limit", obs(failure="blocked", rate_limited=True), Cause.BlockedAddress),
    ("rate limit before failure", obs(rate_limited=True, failure="reset"), Cause.RateLimited),
    ("failure before token", obs(failure="dns", token_status=401), Cause.RegistryUnreachable),
    (
        "token before manifest",
        obs(token_status=401, credential=CRED, manifest_status=503),
        Cause.CredentialsRejected,
    ),
    (
        "failing manifest before anything it says",
        obs(auth_scheme="basic", credential=CRED, manifest_status=500, platform_matched=False),
        Cause.RegistryUnreachable,
    ),
    (
        "platform before integrity",
        obs(manifest_status=200, platform_matched=False, integrity_problem="layer 1 missing"),
        Cause.PlatformMismatch,
    ),
]


@pytest.mark.parametrize(
    ("name", "observation", "cause"), PHASE_ORDER, ids=[c[0] for c in PHASE_ORDER]
)
def test_phase_order(name: str, observation: Observation, cause: Cause) -> None:
    assert conclude(observation).cause is cause


def test_not_found_wording_is_honest_without_grant() -> None:
    d = conclude(
        obs(auth_scheme="bearer", token_status=200, token_grants_pull=False, manifest_status=401)
    )
    assert "private or does not exist" in d.summary


def test_credentials_rejected_names_secret() -> None:
    d = conclude(obs(auth_scheme="basic", credential=CRED, manifest_status=401))
    assert "ns/regcred" in d.summary
    assert d.details["credential"] == CRED


def test_rate_limited_details() -> None:
    d = conclude(
        obs(
            rate_limited=True,
            retry_after=60.0,
            ratelimit_limit="100;w=21600",
            ratelimit_remaining="0;w=21600",
        )
    )
    assert d.details["retryAfterSeconds"] == 60.0
    assert d.details["retryAt"] == "2023-11-14T22:14:20Z"
    assert d.details["rateLimitRemaining"] == "0;w=21600"
    d2 = conclude(obs(rate_limited=True))
    assert "retryAt" not in d2.details and "no Retry-After" in d2.summary


def test_unreachable_details_carry_failure_kind() -> None:
    for kind in ("dns", "connect", "tls", "timeout", "reset"):
        d = conclude(obs(failure=kind, failure_step="manifest"))
        assert d.details["failure"] == kind and d.details["step"] == "manifest"


def test_platform_mismatch_lists_platforms() -> None:
    d = conclude(
        obs(
            auth_scheme="none",
            manifest_status=200,
            platform_matched=False,
            available_platforms=("linux/arm64",),
        )
    )
    assert d.details["availablePlatforms"] == ["linux/arm64"]
    assert "linux/arm64" in d.summary


def test_to_dict_is_json_and_secret_free() -> None:
    ev = (
        Evidence(
            "manifest",
            "HEAD",
            "https://reg.example/v2/team/app/manifests/1.2.3",
            404,
            ("MANIFEST_UNKNOWN",),
            "",
            CRED,
        ),
    )
    d = Diagnosis(
        "img",
        Cause.TagNotFound,
        "high",
        "Tag missing.",
        ev,
        {"registry": "r"},
        None,
        Fix(kind="tag", reason="newest patch", image="img:1.2.4", digest="sha256:" + "c" * 64),
    )
    text = json.dumps(d.to_dict())
    back = json.loads(text)
    assert back["cause"] == "TagNotFound"
    assert back["fix"]["image"] == "img:1.2.4"
    assert back["evidence"][0]["errorCodes"] == ["MANIFEST_UNKNOWN"]
    assert "password" not in text.lower()


def test_evidence_line() -> None:
    e = Evidence("token", "GET", "https://auth/token?service=s", 401, (), "", CRED)
    line = e.line()
    assert line.startswith("token GET https://auth/token?service=s -> 401")
    assert "ns/regcred" in line


def test_cause_values_are_stable() -> None:
    assert {c.value for c in Cause} == {
        "InvalidReference",
        "TagNotFound",
        "DigestNotFound",
        "RepositoryNotFound",
        "NotFoundOrPrivate",
        "AuthenticationRequired",
        "CredentialsRejected",
        "CredentialsExpired",
        "RateLimited",
        "RegistryUnreachable",
        "PlatformMismatch",
        "ImageIncomplete",
        "NodeCredentialsUnknown",
        "CredentialProviderFailed",
        "ImageAvailable",
        "BlockedAddress",
        "MalformedSecret",
        "Unknown",
    }


# ---- registries whose credentials live on the nodes ----------------------------------


def _auth_required() -> Diagnosis:
    return conclude(obs(auth_scheme="bearer", token_status=200, manifest_status=401))


@pytest.mark.parametrize(
    ("kubelet", "confidence", "says"),
    [
        (
            'failed to pull and unpack image "x": failed to resolve reference "x": '
            "pull access denied, repository does not exist or may require authorization: "
            "server message: insufficient_scope: authorization failed",
            "medium",
            "refused too",
        ),
        (
            'rpc error: code = NotFound desc = failed to pull and unpack image "x": failed to '
            'resolve reference "x": x: not found',
            "medium",
            "not found",
        ),
        ('Back-off pulling image "x"', "low", "unknown"),
        ("", "low", "unknown"),
    ],
)
def test_node_view_of_a_credential_failure(kubelet: str, confidence: str, says: str) -> None:
    d = node_view(_auth_required(), kubelet, "123.dkr.ecr.eu-west-1.amazonaws.com")
    assert d.cause is Cause.NodeCredentialsUnknown
    assert d.confidence == confidence
    assert says in d.summary and "123.dkr.ecr.eu-west-1.amazonaws.com" in d.summary
    assert d.details["probeCause"] == str(_auth_required().cause)
    assert ("kubeletMessage" in d.details) == bool(kubelet)


def test_node_view_leaves_other_causes_alone() -> None:
    tag = conclude(obs(auth_scheme="none", manifest_status=404, tags_status=200))
    assert node_view(tag, "401 Unauthorized", "h") is tag


def test_a_secret_the_kubelet_ignores_is_evidence_when_credentials_are_needed() -> None:
    d = conclude(
        obs(
            auth_scheme="basic",
            manifest_status=401,
            secret_problems=(("ns/bad", ".dockerconfigjson has no 'auths' object"),),
        )
    )
    assert d.cause is Cause.MalformedSecret
    assert "ns/bad" in d.summary and "no 'auths' object" in d.summary
    assert [e.note for e in d.evidence if e.kind == "secret"] == [
        "ns/bad: .dockerconfigjson has no 'auths' object"
    ]
