"""The prober against real distribution registries (open, Basic, Bearer) and injected faults.

Every cause is produced for real; security rules are tested so that removing the rule
makes a test fail (credentials seen by the wrong host, a blocked address contacted).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from bench.request_kinds import CountingTransport
from pullmedic.core.diagnosis import Cause
from pullmedic.core.dockerconfig import PullSecret
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.policy import TagCorrection, TagStrategy
from pullmedic.probe.challenges import parse_challenges
from pullmedic.probe.client import RegistryClient
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.credentials import RegistryCredential
from pullmedic.probe.netguard import AddressPolicy, guarded_transport
from pullmedic.probe.prober import Prober
from sandbox.damage import manifest
from sandbox.faultproxy import FaultProxy
from sandbox.images import push_image
from sandbox.registries import RegistrySet, start_registries

pytestmark = pytest.mark.cluster

AMD64 = Platform.parse("linux/amd64")
LOOPBACK = AddressPolicy(("127.0.0.0/8",))


@dataclass
class World:
    regs: RegistrySet
    digests: dict[str, str]
    token_host: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    regs = start_registries(tmp_path_factory.mktemp("prober-registries"))
    try:
        d: dict[str, str] = {}
        d["web:1.2.3"] = push_image(regs.open, "app/web", "1.2.3")
        d["web:1.2.4"] = push_image(regs.open, "app/web", "1.2.4")
        push_image(regs.open, "app/web", "2.0.0")
        push_image(regs.open, "app/web", "latest")
        push_image(
            regs.open,
            "app/multi",
            "1.0",
            platforms=("linux/arm64", "linux/s390x"),
            index="oci",
            attestation=True,
        )
        d["multi:1.1"] = push_image(
            regs.open, "app/multi", "1.1", platforms=("linux/arm64", "linux/amd64"), index="oci"
        )
        d["list:3"] = push_image(
            regs.open, "app/list", "3", platforms=("linux/amd64", "linux/arm/v7"), index="docker"
        )
        push_image(regs.open, "app/arm", "1.0.0", platforms=("linux/arm64",))
        for i in range(5):
            push_image(regs.open, "app/paged", f"0.1.{i}")
        d["api:2.0.0"] = push_image(regs.basic, "team/api", "2.0.0")
        d["db:15.1"] = push_image(regs.bearer, "private/db", "15.1")
        d["tool:0.9.1"] = push_image(regs.bearer, "public/tool", "0.9.1")
        token_host = regs.token_url.split("/")[2]
        yield World(regs, d, token_host)
    finally:
        regs.stop()


def secret(name: str, host: str, user: str, password: str, ns: str = "ns") -> PullSecret:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    cfg = json.dumps({"auths": {host: {"auth": auth}}}).encode()
    return PullSecret(
        ns,
        name,
        "kubernetes.io/dockerconfigjson",
        {".dockerconfigjson": base64.b64encode(cfg).decode()},
    )


def keyring(*secrets: PullSecret) -> Keyring:
    kr, problems = Keyring.from_secrets(list(secrets))
    assert not problems
    return kr


def make_prober(
    w: World, *extra_hosts: str, policy: AddressPolicy = LOOPBACK, **cfg: object
) -> tuple[Prober, CountingTransport]:
    hosts = {r.host for r in w.regs.all()} | {w.token_host} | set(extra_hosts)
    config = ClientConfig(
        insecure_hosts=frozenset(hosts),
        address_policy=policy,
        **cfg,  # type: ignore[arg-type]
    )
    counting = CountingTransport(guarded_transport(config.address_policy))
    return Prober(config, transport=counting), counting


@pytest.fixture
def proxies() -> Iterator[list[FaultProxy]]:
    started: list[FaultProxy] = []
    yield started
    for p in started:
        p.stop()


def start_proxy(proxies: list[FaultProxy], upstream: str) -> FaultProxy:
    p = FaultProxy(upstream)
    p.start()
    proxies.append(p)
    return p


# --------------------------------------------------------------------------------------
# Open registry
# --------------------------------------------------------------------------------------


async def test_available_single_platform(world: World) -> None:
    prober, counts = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.open.host}/app/web:1.2.3", Keyring(), AMD64)
    assert d.cause is Cause.ImageAvailable and d.confidence == "high"
    assert d.digest == world.digests["web:1.2.3"]
    # HEAD answers existence; GETs only for the manifest body and the config blob; each
    # layer is checked with a HEAD (what the kubelet will fetch must exist), never read.
    assert counts.counts["manifest_head"] == 1
    layers = len(manifest(world.regs.open, "app/web", "1.2.3")["layers"])
    assert counts.counts["manifest_get"] == 1 and counts.counts["blob"] == 1 + layers


async def test_available_docker_manifest_list(world: World) -> None:
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.open.host}/app/list:3", Keyring(), AMD64)
    assert d.cause is Cause.ImageAvailable and d.digest == world.digests["list:3"]
    assert "linux/arm/v7" in d.details["availablePlatforms"]  # type: ignore[operator]


async def test_tag_typo_gets_verified_fix_with_digest(world: World) -> None:
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.open.host}/app/web:1.2.9", Keyring(), AMD64)
    assert d.cause is Cause.TagNotFound and d.confidence == "high"
    assert d.fix is not None and d.fix.kind == "tag"
    assert d.fix.image == f"{world.regs.open.host}/app/web:1.2.4"  # not 2.0.0, not latest
    assert d.fix.digest == world.digests["web:1.2.4"]


async def test_tag_policy_strategies(world: World) -> None:
    image = f"{world.regs.open.host}/app/web:1.2.9"
    prober, _ = make_prober(world)
    async with prober:
        off = await prober.diagnose(
            image, Keyring(), AMD64, tag_policy=TagCorrection(enabled=False)
        )
        ranged = await prober.diagnose(
            image,
            Keyring(),
            AMD64,
            tag_policy=TagCorrection(strategy=TagStrategy.SEMVER_RANGE, range="~1.2.3"),
        )
        major = await prober.diagnose(
            f"{world.regs.open.host}/app/web:3.0.0",
            Keyring(),
            AMD64,
            tag_policy=TagCorrection(strategy=TagStrategy.CLOSEST_MATCH, allow_major_change=True),
        )
    assert off.cause is Cause.TagNotFound and off.fix is None
    assert ranged.fix is not None and ranged.fix.image and ranged.fix.image.endswith(":1.2.4")
    assert major.fix is not None and major.fix.image and major.fix.image.endswith(":2.0.0")


async def test_no_suggestions_when_disabled(world: World) -> None:
    prober, counts = make_prober(world)
    async with prober:
        d = await prober.diagnose(
            f"{world.regs.open.host}/app/web:1.2.9", Keyring(), AMD64, suggest=False
        )
    assert d.cause is Cause.TagNotFound and d.fix is None
    assert counts.counts["manifest_head"] == 1


async def test_repository_not_found(world: World) -> None:
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.open.host}/app/nope:1", Keyring(), AMD64)
    assert d.cause is Cause.RepositoryNotFound and d.confidence == "high"
    assert any("NAME_UNKNOWN" in e.error_codes for e in d.evidence)


async def test_platform_mismatch_with_nearby_tag(world: World) -> None:
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.open.host}/app/multi:1.0", Keyring(), AMD64)
    assert d.cause is Cause.PlatformMismatch
    plats = d.details["availablePlatforms"]
    assert plats == ["linux/arm64", "linux/s390x"]  # attestation entries skipped
    assert d.fix is not None and d.fix.image == f"{world.regs.open.host}/app/multi:1.1"
    assert d.fix.digest == world.digests["multi:1.1"]


async def test_platform_mismatch_single_platform_via_config(world: World) -> None:
    prober, counts = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.open.host}/app/arm:1.0.0", Keyring(), AMD64)
        ok = await prober.diagnose(
            f"{world.regs.open.host}/app/arm:1.0.0", Keyring(), Platform.parse("linux/arm64")
        )
    assert d.cause is Cause.PlatformMismatch and d.details["availablePlatforms"] == ["linux/arm64"]
    assert ok.cause is Cause.ImageAvailable
    assert counts.counts["blob"] >= 1


async def test_tag_pagination_follows_link(world: World) -> None:
    prober, counts = make_prober(world, tags_page_size=2)
    async with prober:
        d = await prober.diagnose(f"{world.regs.open.host}/app/paged:0.1.9", Keyring(), AMD64)
    assert d.cause is Cause.TagNotFound
    assert d.fix is not None and d.fix.image and d.fix.image.endswith(":0.1.4")
    assert counts.counts["tags"] == 3  # 5 tags, 2 per page


async def test_invalid_reference(world: World) -> None:
    prober, counts = make_prober(world)
    async with prober:
        d = await prober.diagnose("Registry.Example/UPPER//x", Keyring(), AMD64)
    assert d.cause is Cause.InvalidReference
    assert counts.total == 0


# --------------------------------------------------------------------------------------
# Basic auth
# --------------------------------------------------------------------------------------


async def test_basic_without_credentials(world: World) -> None:
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.basic.host}/team/api:2.0.0", Keyring(), AMD64)
    assert d.cause is Cause.AuthenticationRequired


async def test_basic_with_credentials(world: World) -> None:
    kr = keyring(secret("alice", world.regs.basic.host, "alice", "alice-secret"))
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.basic.host}/team/api:2.0.0", kr, AMD64)
    assert d.cause is Cause.ImageAvailable and d.digest == world.digests["api:2.0.0"]
    assert "alice-secret" not in json.dumps(d.to_dict())


async def test_basic_wrong_password_names_secret_and_finds_working_one(world: World) -> None:
    bad = keyring(secret("alice-bad", world.regs.basic.host, "alice", "wrong"))
    good = keyring(secret("alice", world.regs.basic.host, "alice", "alice-secret"))
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(
            f"{world.regs.basic.host}/team/api:2.0.0",
            bad,
            AMD64,
            candidate_keyrings={"ns/alice": good},
        )
    assert d.cause is Cause.CredentialsRejected and d.confidence == "high"
    assert "ns/alice-bad" in d.summary
    assert d.fix is not None and d.fix.kind == "secret" and d.fix.secret == "ns/alice"
    text = json.dumps(d.to_dict())
    assert "wrong" not in text and "alice-secret" not in text


# --------------------------------------------------------------------------------------
# Bearer (token server)
# --------------------------------------------------------------------------------------


async def test_bearer_public_available_and_typo(world: World) -> None:
    prober, counts = make_prober(world)
    host = world.regs.bearer.host
    async with prober:
        ok = await prober.diagnose(f"{host}/public/tool:0.9.1", Keyring(), AMD64)
        typo = await prober.diagnose(f"{host}/public/tool:0.9.2", Keyring(), AMD64)
    assert ok.cause is Cause.ImageAvailable
    assert typo.cause is Cause.TagNotFound and typo.confidence == "high"
    assert typo.fix is not None and typo.fix.digest == world.digests["tool:0.9.1"]
    # One token for the repository, reused (cache honours expires_in).
    assert counts.counts["token"] == 1


async def test_bearer_private_vs_missing_is_honest_anonymously(world: World) -> None:
    prober, _ = make_prober(world)
    host = world.regs.bearer.host
    async with prober:
        private = await prober.diagnose(f"{host}/private/db:15.1", Keyring(), AMD64)
        missing = await prober.diagnose(f"{host}/private/missing:1", Keyring(), AMD64)
    # Anonymously the registry does not disclose existence: same cause, no "not found" claim.
    assert private.cause is missing.cause is Cause.NotFoundOrPrivate
    assert private.confidence == "medium"


async def test_bearer_missing_repository_with_granting_token(world: World) -> None:
    kr = keyring(secret("bob", world.regs.bearer.host, "bob", "bob-secret"))
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.bearer.host}/private/missing:1", kr, AMD64)
    assert d.cause is Cause.RepositoryNotFound and d.confidence == "high"


async def test_bearer_candidate_secret_fix(world: World) -> None:
    bob = keyring(secret("bob", world.regs.bearer.host, "bob", "bob-secret"))
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(
            f"{world.regs.bearer.host}/private/db:15.1",
            Keyring(),
            AMD64,
            candidate_keyrings={"team/bob-pull": bob},
        )
    assert d.cause is Cause.AuthenticationRequired and d.confidence == "high"
    assert d.fix is not None and d.fix.secret == "team/bob-pull"


async def test_bearer_wrong_password(world: World) -> None:
    kr = keyring(secret("bob-old", world.regs.bearer.host, "bob", "expired"))
    prober, _ = make_prober(world)
    async with prober:
        d = await prober.diagnose(f"{world.regs.bearer.host}/private/db:15.1", kr, AMD64)
    assert d.cause is Cause.CredentialsRejected and d.confidence == "high"
    assert "ns/bob-old" in d.summary
    assert any(e.kind == "token" and e.status == 401 for e in d.evidence)


async def test_oauth2_post_with_identity_token(world: World) -> None:
    r = httpx.get(
        world.regs.token_url,
        params={"service": "sandbox-registry", "offline_token": "true"},
        auth=("bob", "bob-secret"),
    )
    refresh = r.json()["refresh_token"]
    config = ClientConfig(
        insecure_hosts=frozenset({world.regs.bearer.host, world.token_host}),
        address_policy=LOOPBACK,
    )
    async with RegistryClient(config) as client:
        rec: list = []  # type: ignore[type-arg]
        cred = RegistryCredential("", "", "test identity token", identity_token=refresh)
        sess = client.session(world.regs.bearer.host, "private/db", cred, rec)
        head = await sess.head_manifest("15.1")
    assert head.status == 200
    assert any(e.kind == "token" and e.method == "POST" and e.status == 200 for e in rec)
    assert refresh not in repr(rec)


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------


async def test_429_with_retry_after_then_backoff(world: World, proxies: list[FaultProxy]) -> None:
    proxy = start_proxy(proxies, world.regs.open.url)
    proxy.set_mode("status_429", match="/manifests/", retry_after=120)
    prober, _ = make_prober(world, proxy.host_port)
    async with prober:
        d = await prober.diagnose(f"{proxy.host_port}/app/web:1.2.3", Keyring(), AMD64)
        sent = len(proxy.requests)
        again = await prober.diagnose(f"{proxy.host_port}/app/web:1.2.4", Keyring(), AMD64)
    assert d.cause is Cause.RateLimited
    assert d.details["retryAfterSeconds"] == 120.0 and "retryAt" in d.details
    assert again.cause is Cause.RateLimited
    assert len(proxy.requests) == sent  # backing off: nothing more sent to that host


async def test_429_without_retry_after(world: World, proxies: list[FaultProxy]) -> None:
    proxy = start_proxy(proxies, world.regs.open.url)
    proxy.set_mode("status_429", match="/manifests/")
    prober, _ = make_prober(world, proxy.host_port)
    async with prober:
        d = await prober.diagnose(f"{proxy.host_port}/app/web:1.2.3", Keyring(), AMD64)
    assert d.cause is Cause.RateLimited
    assert "retryAfterSeconds" not in d.details
    assert "no Retry-After" in d.summary


async def test_503(world: World, proxies: list[FaultProxy]) -> None:
    proxy = start_proxy(proxies, world.regs.open.url)
    proxy.set_mode("status_503")
    prober, _ = make_prober(world, proxy.host_port)
    async with prober:
        d = await prober.diagnose(f"{proxy.host_port}/app/web:1.2.3", Keyring(), AMD64)
    assert d.cause is Cause.RegistryUnreachable and d.details["failure"] == "5xx"


async def test_hang_times_out(world: World, proxies: list[FaultProxy]) -> None:
    proxy = start_proxy(proxies, world.regs.open.url)
    proxy.set_mode("hang", match="/manifests/")
    prober, _ = make_prober(world, proxy.host_port, read_timeout=0.5)
    async with prober:
        d = await asyncio.wait_for(
            prober.diagnose(f"{proxy.host_port}/app/web:1.2.3", Keyring(), AMD64), 10
        )
    assert d.cause is Cause.RegistryUnreachable and d.details["failure"] == "timeout"
    assert d.details["step"] == "manifest"


async def test_reset(world: World, proxies: list[FaultProxy]) -> None:
    proxy = start_proxy(proxies, world.regs.open.url)
    proxy.set_mode("reset")
    prober, _ = make_prober(world, proxy.host_port)
    async with prober:
        d = await prober.diagnose(f"{proxy.host_port}/app/web:1.2.3", Keyring(), AMD64)
    assert d.cause is Cause.RegistryUnreachable and d.details["failure"] == "reset"


async def test_oversized_manifest_is_not_read(world: World, proxies: list[FaultProxy]) -> None:
    proxy = start_proxy(proxies, world.regs.open.url)
    proxy.set_mode("oversized", size=200 << 20)
    prober, _ = make_prober(world, proxy.host_port)
    async with prober:
        d = await asyncio.wait_for(
            prober.diagnose(f"{proxy.host_port}/app/web:1.2.3", Keyring(), AMD64), 10
        )
    assert d.cause is Cause.Unknown and d.details["failure"] == "oversized"


async def test_redirect_to_other_host_carries_no_auth(
    world: World, proxies: list[FaultProxy]
) -> None:
    sniffer = start_proxy(proxies, world.regs.basic.url)
    front = start_proxy(proxies, world.regs.basic.url)
    front.set_mode("redirect", match="/manifests/", target=sniffer.host_port)
    kr = keyring(secret("alice", front.host_port, "alice", "alice-secret"))
    prober, _ = make_prober(world, front.host_port, sniffer.host_port)
    async with prober:
        d = await prober.diagnose(f"{front.host_port}/team/api:2.0.0", kr, AMD64)
    assert any("authorization" in r.headers for r in front.requests if "/manifests/" in r.path)
    manifest_hits = [r for r in sniffer.requests if "/manifests/" in r.path]
    assert manifest_hits, "the redirect was followed"
    assert all("authorization" not in r.headers for r in sniffer.requests)
    assert any("redirect" in e.note for e in d.evidence)


async def test_redirect_to_metadata_address_refused(
    world: World, proxies: list[FaultProxy]
) -> None:
    front = start_proxy(proxies, world.regs.open.url)
    front.set_mode("redirect", match="/manifests/", target="169.254.169.254:80")
    prober, _ = make_prober(world, front.host_port)
    async with prober:
        d = await prober.diagnose(f"{front.host_port}/app/web:1.2.3", Keyring(), AMD64)
    assert d.cause is Cause.BlockedAddress
    assert "link-local" in d.summary


async def test_realm_on_private_address_refused(world: World, proxies: list[FaultProxy]) -> None:
    front = start_proxy(proxies, world.regs.bearer.url)
    front.set_mode("challenge_realm", realm="http://10.0.0.1:8080/token")
    kr = keyring(secret("bob", front.host_port, "bob", "bob-secret"))
    prober, _ = make_prober(world, front.host_port)
    async with prober:
        d = await prober.diagnose(f"{front.host_port}/private/db:15.1", kr, AMD64)
    assert d.cause is Cause.BlockedAddress and d.details["step"] == "token"
    assert "private" in d.summary


async def test_realm_on_metadata_address_refused(world: World, proxies: list[FaultProxy]) -> None:
    front = start_proxy(proxies, world.regs.bearer.url)
    front.set_mode("challenge_realm", realm="http://169.254.169.254/latest/meta-data")
    prober, _ = make_prober(world, front.host_port)
    async with prober:
        d = await prober.diagnose(f"{front.host_port}/public/tool:0.9.1", Keyring(), AMD64)
    assert d.cause is Cause.BlockedAddress and d.details["step"] == "token"


# --------------------------------------------------------------------------------------
# SSRF and credential scoping
# --------------------------------------------------------------------------------------


async def test_metadata_host_never_contacted(world: World) -> None:
    prober, counts = make_prober(world, policy=AddressPolicy())
    async with prober:
        d = await prober.diagnose("169.254.169.254/latest/meta-data:1", Keyring(), AMD64)
        d6 = await prober.diagnose("[fd00:ec2::254]:80/x/y:1", Keyring(), AMD64)
    assert d.cause is Cause.BlockedAddress and d6.cause is Cause.BlockedAddress
    assert counts.counts.get("ping", 0) == 2  # attempted, refused before connecting
    assert all(e.status is None for e in d.evidence + d6.evidence)


async def test_loopback_refused_without_allowlist(world: World) -> None:
    prober, _ = make_prober(world, policy=AddressPolicy())
    async with prober:
        d = await prober.diagnose(f"{world.regs.open.host}/app/web:1.2.3", Keyring(), AMD64)
    assert d.cause is Cause.BlockedAddress and "loopback" in d.summary


async def test_credential_for_host_a_never_sent_to_host_b(
    world: World, proxies: list[FaultProxy]
) -> None:
    host_b = start_proxy(proxies, world.regs.basic.url)
    # The secret is for the basic registry's real address (host A), not for host B.
    kr = keyring(
        secret("alice", world.regs.basic.host, "alice", "alice-secret"),
        secret("other", "127.0.0.1", "alice", "alice-secret"),  # no port: must not match
    )
    prober, _ = make_prober(world, host_b.host_port)
    async with prober:
        d = await prober.diagnose(f"{host_b.host_port}/team/api:2.0.0", kr, AMD64)
    assert d.cause is Cause.AuthenticationRequired
    assert host_b.requests
    assert all("authorization" not in r.headers for r in host_b.requests)


async def test_bearer_registry_sees_only_bearer_tokens(
    world: World, proxies: list[FaultProxy]
) -> None:
    front = start_proxy(proxies, world.regs.bearer.url)
    kr = keyring(secret("bob", front.host_port, "bob", "bob-secret"))
    prober, _ = make_prober(world, front.host_port)
    async with prober:
        d = await prober.diagnose(f"{front.host_port}/private/db:15.1", kr, AMD64)
    assert d.cause is Cause.ImageAvailable
    auths = [r.headers.get("authorization", "") for r in front.requests]
    assert any(a.startswith("Bearer ") for a in auths)
    assert not any(a.lower().startswith("basic") for a in auths)


async def test_http_realm_refused_for_secure_registry() -> None:
    """A https registry whose challenge names a plain-http realm: credentials stay home."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "reg.example" and request.url.path == "/v2/":
            return httpx.Response(
                401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="http://auth.example/token",service="reg"'
                },
            )
        return httpx.Response(200, json={"token": "t"})

    kr = keyring(secret("s", "reg.example", "u", "p"))
    prober = Prober(ClientConfig(), transport=httpx.MockTransport(handler))
    async with prober:
        d = await prober.diagnose("reg.example/team/app:1", kr, AMD64)
    assert d.cause is Cause.BlockedAddress and "not https" in d.summary
    assert [r.url.host for r in seen] == ["reg.example"]
    assert all("authorization" not in r.headers for r in seen)


async def test_oauth_post_falls_back_to_get_on_405() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.url.path == "/token":
            if request.method == "POST":
                return httpx.Response(405)
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 300})
        if request.url.path == "/v2/":
            return httpx.Response(
                401,
                headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/token"'},
            )
        assert request.headers["authorization"] == "Bearer tok"
        return httpx.Response(200, headers={"Docker-Content-Digest": "sha256:" + "a" * 64})

    async with RegistryClient(ClientConfig(), httpx.MockTransport(handler)) as client:
        rec: list = []  # type: ignore[type-arg]
        cred = RegistryCredential("u", "p", "label", identity_token="refresh-xyz")
        head = await client.session("reg.example", "a/b", cred, rec).head_manifest("1")
    assert head.status == 200
    assert ("POST", "/token") in seen and ("GET", "/token") in seen
    assert "refresh-xyz" not in repr(rec) and "Bearer tok" not in repr(rec)


async def test_insufficient_scope_retried_once() -> None:
    scopes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            scope = request.url.params.get("scope", "")
            scopes.append(scope)
            return httpx.Response(200, json={"token": f"tok-{len(scopes)}"})
        if request.url.path == "/v2/":
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example/token"'}
            )
        if request.headers.get("authorization") == "Bearer tok-1":
            return httpx.Response(
                401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="https://auth.example/token",'
                    'scope="repository:a/b:pull,push",error="insufficient_scope"'
                },
            )
        return httpx.Response(200)

    async with RegistryClient(ClientConfig(), httpx.MockTransport(handler)) as client:
        rec: list = []  # type: ignore[type-arg]
        head = await client.session("reg.example", "a/b", None, rec).head_manifest("1")
    assert head.status == 200
    assert scopes == ["repository:a/b:pull", "repository:a/b:pull,push"]


# --------------------------------------------------------------------------------------
# Probe economy
# --------------------------------------------------------------------------------------


async def test_single_flight_many_concurrent_diagnoses(world: World) -> None:
    prober, counts = make_prober(world)
    image = f"{world.regs.bearer.host}/public/tool:0.9.2"
    async with prober:
        results = await asyncio.gather(
            *(prober.diagnose(image, Keyring(), AMD64) for _ in range(300))
        )
    assert {r.cause for r in results} == {Cause.TagNotFound}
    assert counts.counts["ping"] == 1 and counts.counts["token"] == 1
    assert counts.counts["manifest_head"] == 2  # the tag, then the verified suggestion
    assert counts.counts["tags"] == 1


async def test_cache_distinguishes_credentials(world: World) -> None:
    bob = keyring(secret("bob", world.regs.bearer.host, "bob", "bob-secret"))
    prober, _ = make_prober(world)
    image = f"{world.regs.bearer.host}/private/db:15.1"
    async with prober:
        anon = await prober.diagnose(image, Keyring(), AMD64)
        authed = await prober.diagnose(image, bob, AMD64)
    assert anon.cause is Cause.NotFoundOrPrivate
    assert authed.cause is Cause.ImageAvailable


def test_challenge_parser_used_on_real_registry(world: World) -> None:
    r = httpx.get(f"{world.regs.bearer.url}/v2/")
    (ch,) = parse_challenges(r.headers["www-authenticate"])
    assert ch.scheme == "bearer" and ch.realm == world.regs.token_url
