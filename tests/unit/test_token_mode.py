"""KEP-4412 service-account-token mode, as the kubelet decides it (plugin.go ``provide``,
``getServiceAccountData``, ``getServiceAccountToken``, ``generateServiceAccountCacheKey``)."""

from __future__ import annotations

import pytest

from pullmedic.core.credentialprovider import TokenAttributes
from pullmedic.core.providerexchange import AuthEntry, CacheKeyType, PluginResponse
from pullmedic.core.tokenmode import (
    PodIdentity,
    ServiceAccountInfo,
    TokenMode,
    TokenModeSkip,
    TokenSkipReason,
    echoes_token,
    service_account_cache_key,
    token_mode,
    token_request,
)

AUD = "registry.example"
POD = PodIdentity("team", "puller", "app-1", "pod-uid-1")
SA = ServiceAccountInfo("team", "puller", "sa-uid-1", {"r/role": "pull", "o/hint": "x", "z": "1"})


def attrs(require: bool = True, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()):
    return TokenAttributes(AUD, require, "ServiceAccount", required, optional)


@pytest.mark.parametrize(
    ("a", "identity", "account", "want"),
    [
        # a ServiceAccount, nothing required: a token for the audience, no annotations
        (attrs(), POD, SA, {}),
        # required and optional keys present: both sent, others never
        (
            attrs(required=("r/role",), optional=("o/hint",)),
            POD,
            SA,
            {"r/role": "pull", "o/hint": "x"},
        ),
        # an optional key missing is simply not sent
        (attrs(optional=("o/absent",)), POD, SA, {}),
        # a required key missing: the kubelet does not run the plugin
        (attrs(required=("r/absent",)), POD, SA, TokenSkipReason.RequiredAnnotationMissing),
        # no ServiceAccount and requireServiceAccount: true: not run
        (attrs(True), PodIdentity("team", "", "static"), None, TokenSkipReason.NoServiceAccount),
        # no ServiceAccount and requireServiceAccount: false: run without a token
        (attrs(False), PodIdentity("team", "", "static"), None, None),
        # the ServiceAccount does not exist: not run
        (attrs(), POD, None, TokenSkipReason.ServiceAccountNotFound),
        # whose pull it is is not known (the CLI without --service-account)
        (attrs(), None, SA, TokenSkipReason.ServiceAccountUnknown),
    ],
)
def test_what_the_kubelet_sends(a, identity, account, want) -> None:
    got = token_mode(a, identity, account)
    if isinstance(want, TokenSkipReason):
        assert isinstance(got, TokenModeSkip) and got.reason is want
        assert got.message
    elif want is None:
        assert isinstance(got, TokenMode) and got.account is None and not got.annotations
    else:
        assert isinstance(got, TokenMode)
        assert got.audience == AUD and got.account == account and dict(got.annotations) == want


def test_missing_required_annotation_is_named() -> None:
    got = token_mode(attrs(required=("r/absent",)), POD, SA)
    assert isinstance(got, TokenModeSkip)
    assert "r/absent" in got.message and "team/puller" in got.message


def test_token_request_is_bound_to_the_pod() -> None:
    body = token_request(AUD, POD, "sa-uid-1")
    assert body["kind"] == "TokenRequest"
    assert body["metadata"] == {"uid": "sa-uid-1"}
    spec = body["spec"]
    assert isinstance(spec, dict)
    assert spec["audiences"] == [AUD]
    assert spec["boundObjectRef"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "app-1",
        "uid": "pod-uid-1",
    }
    assert 600 <= int(spec["expirationSeconds"]) <= 3600  # short: it serves one probe


def test_token_request_without_a_pod_is_unbound() -> None:
    body = token_request(AUD, PodIdentity("team", "puller"))
    spec = body["spec"]
    assert isinstance(spec, dict) and "boundObjectRef" not in spec and "metadata" not in body


def _mode(
    account: ServiceAccountInfo | None, annotations: dict[str, str] | None = None
) -> TokenMode:
    return TokenMode(AUD, account, annotations or {})


@pytest.mark.parametrize(
    ("a", "b", "cache_type", "same"),
    [
        # ServiceAccount cache: the same account and annotations share an entry, whatever
        # the token
        ((_mode(SA), "t1"), (_mode(SA), "t2"), "ServiceAccount", True),
        # Token cache: each token its own entry
        ((_mode(SA), "t1"), (_mode(SA), "t2"), "Token", False),
        ((_mode(SA), "t1"), (_mode(SA), "t1"), "Token", True),
        # another account, namespace or uid (recreated under the same name): another entry
        (
            (_mode(SA), "t"),
            (_mode(ServiceAccountInfo("team", "other", "u2")), "t"),
            "ServiceAccount",
            False,
        ),
        (
            (_mode(SA), "t"),
            (_mode(ServiceAccountInfo("qa", "puller", "sa-uid-1")), "t"),
            "ServiceAccount",
            False,
        ),
        (
            (_mode(SA), "t"),
            (_mode(ServiceAccountInfo("team", "puller", "sa-uid-2")), "t"),
            "ServiceAccount",
            False,
        ),
        # other annotations sent: another entry
        (
            (_mode(SA, {"r/role": "a"}), "t"),
            (_mode(SA, {"r/role": "b"}), "t"),
            "ServiceAccount",
            False,
        ),
        # length-prefixed: no two splits of the same characters collide
        (
            (_mode(ServiceAccountInfo("ab", "c", "u")), "t"),
            (_mode(ServiceAccountInfo("a", "bc", "u")), "t"),
            "ServiceAccount",
            False,
        ),
    ],
)
def test_cache_key_in_token_mode(a, b, cache_type, same) -> None:
    ka = service_account_cache_key(a[0], cache_type, a[1])
    kb = service_account_cache_key(b[0], cache_type, b[1])
    assert (ka == kb) is same
    assert a[1] not in ka  # the token never is the key


def test_no_account_no_service_account_key() -> None:
    assert service_account_cache_key(_mode(None), "Token", "") == ""


@pytest.mark.parametrize(
    ("password", "cache_type", "echoed"),
    [("tok", "ServiceAccount", True), ("tok", "Token", False), ("other", "ServiceAccount", False)],
)
def test_an_echoed_token_is_discarded_unless_token_cache(password, cache_type, echoed) -> None:
    r = PluginResponse(CacheKeyType.Registry, None, (AuthEntry("reg.example", "u", password),))
    assert echoes_token(r, "tok", cache_type) is echoed


def test_identity_of_a_pod() -> None:
    pod = {
        "metadata": {"namespace": "team", "name": "app-1", "uid": "u1"},
        "spec": {"serviceAccountName": "puller"},
    }
    assert PodIdentity.of_pod(pod) == PodIdentity("team", "puller", "app-1", "u1")
    assert PodIdentity.of_pod({"metadata": {"namespace": "x"}, "spec": {}}).service_account == ""


def test_service_account_of_an_object() -> None:
    obj = {
        "metadata": {"namespace": "team", "name": "puller", "uid": "u", "annotations": {"a": "b"}}
    }
    assert ServiceAccountInfo.of(obj) == ServiceAccountInfo("team", "puller", "u", {"a": "b"})
