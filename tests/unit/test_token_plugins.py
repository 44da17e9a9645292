"""KEP-4412 token mode, run: the plugin gets the pod's ServiceAccount token (minted with the
TokenRequest API through the ``KubeApi`` seam) and annotations, exactly when the kubelet
would give them, and the token never shows."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from pullmedic.core.credentialprovider import ProviderSpec, TokenAttributes
from pullmedic.core.diagnosis import Cause, Diagnosis
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.reference import parse
from pullmedic.core.tokenmode import PodIdentity
from pullmedic.kube.client import KubeError
from pullmedic.kube.serviceaccounts import KubeServiceAccounts
from pullmedic.probe.plugins import PluginRunner
from pullmedic.probe.providers import ProviderDiagnoser
from tests.unit.fakekube import FakeKube

V1 = "credentialprovider.kubelet.k8s.io/v1"
REG = "token-registry.example"
IMAGE = f"{REG}/team/app:1.0"
PASSWORD = "registry-password-for-puller"
AUD = "pullmedic-sandbox-registry"

# Answers for the ServiceAccount "puller" only; for anyone else it refuses, printing the
# token to stderr as a careless plugin might.
TOKEN_PLUGIN = f"""
import json, os, sys
req = json.load(sys.stdin)
with open(os.environ["RUNS"], "a") as f:
    f.write(json.dumps(req) + "\\n")
tok = req.get("serviceAccountToken", "")
if "-puller-" not in tok:
    sys.stderr.write("refusing token " + tok)
    sys.exit(1)
password = tok if os.environ.get("ECHO") else "{PASSWORD}"
print(json.dumps({{
    "kind": "CredentialProviderResponse", "apiVersion": req["apiVersion"],
    "cacheKeyType": "Registry", "cacheDuration": os.environ.get("DURATION", "1h"),
    "auth": {{"{REG}": {{"username": "puller", "password": password}}}},
}}))
"""


def attrs(**kw: Any) -> TokenAttributes:
    base: dict[str, Any] = {
        "audience": AUD,
        "require_service_account": True,
        "cache_type": "ServiceAccount",
    }
    base.update(kw)
    return TokenAttributes(**base)


def spec(**kw: Any) -> ProviderSpec:
    return ProviderSpec(
        name="token-provider",
        match_images=(REG,),
        default_cache_duration=0.0,
        api_version=V1,
        token_attributes=attrs(**kw),
    )


@pytest.fixture
def kube() -> FakeKube:
    k = FakeKube()
    for name, ann in (
        ("puller", {"example.com/role": "pull", "example.com/hint": "h", "other": "x"}),
        ("other", {"example.com/role": "pull"}),
        ("bare", {}),
    ):
        k.put(
            {
                "kind": "ServiceAccount",
                "metadata": {"namespace": "team", "name": name, "annotations": ann},
            }
        )
    for pod, sa in (("app-1", "puller"), ("app-2", "puller"), ("other-1", "other")):
        k.put(
            {
                "kind": "Pod",
                "metadata": {"namespace": "team", "name": pod},
                "spec": {"serviceAccountName": sa},
            }
        )
    return k


def who(kube: FakeKube, pod: str) -> PodIdentity:
    return PodIdentity.of_pod(kube.obj("Pod", "team", pod))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs.log"


def make_runner(
    tmp_path: Path, runs: Path, kube: FakeKube | None, s: ProviderSpec, **env: str
) -> PluginRunner:
    path = tmp_path / s.name
    path.write_text(f"#!{sys.executable}\n{TOKEN_PLUGIN}")
    path.chmod(0o755)
    environ = {"PATH": os.environ.get("PATH", ""), "RUNS": str(runs), **env}
    accounts = KubeServiceAccounts(kube) if kube is not None else None
    return PluginRunner([s], tmp_path, environ=environ, accounts=accounts)


def requests(runs: Path) -> list[dict[str, Any]]:
    if not runs.exists():
        return []
    return [json.loads(line) for line in runs.read_text().splitlines()]


async def test_the_plugin_gets_the_pods_token_and_annotations(
    tmp_path: Path, runs: Path, kube: FakeKube
) -> None:
    s = spec(
        required_annotation_keys=("example.com/role",),
        optional_annotation_keys=("example.com/hint", "example.com/absent"),
    )
    r = make_runner(tmp_path, runs, kube, s)
    pod = who(kube, "app-1")
    result = await r.credentials(parse(IMAGE), pod)
    assert result.answered == ("token-provider",) and not result.failures
    (cred,) = result.keyring.lookup(parse(IMAGE))
    assert cred.password == PASSWORD
    # The TokenRequest: the provider's audience, bound to the pod by name and uid, with
    # the ServiceAccount's uid as a precondition and a short lifetime.
    ((ns, sa, body),) = kube.token_requests
    assert (ns, sa) == ("team", "puller")
    assert body["spec"]["audiences"] == [AUD]
    assert body["spec"]["boundObjectRef"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "app-1",
        "uid": pod.pod_uid,
    }
    assert (
        body["metadata"]["uid"] == kube.obj("ServiceAccount", "team", "puller")["metadata"]["uid"]
    )
    assert body["spec"]["expirationSeconds"] <= 3600
    # The request: the token and the listed annotations present, nothing else.
    (req,) = requests(runs)
    assert req["serviceAccountToken"].startswith("fake-sa-token-team-puller-")
    assert req["serviceAccountAnnotations"] == {"example.com/role": "pull", "example.com/hint": "h"}
    assert req["image"] == f"{REG}/team/app"


async def test_another_service_account_is_refused_and_says_so(
    tmp_path: Path, runs: Path, kube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = make_runner(tmp_path, runs, kube, spec())
    inner = _Fixed(Cause.AuthenticationRequired)
    d = await ProviderDiagnoser(inner, r).diagnose(
        IMAGE, Keyring(), Platform("linux", "amd64"), pod=who(kube, "other-1")
    )
    assert d.cause is Cause.CredentialProviderFailed
    assert d.details["credentialProvider"] == "token-provider"
    assert "exited with status 1" in d.summary
    assert "ServiceAccount team/other" in d.summary
    (req,) = requests(runs)
    token = req["serviceAccountToken"]
    assert token and token not in json.dumps(d.to_dict()) and token not in caplog.text


async def test_the_same_image_pulls_for_puller(tmp_path: Path, runs: Path, kube: FakeKube) -> None:
    r = make_runner(tmp_path, runs, kube, spec())
    inner = _Fixed(Cause.ImageAvailable)
    d = await ProviderDiagnoser(inner, r).diagnose(
        IMAGE, Keyring(), Platform("linux", "amd64"), pod=who(kube, "app-1")
    )
    assert d.cause is Cause.ImageAvailable
    assert inner.sources == [["credential provider token-provider"]]


@pytest.mark.parametrize(
    ("pod", "kw", "says"),
    [
        # a required annotation missing: the kubelet does not run the plugin
        ("bare", {"required_annotation_keys": ("example.com/role",)}, "lacks the annotation"),
        # the ServiceAccount is gone
        ("gone", {}, "does not exist"),
        # a pod without a ServiceAccount, requireServiceAccount: true
        ("", {}, "has no ServiceAccount"),
    ],
)
async def test_when_the_kubelet_would_not_run_it(
    tmp_path: Path, runs: Path, kube: FakeKube, pod: str, kw: dict[str, Any], says: str
) -> None:
    r = make_runner(tmp_path, runs, kube, spec(**kw))
    result = await r.credentials(parse(IMAGE), PodIdentity("team", pod, "p", "u"))
    assert r.runs == 0 and not kube.token_requests
    (failure,) = result.failures
    assert says in failure.reason


async def test_without_a_service_account_and_not_required_it_runs_without_a_token(
    tmp_path: Path, runs: Path, kube: FakeKube
) -> None:
    r = make_runner(tmp_path, runs, kube, spec(require_service_account=False))
    await r.credentials(parse(IMAGE), PodIdentity("team", "", "static-pod"))
    (req,) = requests(runs)
    assert "serviceAccountToken" not in req and not kube.token_requests


async def test_without_the_pod_it_needs_one(tmp_path: Path, runs: Path, kube: FakeKube) -> None:
    r = make_runner(tmp_path, runs, kube, spec())
    result = await r.credentials(parse(IMAGE))
    assert r.runs == 0 and "--service-account" in result.failures[0].reason


async def test_a_refused_token_request_names_the_grant(
    tmp_path: Path, runs: Path, kube: FakeKube
) -> None:
    kube.fail("create", "TokenRequest", KubeError(403, "Forbidden"))
    r = make_runner(tmp_path, runs, kube, spec())
    result = await r.credentials(parse(IMAGE), who(kube, "app-1"))
    assert r.runs == 0
    (failure,) = result.failures
    assert "403" in failure.reason and "serviceaccounts/token" in failure.reason


@pytest.mark.parametrize(
    ("cache_type", "pods", "runs_expected"),
    [
        # one entry per ServiceAccount: the second pod of puller is served from the cache
        ("ServiceAccount", ("app-1", "app-2"), 1),
        # one entry per token: every pull mints a new token, so every pull runs it
        ("Token", ("app-1", "app-2"), 2),
        # another ServiceAccount never gets puller's entry
        ("ServiceAccount", ("app-1", "other-1"), 2),
    ],
)
async def test_cache_per_service_account(
    tmp_path: Path,
    runs: Path,
    kube: FakeKube,
    cache_type: str,
    pods: tuple[str, str],
    runs_expected: int,
) -> None:
    r = make_runner(tmp_path, runs, kube, spec(cache_type=cache_type))
    for p in pods:
        await r.credentials(parse(IMAGE), who(kube, p))
    assert r.runs == runs_expected


async def test_an_echoed_token_is_discarded_unless_token_cache(
    tmp_path: Path, runs: Path, kube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = make_runner(tmp_path, runs, kube, spec(), ECHO="1")
    result = await r.credentials(parse(IMAGE), who(kube, "app-1"))
    assert result.keyring.is_empty()
    assert "cacheType is Token" in result.failures[0].reason
    token = requests(runs)[0]["serviceAccountToken"]
    assert token not in caplog.text and token not in repr(result)
    r2 = make_runner(tmp_path, runs, kube, spec(cache_type="Token"), ECHO="1")
    ok = await r2.credentials(parse(IMAGE), who(kube, "app-1"))
    assert ok.answered == ("token-provider",)


async def test_no_kube_client_is_a_reason(tmp_path: Path, runs: Path, kube: FakeKube) -> None:
    r = make_runner(tmp_path, runs, None, spec())
    result = await r.credentials(parse(IMAGE), who(kube, "app-1"))
    assert r.runs == 0 and "no Kubernetes client" in result.failures[0].reason


class _Fixed:
    def __init__(self, cause: Cause) -> None:
        self.cause = cause
        self.sources: list[list[str]] = []

    async def diagnose(self, image: str, keyring: Keyring, *_: Any, **__: Any) -> Diagnosis:
        self.sources.append([c.source.split(" key ")[0] for c in keyring.lookup(parse(image))])
        return Diagnosis(image, self.cause, "high", "probed", ())


async def test_the_operator_diagnoses_with_the_pods_service_account_and_never_shows_the_token(
    tmp_path: Path, runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A decision passes the failing pod to the diagnoser: the provider runs for the pod's
    ServiceAccount (bound to that pod), and the token is in no Event, status or log."""
    from tests.unit.fakekube import FakeProber
    from tests.unit.test_engine_scenarios import NS, World, cluster_policy, deployment, stuck_pod

    caplog.set_level(logging.DEBUG)
    world = World()
    inner = FakeProber(
        {IMAGE: Diagnosis(IMAGE, Cause.AuthenticationRequired, "high", "401 from the registry", ())}
    )
    r = make_runner(tmp_path, runs, world.kube, spec())
    r.accounts = KubeServiceAccounts(world.kube)
    world.prober = ProviderDiagnoser(inner, r)  # type: ignore[assignment]
    world.engine = world.new_engine()
    world.kube.put({"kind": "ServiceAccount", "metadata": {"namespace": NS, "name": "other"}})
    await world.boot(cluster_policy())
    deployment(world.kube, "web", IMAGE)
    pod = stuck_pod(world.kube, "web", 0, IMAGE)
    pod["spec"]["serviceAccountName"] = "other"
    world.feed(pod)
    from tests.unit.test_engine_scenarios import until

    await until(lambda: bool(world.kube.events("PullDiagnosed")), timeout=10)
    await world.settle()
    ((ns, sa, body),) = world.kube.token_requests
    assert (ns, sa) == (NS, "other")
    assert body["spec"]["boundObjectRef"]["uid"] == pod["metadata"]["uid"]
    (event,) = world.kube.events("PullDiagnosed")
    assert "CredentialProviderFailed" in json.dumps(event)
    assert f"ServiceAccount {NS}/other" in event["message"]
    token = requests(runs)[0]["serviceAccountToken"]
    everything = json.dumps([o for o in world.kube.objects.values()]) + json.dumps(
        [w.payload for w in world.kube.writes], default=str
    )
    assert token not in everything and token not in caplog.text


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("team/puller", PodIdentity("team", "puller")),
        (None, None),
        ("", None),
        ("puller", "usage"),
        ("team/", "usage"),
        ("/puller", "usage"),
        ("a/b/c", "usage"),
    ],
)
def test_diagnose_service_account_flag(value: str | None, want: Any) -> None:
    from pullmedic.app import cli

    args = ["diagnose", IMAGE] + (["--service-account", value] if value is not None else [])
    parsed = cli.build_parser().parse_args(args)
    if want == "usage":
        with pytest.raises(cli.UsageError, match="NAMESPACE/NAME"):
            cli._service_account(parsed.service_account)
    else:
        assert cli._service_account(parsed.service_account) == want
