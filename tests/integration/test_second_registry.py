"""The prober's conclusions against two registry implementations.

distribution (CNCF) and go-containerregistry's registry (sandbox/ggcr, behind the sandbox's
own Basic auth wrapper) hold the same images; every case must reach the same cause and the
same fix on both. Where the two registries answer differently on the wire (status codes,
error codes, headers on HEAD), the table says so in ``wire`` and docs/development.md
("A second registry implementation") lists it: the conclusion must not depend on it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from pullmedic.core.diagnosis import Cause, Diagnosis
from pullmedic.core.dockerconfig import PullSecret
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.netguard import AddressPolicy
from pullmedic.probe.prober import Prober
from sandbox.images import delete_tag, push_image
from sandbox.registries import BASIC_USERS, Registry, start_ggcr, start_registries

pytestmark = pytest.mark.cluster

AMD64 = Platform.parse("linux/amd64")
USER, PASSWORD = next(iter(BASIC_USERS.items()))
MISSING_DIGEST = "sha256:" + "0" * 64


@dataclass
class Impl:
    name: str
    open: Registry
    basic: Registry
    digests: dict[str, str]


def _fill(open_: Registry, basic: Registry) -> dict[str, str]:
    d = {"web:1.2.3": push_image(open_, "app/web", "1.2.3", seed="web-1.2.3")}
    d["web:1.2.4"] = push_image(open_, "app/web", "1.2.4", seed="web-1.2.4")
    push_image(open_, "app/web", "2.0.0", seed="web-2.0.0")
    push_image(open_, "app/web", "1.2.5", seed="web-1.2.5")
    delete_tag(open_, "app/web", "1.2.5")
    push_image(open_, "app/arm", "1.0.0", platforms=("linux/arm64",), seed="arm")
    d["multi:1.1"] = push_image(
        open_,
        "app/multi",
        "1.1",
        platforms=("linux/arm64", "linux/amd64"),
        index="oci",
        seed="multi-1.1",
    )
    push_image(
        open_,
        "app/multi",
        "1.0",
        platforms=("linux/arm64", "linux/s390x"),
        index="oci",
        attestation=True,
        seed="multi-1.0",
    )
    d["api:2.0.0"] = push_image(basic, "team/api", "2.0.0", seed="api-2.0.0")
    push_image(basic, "team/api", "2.0.1", seed="api-2.0.1")
    return d


@pytest.fixture(scope="module")
def impls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Impl]]:
    work = tmp_path_factory.mktemp("two-registries")
    regs = start_registries(work / "distribution")
    ggcr_open = ggcr_basic = None
    try:
        ggcr_open = start_ggcr(work / "ggcr", "open")
        ggcr_basic = start_ggcr(work / "ggcr", "basic", users=dict(BASIC_USERS))
        yield {
            "distribution": Impl(
                "distribution", regs.open, regs.basic, _fill(regs.open, regs.basic)
            ),
            "ggcr": Impl("ggcr", ggcr_open, ggcr_basic, _fill(ggcr_open, ggcr_basic)),
        }
    finally:
        regs.stop()
        from sandbox import procs

        for r in (ggcr_open, ggcr_basic):
            if r is not None:
                procs.stop(r.process)


def secret(host: str, password: str) -> Keyring:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    cfg = json.dumps({"auths": {host: {"auth": auth}}}).encode()
    kr, problems = Keyring.from_secrets(
        [
            PullSecret(
                "ns",
                "creds",
                "kubernetes.io/dockerconfigjson",
                {".dockerconfigjson": base64.b64encode(cfg).decode()},
            )
        ]
    )
    assert not problems
    return kr


@dataclass(frozen=True)
class Case:
    name: str
    registry: str  # "open" | "basic"
    ref: str  # repository and tag or digest
    cause: Cause
    creds: str | None = None  # the password the pull secret holds, None: no secret
    platform: str = "linux/amd64"
    fix: str | None = None  # the tag (or "secret") the fix proposes
    wire: str = ""  # how the two registries' answers differ on the wire, if they do
    ggcr: Cause | None = None  # ggcr's own (different, honest) answer, when ``wire`` says why


CASES = [
    Case("available", "open", "app/web:1.2.3", Cause.ImageAvailable),
    Case("tag typo", "open", "app/web:1.2.9", Cause.TagNotFound, fix="1.2.4"),
    Case(
        "tag deleted",
        "open",
        "app/web:1.2.5",
        Cause.TagNotFound,
        fix="1.2.4",
        wire="a manifest deleted by digest: distribution drops its tags, ggcr keeps the tag "
        "(HEAD by tag 200, GET by digest 404), as a stale pull-through cache does",
        ggcr=Cause.ImageIncomplete,
    ),
    Case("missing repository", "open", "app/nope:1", Cause.RepositoryNotFound),
    Case("missing digest", "open", f"app/web@{MISSING_DIGEST}", Cause.DigestNotFound),
    Case("index has the platform", "open", "app/multi:1.1", Cause.ImageAvailable),
    Case("index lacks the platform", "open", "app/multi:1.0", Cause.PlatformMismatch, fix="1.1"),
    Case("single manifest, other platform", "open", "app/arm:1.0.0", Cause.PlatformMismatch),
    Case(
        "same, on its platform",
        "open",
        "app/arm:1.0.0",
        Cause.ImageAvailable,
        platform="linux/arm64",
    ),
    Case("no credentials", "basic", "team/api:2.0.0", Cause.AuthenticationRequired),
    Case("wrong password", "basic", "team/api:2.0.0", Cause.CredentialsRejected, creds="wrong"),
    Case("credentials, available", "basic", "team/api:2.0.0", Cause.ImageAvailable, creds=PASSWORD),
    Case(
        "credentials, tag typo",
        "basic",
        "team/api:2.0.9",
        Cause.TagNotFound,
        creds=PASSWORD,
        fix="2.0.1",
    ),
]


async def diagnose(impl: Impl, case: Case) -> Diagnosis:
    reg = impl.open if case.registry == "open" else impl.basic
    hosts = frozenset({impl.open.host, impl.basic.host})
    config = ClientConfig(insecure_hosts=hosts, address_policy=AddressPolicy(("127.0.0.0/8",)))
    kr = secret(reg.host, case.creds) if case.creds is not None else Keyring()
    async with Prober(config) as prober:
        return await prober.diagnose(f"{reg.host}/{case.ref}", kr, Platform.parse(case.platform))


@pytest.mark.parametrize("impl_name", ["distribution", "ggcr"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_same_conclusion(impls: dict[str, Impl], impl_name: str, case: Case) -> None:
    impl = impls[impl_name]
    d = await diagnose(impl, case)
    expected = case.ggcr if impl_name == "ggcr" and case.ggcr is not None else case.cause
    assert d.cause is expected, (impl_name, d.summary, [e.line() for e in d.evidence])
    if expected is not case.cause:
        assert case.wire, "a different conclusion needs the registry's own answer beside it"
        assert d.confidence == "high" and "missing" in d.summary, d.summary
        return
    if case.fix is None:
        assert d.fix is None or case.cause is Cause.ImageAvailable
    else:
        assert d.fix is not None and d.fix.image is not None, d.summary
        assert d.fix.image.endswith(f":{case.fix}")
        assert d.fix.digest == impl.digests.get(
            f"{case.ref.split('/')[1].split(':')[0]}:{case.fix}", d.fix.digest
        )
    assert PASSWORD not in json.dumps(d.to_dict()) and "wrong" not in d.summary


async def test_the_two_registries_answer_differently_on_the_wire(
    impls: dict[str, Impl],
) -> None:
    """The differences the table relies on are real: each registry's own answers."""
    seen: dict[str, tuple[int, str]] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for name, impl in impls.items():
            r = await client.get(f"{impl.open.url}/v2/app/nope/tags/list")
            codes = ",".join(e.get("code", "") for e in (r.json().get("errors") or []))
            seen[name] = (r.status_code, codes)
    assert seen["distribution"] == (404, "NAME_UNKNOWN")
    assert seen["ggcr"][0] == 404
