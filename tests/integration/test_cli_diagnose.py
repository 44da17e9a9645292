"""``pullmedic diagnose`` in a subprocess against the sandbox registries: exit codes, JSON."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.images import push_image
from sandbox.registries import RegistrySet, start_registries

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    regs: RegistrySet
    digest: str
    workdir: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("cli")
    regs = start_registries(workdir / "registries")
    try:
        digest = push_image(regs.open, "app/web", "1.2.3")
        push_image(regs.basic, "team/api", "2.0.0")
        yield Env(regs, digest, workdir)
    finally:
        regs.stop()


def run(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    hosts = [r.host for r in env.regs.all()]
    flags: list[str] = ["--allow-address", "127.0.0.0/8"]
    if "--timeout" not in args:
        flags += ["--timeout", "5"]
    for h in hosts:
        flags += ["--insecure-registry", h]
    argv = [sys.executable, "-m", "pullmedic.app.cli", *args]
    if len(args) > 1 and args[0] == "diagnose":
        argv += flags
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"},
    )


def docker_config(path: Path, host: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def test_available_exit_0_json(env: Env) -> None:
    p = run(env, "diagnose", f"{env.regs.open.host}/app/web:1.2.3", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["cause"] == "ImageAvailable" and doc["digest"] == env.digest
    assert doc["evidence"] and all("url" in e or "note" in e for e in doc["evidence"])


def test_tag_not_found_exit_1_with_fix(env: Env) -> None:
    p = run(env, "diagnose", f"{env.regs.open.host}/app/web:1.2.4")
    assert p.returncode == 1
    assert "TagNotFound" in p.stdout
    assert "Suggested fix: use image" in p.stdout and env.digest in p.stdout


def test_no_suggest(env: Env) -> None:
    p = run(env, "diagnose", f"{env.regs.open.host}/app/web:1.2.4", "--no-suggest", "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["fix"] is None


def test_pull_secret_file_and_secret_never_printed(env: Env) -> None:
    good = docker_config(env.workdir / "good.json", env.regs.basic.host, "alice", "alice-secret")
    bad = docker_config(env.workdir / "bad.json", env.regs.basic.host, "alice", "hunter2")
    image = f"{env.regs.basic.host}/team/api:2.0.0"
    ok = run(env, "diagnose", image, "--pull-secret", str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rejected = run(env, "diagnose", image, "--pull-secret", str(bad), "--json")
    assert rejected.returncode == 1
    doc = json.loads(rejected.stdout)
    assert doc["cause"] == "CredentialsRejected"
    assert "bad.json" in doc["summary"]
    for out in (ok.stdout + ok.stderr, rejected.stdout + rejected.stderr):
        assert "alice-secret" not in out and "hunter2" not in out


def test_auth_required_exit_1(env: Env) -> None:
    p = run(env, "diagnose", f"{env.regs.basic.host}/team/api:2.0.0", "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["cause"] == "AuthenticationRequired"


def test_invalid_reference_exit_1(env: Env) -> None:
    p = run(env, "diagnose", "UPPER/Case:tag", "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["cause"] == "InvalidReference"


def test_metadata_address_blocked_exit_1(env: Env) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "pullmedic.app.cli", "diagnose", "169.254.169.254/x:1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 1
    assert json.loads(p.stdout)["cause"] == "BlockedAddress"


@pytest.mark.parametrize(
    "args",
    [
        ("diagnose",),
        ("diagnose", "x", "--platform", "linux/"),
        ("diagnose", "x", "--pull-secret", "/nonexistent/file.json"),
        ("diagnose", "x", "--timeout", "-1"),
        ("diagnose", "x", "--allow-address", "bad host!"),
        ("nonsense",),
        (),
    ],
)
def test_usage_errors_exit_2(env: Env, args: tuple[str, ...]) -> None:
    p = run(env, *args)
    assert p.returncode == 2, p.stdout + p.stderr
