"""Exec credential provider plugins: small Python scripts stand in for the real ones."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pullmedic.core.credentialprovider import ProviderConfigError, ProviderSpec
from pullmedic.core.diagnosis import Cause, Diagnosis, Evidence
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.reference import parse
from pullmedic.probe.plugins import PluginRunner, load_config
from pullmedic.probe.providers import ProviderDiagnoser

V1 = "credentialprovider.kubelet.k8s.io/v1"
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
SECRET = "s3cret-ecr-token"
IMAGE = f"{ECR}/team/app:1.0"

GOOD = f"""
import json, os, sys
req = json.load(sys.stdin)
with open(os.environ["RUNS"], "a") as f:
    f.write(req["image"] + " " + " ".join(sys.argv[1:]) + "\\n")
sys.stderr.write("debug: token {SECRET}\\n")
print(json.dumps({{
    "kind": "CredentialProviderResponse", "apiVersion": req["apiVersion"],
    "cacheKeyType": os.environ.get("KEY_TYPE", "Registry"),
    **({{"cacheDuration": os.environ["DURATION"]}} if "DURATION" in os.environ else {{}}),
    "auth": {{"{ECR}": {{"username": "AWS", "password": "{SECRET}"}}}},
}}))
"""

BEHAVIOURS = {
    "good": GOOD,
    "hang": "import time\ntime.sleep(60)\n",
    "hang-child": "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)\n",
    "garbage": f"print('{SECRET} is not json')\n",
    "huge": "import sys\nsys.stdout.write('x' * (3 << 20))\n",
    "fails": f"import sys\nsys.stderr.write('AccessDenied for {SECRET}')\nsys.exit(3)\n",
    "wrong-api": 'print(\'{"kind": "CredentialProviderResponse", '
    '"apiVersion": "credentialprovider.kubelet.k8s.io/v1beta1", "cacheKeyType": "Image"}\')\n',
    "bad-key-type": 'print(\'{"kind": "CredentialProviderResponse", '
    f'"apiVersion": "{V1}", "cacheKeyType": "Pod"}}\')\n',
}


def plugin(bin_dir: Path, name: str, behaviour: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{BEHAVIOURS[behaviour]}")
    path.chmod(0o755)


def spec(name: str, **kw: Any) -> ProviderSpec:
    base: dict[str, Any] = {
        "name": name,
        "match_images": ("*.dkr.ecr.*.amazonaws.com",),
        "default_cache_duration": 0.0,
        "api_version": V1,
    }
    base.update(kw)
    return ProviderSpec(**base)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs.log"


def runner(tmp_path: Path, runs: Path, *specs: ProviderSpec, **kw: Any) -> PluginRunner:
    env = {"PATH": os.environ.get("PATH", ""), "RUNS": str(runs)}
    env.update(kw.pop("env", {}))
    return PluginRunner(specs, tmp_path, environ=env, **kw)


async def test_good_plugin_gives_credentials(tmp_path: Path, runs: Path) -> None:
    plugin(tmp_path, "ecr", "good")
    r = runner(tmp_path, runs, spec("ecr", args=("get-credentials",)))
    result = await r.credentials(parse(IMAGE))
    assert result.answered == ("ecr",) and not result.failures
    (cred,) = result.keyring.lookup(parse(IMAGE))
    assert (cred.username, cred.password) == ("AWS", SECRET)
    assert cred.source.startswith("credential provider ecr")
    # the kubelet asks for the repository (no tag), with the configured args
    assert runs.read_text() == f"{ECR}/team/app get-credentials\n"


async def test_no_match_runs_nothing(tmp_path: Path, runs: Path) -> None:
    plugin(tmp_path, "ecr", "good")
    r = runner(tmp_path, runs, spec("ecr"))
    result = await r.credentials(parse("quay.io/team/app:1"))
    assert result.keyring.is_empty() and r.runs == 0


@pytest.mark.parametrize(
    ("key_type", "duration", "default", "second", "runs_expected"),
    [
        ("Registry", "1h", 0.0, f"{ECR}/team/other:2", 1),
        ("Image", "1h", 0.0, f"{ECR}/team/other:2", 2),
        ("Image", "1h", 0.0, f"{ECR}/team/app:2.0", 1),  # same repository, other tag
        ("Global", "1h", 0.0, f"{ECR}/x/y:1", 1),
        ("Registry", "0s", 3600.0, f"{ECR}/team/app:1.0", 2),  # explicit 0: never cached
        ("Registry", None, 3600.0, f"{ECR}/team/app:1.0", 1),  # default duration
        ("Registry", None, 0.0, f"{ECR}/team/app:1.0", 2),
    ],
)
async def test_cache_as_the_response_says(
    tmp_path: Path,
    runs: Path,
    key_type: str,
    duration: str | None,
    default: float,
    second: str,
    runs_expected: int,
) -> None:
    plugin(tmp_path, "ecr", "good")
    env = {"KEY_TYPE": key_type, **({"DURATION": duration} if duration else {})}
    r = runner(tmp_path, runs, spec("ecr", default_cache_duration=default), env=env)
    await r.credentials(parse(IMAGE))
    await r.credentials(parse(second))
    assert r.runs == runs_expected


async def test_cache_expires_with_the_clock(tmp_path: Path, runs: Path) -> None:
    plugin(tmp_path, "ecr", "good")
    now = [0.0]
    r = runner(tmp_path, runs, spec("ecr"), env={"DURATION": "10m"}, clock=lambda: now[0])
    await r.credentials(parse(IMAGE))
    now[0] = 599
    await r.credentials(parse(IMAGE))
    assert r.runs == 1
    now[0] = 601
    await r.credentials(parse(IMAGE))
    assert r.runs == 2


async def test_concurrent_requests_share_one_run(tmp_path: Path, runs: Path) -> None:
    plugin(tmp_path, "ecr", "good")
    r = runner(tmp_path, runs, spec("ecr"))
    results = await asyncio.gather(*(r.credentials(parse(IMAGE)) for _ in range(5)))
    assert r.runs == 1 and all(len(x.keyring) == 1 for x in results)


@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        ("hang", "did not answer within 0.5 s"),
        ("hang-child", "did not answer within 0.5 s"),
        ("garbage", "not a JSON document"),
        ("huge", "wrote more than"),
        ("fails", "exited with status 3"),
        ("wrong-api", "apiVersion"),
        ("bad-key-type", "cacheKeyType"),
        (None, "no executable"),
    ],
)
async def test_broken_plugin_is_a_reason_not_a_crash(
    tmp_path: Path, runs: Path, caplog: pytest.LogCaptureFixture, behaviour: str | None, says: str
) -> None:
    if behaviour is not None:
        plugin(tmp_path, "ecr", behaviour)
    r = runner(tmp_path, runs, spec("ecr"), timeout=0.5)
    caplog.set_level(logging.DEBUG)
    t0 = time.monotonic()
    result = await r.credentials(parse(IMAGE))
    assert time.monotonic() - t0 < 5
    assert result.keyring.is_empty()
    (failure,) = result.failures
    assert failure.provider == "ecr" and says in failure.reason
    assert SECRET not in failure.reason and SECRET not in caplog.text


async def test_token_mode_without_the_pod_is_reported_not_run(tmp_path: Path, runs: Path) -> None:
    """Token mode needs whose pull it is (tests/unit/test_token_plugins.py runs it)."""
    from pullmedic.core.credentialprovider import TokenAttributes

    plugin(tmp_path, "ecr", "good")
    r = runner(tmp_path, runs, spec("ecr", token_attributes=TokenAttributes("aud", True)))
    result = await r.credentials(parse(IMAGE))
    reason = result.failures[0].reason
    assert r.runs == 0 and "token mode" in reason and "ServiceAccount" in reason


async def test_hung_plugin_leaves_no_process(tmp_path: Path, runs: Path) -> None:
    plugin(tmp_path, "ecr", "hang-child")
    r = runner(tmp_path, runs, spec("ecr"), timeout=1.0)
    await r.credentials(parse(IMAGE))
    await asyncio.sleep(0.2)
    procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    mine = []
    for p in procs:
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if str(tmp_path).encode() in cmd or b"time.sleep(60)" in cmd:
            mine.append(cmd)
    assert mine == []


# ---- the config file --------------------------------------------------------------------


def test_load_config_yaml(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n"
        "- name: ecr-credential-provider\n  matchImages: ['*.dkr.ecr.*.amazonaws.com']\n"
        f"  defaultCacheDuration: 12h\n  apiVersion: {V1}\n"
    )
    (p,) = load_config(f)
    assert p.name == "ecr-credential-provider"


@pytest.mark.parametrize("text", ["providers: [", "kind: CredentialProviderConfig\n", "\xff"])
def test_load_config_errors(tmp_path: Path, text: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ProviderConfigError, match=str(f)):
        load_config(f)
    with pytest.raises(ProviderConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


# ---- the diagnoser: pod secrets first, then providers; a failure is its own cause -------


class FakeProber:
    def __init__(self, cause: Cause) -> None:
        self.cause = cause
        self.seen: list[list[str]] = []

    async def diagnose(
        self, image: str, keyring: Keyring, platform: Platform, **kw: Any
    ) -> Diagnosis:
        creds = keyring.lookup(parse(image))
        self.seen.append([c.source for c in creds])
        label = creds[0].source if creds else None
        return Diagnosis(
            image,
            self.cause,
            "high",
            f"probed as {label}",
            (Evidence("manifest", status=404, credential=label),),
            {"credential": label},
        )


def secret_keyring() -> Keyring:
    doc = {"auths": {ECR: {"username": "u", "password": "p"}}}
    return Keyring.from_docker_config(json.dumps(doc), "pull secret ns/regcred")[0]


async def test_diagnoser_orders_secrets_before_providers(tmp_path: Path, runs: Path) -> None:
    plugin(tmp_path, "ecr", "good")
    inner = FakeProber(Cause.TagNotFound)
    d = await ProviderDiagnoser(inner, runner(tmp_path, runs, spec("ecr"))).diagnose(
        IMAGE, secret_keyring(), Platform("linux", "amd64")
    )
    assert d.cause is Cause.TagNotFound
    (sources,) = inner.seen
    assert sources[0].startswith("pull secret ns/regcred")
    assert sources[1].startswith("credential provider ecr")


async def test_diagnoser_without_secrets_probes_as_the_provider(tmp_path: Path, runs: Path) -> None:
    plugin(tmp_path, "ecr", "good")
    inner = FakeProber(Cause.TagNotFound)
    d = await ProviderDiagnoser(inner, runner(tmp_path, runs, spec("ecr"))).diagnose(
        IMAGE, Keyring(), Platform("linux", "amd64")
    )
    assert str(d.details["credential"]).startswith("credential provider ecr")


@pytest.mark.parametrize(
    ("probe_cause", "expected"),
    [
        (Cause.AuthenticationRequired, Cause.CredentialProviderFailed),
        (Cause.NotFoundOrPrivate, Cause.CredentialProviderFailed),
        (Cause.RegistryUnreachable, Cause.RegistryUnreachable),
        (Cause.TagNotFound, Cause.TagNotFound),
    ],
)
async def test_failed_provider_is_its_own_cause(
    tmp_path: Path,
    runs: Path,
    caplog: pytest.LogCaptureFixture,
    probe_cause: Cause,
    expected: Cause,
) -> None:
    plugin(tmp_path, "ecr", "fails")
    caplog.set_level(logging.DEBUG)
    d = await ProviderDiagnoser(
        FakeProber(probe_cause), runner(tmp_path, runs, spec("ecr"))
    ).diagnose(IMAGE, Keyring(), Platform("linux", "amd64"))
    assert d.cause is expected
    if expected is Cause.CredentialProviderFailed:
        assert d.details["credentialProvider"] == "ecr"
        assert d.details["probeCause"] == str(probe_cause)
        assert "exited with status 3" in d.summary
    text = json.dumps(d.to_dict()) + caplog.text
    assert SECRET not in text


async def test_credentials_never_in_diagnosis_or_logs(
    tmp_path: Path, runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugin(tmp_path, "ecr", "good")
    caplog.set_level(logging.DEBUG)
    r = runner(tmp_path, runs, spec("ecr"))
    d = await ProviderDiagnoser(FakeProber(Cause.TagNotFound), r).diagnose(
        IMAGE, Keyring(), Platform("linux", "amd64")
    )
    result = await r.credentials(parse(IMAGE))
    shown = [json.dumps(d.to_dict()), caplog.text, repr(result), repr(result.keyring)]
    shown += [repr(c) for c in result.keyring.lookup(parse(IMAGE))]
    assert all(SECRET not in s for s in shown)


async def test_diagnoser_says_where_a_mapped_registry_was_reached(
    tmp_path: Path, runs: Path
) -> None:
    from pullmedic.core.registryhosts import Endpoint

    d = await ProviderDiagnoser(
        FakeProber(Cause.TagNotFound), None, {ECR: Endpoint("http", "127.0.0.1:5000")}
    ).diagnose(IMAGE, Keyring(), Platform("linux", "amd64"))
    assert any(e.kind == "registry-host" and "http://127.0.0.1:5000" in e.note for e in d.evidence)


async def test_runs_are_counted(tmp_path: Path, runs: Path) -> None:
    from pullmedic.telemetry import metrics

    def count(result: str) -> float:
        return (
            metrics.REGISTRY.get_sample_value(
                "pullmedic_credential_provider_runs_total", {"provider": "ecr", "result": result}
            )
            or 0.0
        )

    plugin(tmp_path, "ecr", "good")
    ok, failed = count("ok"), count("failed")
    await runner(tmp_path, runs, spec("ecr")).credentials(parse(IMAGE))
    plugin(tmp_path, "ecr", "fails")
    await runner(tmp_path, runs, spec("ecr")).credentials(parse(IMAGE))
    assert (count("ok"), count("failed")) == (ok + 1, failed + 1)


async def test_overlapping_keys_the_earlier_provider_wins(tmp_path: Path, runs: Path) -> None:
    plugin(tmp_path, "first", "good")
    plugin(tmp_path, "second", "good")
    r = runner(tmp_path, runs, spec("first"), spec("second"))
    result = await r.credentials(parse(IMAGE))
    assert result.answered == ("first", "second")
    assert [c.source.split(" key ")[0] for c in result.keyring.lookup(parse(IMAGE))] == [
        "credential provider first"
    ]
