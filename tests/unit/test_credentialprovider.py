"""The kubelet's credential provider protocol: config, matchImages, request, response, cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pullmedic.core.credentialprovider import ProviderConfigError, parse_config, parse_duration
from pullmedic.core.keyring import Keyring
from pullmedic.core.providerexchange import (
    CacheKeyType,
    PluginResponse,
    PluginResponseError,
    ProviderCache,
    build_request,
    parse_response,
)
from pullmedic.core.reference import parse
from pullmedic.core.registrykeys import pattern_matches

V1 = "credentialprovider.kubelet.k8s.io/v1"
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def config(**provider: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": "ecr-credential-provider",
        "matchImages": ["*.dkr.ecr.*.amazonaws.com"],
        "defaultCacheDuration": "12h",
        "apiVersion": V1,
    }
    p.update(provider)
    return {
        "apiVersion": "kubelet.config.k8s.io/v1",
        "kind": "CredentialProviderConfig",
        "providers": [{k: v for k, v in p.items() if v is not None}],
    }


# ---- matchImages globs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "image", "match"),
    [
        ("*.dkr.ecr.*.amazonaws.com", f"{ECR}/team/app:1.0", True),
        ("*.dkr.ecr.*.amazonaws.com", "dkr.ecr.us-east-1.amazonaws.com/app", False),
        ("*.dkr.ecr.*.amazonaws.com", f"a.{ECR}/app", False),  # one label per *
        ("*.amazonaws.com", f"{ECR}/app", False),
        ("*.*.*.*.amazonaws.com", f"{ECR}/app", True),
        ("*.azurecr.io", "myreg.azurecr.io/app:1", True),
        ("*.azurecr.io", "azurecr.io/app:1", False),
        ("gcr.io", "gcr.io/proj/app:1", True),
        ("*.gcr.io", "gcr.io/proj/app:1", False),
        ("*-docker.pkg.dev", "europe-docker.pkg.dev/p/r/app:1", True),
        ("registry.example:5000", "registry.example:5000/app", True),
        ("registry.example:5000", "registry.example/app", False),  # ports must be equal
        ("registry.example", "registry.example:5000/app", False),
        ("registry.example/team", "registry.example/team/app", True),  # path prefix
        ("registry.example/team", "registry.example/other/app", False),
        ("https://registry.example", "registry.example/app", True),  # scheme dropped
        ("Registry.example", "registry.example/app", False),  # case-sensitive
        ("[bad", "registry.example/app", False),
        ("*", "nginx", False),  # docker.io has two labels
        ("*.*", "nginx", True),
    ],
)
def test_match_images(pattern: str, image: str, match: bool) -> None:
    assert pattern_matches(pattern, parse(image)) is match


def test_provider_matches_any_pattern() -> None:
    (p,) = parse_config(config(matchImages=["*.azurecr.io", "*.dkr.ecr.*.amazonaws.com"]))
    assert p.matches(parse(f"{ECR}/a:1"))
    assert not p.matches(parse("quay.io/a:1"))


# ---- config -----------------------------------------------------------------------------


def test_config_parses() -> None:
    (p,) = parse_config(
        config(args=["get-credentials"], env=[{"name": "AWS_PROFILE", "value": "x"}])
    )
    assert p.name == "ecr-credential-provider"
    assert p.default_cache_duration == 12 * 3600
    assert p.args == ("get-credentials",)
    assert p.env == (("AWS_PROFILE", "x"),)
    assert p.token_attributes is None
    assert p.label == "credential provider ecr-credential-provider"
    assert "AWS_PROFILE" not in repr(p)  # env values may be secrets


def test_token_attributes() -> None:
    (p,) = parse_config(
        config(
            tokenAttributes={
                "serviceAccountTokenAudience": "sts.example",
                "requireServiceAccount": True,
                "cacheType": "ServiceAccount",
                "requiredServiceAccountAnnotationKeys": ["example.com/role"],
                "optionalServiceAccountAnnotationKeys": ["example.com/region"],
            }
        )
    )
    assert p.token_attributes is not None
    assert p.token_attributes.audience == "sts.example"
    assert p.token_attributes.required_annotation_keys == ("example.com/role",)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([], "must be an object"),
        ({"kind": "KubeletConfiguration"}, "CredentialProviderConfig"),
        ({**config(), "apiVersion": "v1"}, "apiVersion"),
        ({**config(), "providers": []}, "at least one provider"),
        (config(name=""), "name is required"),
        (config(name="../bin/sh"), "plain file name"),
        (config(matchImages=[]), "matchImages is required"),
        (config(matchImages="*.io"), "list of strings"),
        (config(matchImages=["bad host/x"]), "matchImages entry is invalid"),
        (config(defaultCacheDuration=None), "defaultCacheDuration is required"),
        (config(defaultCacheDuration="12 hours"), "defaultCacheDuration"),
        (config(defaultCacheDuration="-1h"), "must not be negative"),
        (config(apiVersion=None), "apiVersion is required"),
        (config(apiVersion="credentialprovider.kubelet.k8s.io/v2"), "not one the kubelet"),
        (config(env=[{"value": "x"}]), "env entries"),
        (config(tokenAttributes={"requireServiceAccount": True}), "Audience is required"),
        (
            config(tokenAttributes={"serviceAccountTokenAudience": "a"}),
            "requireServiceAccount is required",
        ),
        (
            config(
                apiVersion="credentialprovider.kubelet.k8s.io/v1beta1",
                tokenAttributes={"serviceAccountTokenAudience": "a", "requireServiceAccount": True},
            ),
            "needs apiVersion",
        ),
        (
            config(
                tokenAttributes={
                    "serviceAccountTokenAudience": "a",
                    "requireServiceAccount": False,
                    "requiredServiceAccountAnnotationKeys": ["k"],
                }
            ),
            "requireServiceAccount: true",
        ),
    ],
)
def test_bad_config_is_a_typed_error(doc: Any, says: str) -> None:
    with pytest.raises(ProviderConfigError, match=says):
        parse_config(doc)


def test_duplicate_provider_names() -> None:
    doc = config()
    doc["providers"] = doc["providers"] * 2
    with pytest.raises(ProviderConfigError, match="duplicate"):
        parse_config(doc)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("0s", 0), ("12h", 43200), ("1h30m", 5400), ("1.5s", 1.5), ("500ms", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "12", "h", "1d", "1h 2m", "--1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ---- request and response ---------------------------------------------------------------


def test_request() -> None:
    doc = json.loads(build_request(f"{ECR}/team/app"))
    assert doc == {
        "kind": "CredentialProviderRequest",
        "apiVersion": V1,
        "image": f"{ECR}/team/app",
    }
    doc = json.loads(
        build_request("i", service_account_token="t", service_account_annotations={"a": "b"})
    )
    assert doc["serviceAccountToken"] == "t" and doc["serviceAccountAnnotations"] == {"a": "b"}


def response(**kw: Any) -> bytes:
    doc: dict[str, Any] = {
        "kind": "CredentialProviderResponse",
        "apiVersion": V1,
        "cacheKeyType": "Registry",
        "auth": {ECR: {"username": "AWS", "password": "s3cret-token"}},
    }
    doc.update(kw)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_response_parses() -> None:
    r = parse_response(response(cacheDuration="6h0m0s"), V1)
    assert r.cache_key_type is CacheKeyType.Registry
    assert r.cache_duration == 6 * 3600
    assert [(a.pattern, a.username) for a in r.auth] == [(ECR, "AWS")]
    assert "s3cret" not in repr(r)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "not a JSON document"),
        (b"\xff\xfe", "not a JSON document"),
        (b"s3cret-token", "not a JSON document"),
        (b"[]", "not a JSON object"),
        (response(apiVersion="credentialprovider.kubelet.k8s.io/v1beta1"), "apiVersion"),
        (response(kind="CredentialProviderRequest"), "kind"),
        (response(cacheKeyType=None), "cacheKeyType"),
        (response(cacheKeyType="Pod"), "cacheKeyType"),
        (response(cacheDuration="soon"), "cacheDuration"),
        (response(auth=["s3cret-token"]), "auth is not an object"),
        (response(auth={ECR: "s3cret-token"}), "not an object"),
        (response(auth={ECR: {"username": "AWS", "password": 5}}), "not a string"),
    ],
)
def test_bad_response_is_a_typed_error_without_secrets(raw: bytes, says: str) -> None:
    with pytest.raises(PluginResponseError, match=says) as info:
        parse_response(raw, V1)
    assert "s3cret" not in str(info.value)


# ---- the cache --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resp(kind: CacheKeyType, duration: float | None) -> PluginResponse:
    return PluginResponse(kind, duration, ())


IMG = f"{ECR}/team/app"


@pytest.mark.parametrize(
    ("kind", "other", "hit"),
    [
        (CacheKeyType.Image, IMG, True),
        (CacheKeyType.Image, f"{ECR}/team/other", False),
        (CacheKeyType.Registry, f"{ECR}/team/other", True),
        (CacheKeyType.Registry, "987654321098.dkr.ecr.us-east-1.amazonaws.com/x", False),
        (CacheKeyType.Global, "quay.io/anything", True),
    ],
)
def test_cache_key_types(kind: CacheKeyType, other: str, hit: bool) -> None:
    cache = ProviderCache(Clock())
    cache.put(IMG, resp(kind, 60), 0)
    assert (cache.get(other) is not None) is hit


@pytest.mark.parametrize(
    ("duration", "default", "alive_at", "cached"),
    [
        (60.0, 0.0, 59, True),
        (60.0, 0.0, 61, False),
        (None, 300.0, 299, True),  # no cacheDuration: the provider's default
        (None, 300.0, 301, False),
        (None, 0.0, 0, False),  # default 0: not cached
        (0.0, 300.0, 0, False),  # an explicit 0: never cached
    ],
)
def test_cache_durations(
    duration: float | None, default: float, alive_at: float, cached: bool
) -> None:
    clock = Clock()
    cache = ProviderCache(clock)
    cache.put(IMG, resp(CacheKeyType.Registry, duration), default)
    clock.now += alive_at
    assert (cache.get(IMG) is not None) is cached


def test_cache_separates_service_accounts() -> None:
    cache = ProviderCache(Clock())
    cache.put(IMG, resp(CacheKeyType.Global, 60), 0, sa_key="ns/a")
    assert cache.get(IMG, "ns/a") is not None
    assert cache.get(IMG, "ns/b") is None
    assert cache.get(IMG) is None


# ---- the keyring: pod secrets first, then the providers ---------------------------------


def test_union_keyring_order() -> None:
    secret_kr = Keyring.from_docker_config(
        json.dumps({"auths": {ECR: {"username": "u", "password": "p"}}}), "secret ns/s"
    )[0]
    provider_kr, problems = Keyring.from_provider(
        "credential provider ecr-credential-provider", [(ECR, "AWS", "tok")]
    )
    assert not problems
    both = Keyring.union(secret_kr, provider_kr)
    creds = both.lookup(parse(f"{ECR}/team/app:1"))
    assert [c.username for c in creds] == ["u", "AWS"]
    assert creds[1].source.startswith("credential provider ecr-credential-provider")
    assert len(both) == 2 and not both.is_empty()
    assert Keyring.union(Keyring(), Keyring()).is_empty()
    assert both.lookup(parse("quay.io/x:1")) == []
