"""The operator image, built for real from the Dockerfile by scripts/build-image.sh.

buildah builds it (chroot isolation) on bases made from Debian 12 packages; the result is
keyed by the hash of its inputs, so a second run reuses it. The checks read the built
image's config and its mounted filesystem, and run the entry point in it; the venv is
exactly requirements.lock, its SBOM lists every package, and a second build from scratch
of the same commit is the same image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import incluster

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/pullmedic:test"
UID = 65532

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah (vfs) and mmdebstrap run as root"),
]


def buildah(*args: str) -> str:
    return incluster.buildah(*args, timeout=300)


@pytest.fixture(scope="module")
def image() -> str:
    return incluster.build_image(TAG)


@pytest.fixture(scope="module")
def rootfs(image: str) -> Iterator[Path]:
    ctr = buildah("from", "--pull=never", image)
    try:
        yield Path(buildah("mount", ctr))
    finally:
        buildah("umount", ctr)
        buildah("rm", ctr)


@pytest.fixture(scope="module")
def config(image: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))
    oci: dict[str, Any] = doc["OCIv1"]["config"]
    return oci


def test_runs_as_the_numeric_non_root_user(config: dict[str, Any], rootfs: Path) -> None:
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["pullmedic", "run"]
    assert config["Env"][0].startswith("PATH=") or any(
        e.startswith("PATH=/opt/venv/bin:") for e in config["Env"]
    )
    assert set(config["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}
    # The venv is readable by that user, and owned by root (it cannot change its code).
    venv = rootfs / "opt" / "venv"
    assert venv.stat().st_uid == 0
    assert (venv / "bin" / "pullmedic").stat().st_mode & 0o005 == 0o005


def test_no_pip_and_no_compiler_in_the_runtime(rootfs: Path) -> None:
    found = [
        p.relative_to(rootfs).as_posix()
        for pattern in (
            "opt/venv/bin/pip*",
            "usr/bin/pip*",
            "usr/local/bin/pip*",
            "**/site-packages/pip",
            "**/dist-packages/pip",
            "usr/bin/gcc*",
            "usr/bin/cc",
            "usr/bin/*-gcc*",
            "usr/bin/c++",
            "usr/lib/gcc",
            "usr/bin/apt-get",
        )
        for p in rootfs.glob(pattern)
    ]
    assert not found, found
    # The venv's interpreter is the base image's, and resolves inside the image.
    python = rootfs / "opt" / "venv" / "bin" / "python3"
    target = os.readlink(python)
    assert target.startswith("/usr/bin/python3"), target
    assert (rootfs / target.lstrip("/")).exists()


def chroot(rootfs: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            shutil.which("chroot") or "/usr/sbin/chroot",
            f"--userspec={UID}:{UID}",
            str(rootfs),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/opt/venv/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_the_entry_point_runs_as_that_user(rootfs: Path) -> None:
    out = chroot(rootfs, "/opt/venv/bin/pullmedic", "--help")
    assert out.returncode == 0, out.stderr
    for command in ("diagnose", "audit", "explain", "run"):
        assert command in out.stdout
    run = chroot(rootfs, "/opt/venv/bin/pullmedic", "run", "--help")
    assert run.returncode == 0, run.stderr
    assert "--leader-elect" in run.stdout
    # pip is gone for good: the interpreter cannot import it either.
    pip = chroot(rootfs, "/opt/venv/bin/python3", "-c", "import pip")
    assert pip.returncode != 0 and "No module named 'pip'" in pip.stderr


# ---------------------------------------------------------------------------------------
# Locked, recorded, reproducible
# ---------------------------------------------------------------------------------------

SBOM = Path("opt/venv/share/doc/pullmedic/sbom.cdx.json")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(rootfs: Path) -> dict[str, str]:
    """Distribution name -> version, from the venv's *.dist-info/METADATA."""
    out = {}
    site = rootfs / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    for meta in site.glob("*.dist-info/METADATA"):
        headers = meta.read_text(errors="replace").split("\n\n", 1)[0]
        fields = dict(line.split(": ", 1) for line in headers.splitlines() if ": " in line[:40])
        out[_canonical(fields["Name"])] = fields["Version"]
    return out


def test_the_sbom_lists_every_python_package_with_its_version(rootfs: Path) -> None:
    doc = json.loads((rootfs / SBOM).read_text())
    assert doc["bomFormat"] == "CycloneDX"
    listed = {_canonical(c["name"]): c["version"] for c in doc.get("components", [])}
    root = doc["metadata"]["component"]
    listed.setdefault(_canonical(root["name"]), root.get("version", ""))
    have = installed(rootfs)
    assert "pullmedic" in have and "kopf" in have
    assert have == {k: v for k, v in listed.items() if k in have}
    assert not set(have) - set(listed), set(have) - set(listed)
    assert not {"pip", "setuptools"} & set(listed)
    # reproducible output: no generation time, no random serial number
    assert "serialNumber" not in doc and "timestamp" not in doc["metadata"]


def test_the_venv_is_what_requirements_lock_pins(rootfs: Path) -> None:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            pins[_canonical(m[1])] = m[2]
    have = installed(rootfs)
    have.pop("pullmedic")
    assert have == {k: v for k, v in pins.items() if k != "setuptools"}


def test_bytecode_records_no_mtime(rootfs: Path) -> None:
    """.pyc files are unchecked-hash ones (PEP 552 flags word 1): their source's hash,
    not its mtime, so they are the same in every build; and every module has one."""
    site = rootfs / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    pycs = sorted(site.rglob("*.pyc"))
    assert pycs
    for pyc in pycs:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 1, pyc
    assert (site / "pullmedic" / "app" / "__pycache__" / "cli.cpython-311.pyc").exists()


def _differences(a: str, b: str) -> list[str]:
    """Where two images' configs differ: layer by layer, then history, then the rest."""
    ca = json.loads(buildah("inspect", "--type", "image", a))["OCIv1"]
    cb = json.loads(buildah("inspect", "--type", "image", b))["OCIv1"]
    out = []
    for n, (la, lb) in enumerate(
        zip(ca["rootfs"]["diff_ids"], cb["rootfs"]["diff_ids"], strict=False)
    ):
        if la != lb:
            out.append(f"layer {n}: {la} != {lb}")
    for n, (ha, hb) in enumerate(zip(ca.get("history", []), cb.get("history", []), strict=False)):
        if ha != hb:
            out.append(f"history {n}: {ha} != {hb}")
    out += [f"config key {k}" for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
    return out


def test_two_builds_of_one_commit_are_the_same_image(image: str) -> None:
    """Rebuilt on the same bases with no cached layer (every RUN again: apt, pip, the
    byte-compile, the SBOM): the same image id, so the same layers, history and times."""
    first = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", image)
    out = subprocess.run(
        [str(REPO / "scripts" / "build-image.sh"), "--no-cache", "--tag", f"{TAG}-again"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    # It was built again, not found in a cache.
    assert re.search(r"\[image\] building localhost/pullmedic:fresh-", out.stderr), out.stderr
    assert "image built in" in out.stderr
    again = out.stdout.strip().splitlines()[-1]
    # The image records the epoch it was built at: the build argument reached the final stage.
    labels = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]["Labels"]
    assert labels["dev.pullmedic.build-epoch"].isdigit(), labels
    assert labels["dev.pullmedic.build-epoch"] != "0", labels
    # One commit: a commit that changes the inputs between the builds moves the epoch.
    created = "{{.OCIv1.Created}}"
    assert buildah("inspect", "--type", "image", "--format", created, image) == buildah(
        "inspect", "--type", "image", "--format", created, f"{TAG}-again"
    ), "the two builds ran at different SOURCE_DATE_EPOCHs: a commit landed between them"
    assert again == first, _differences(image, f"{TAG}-again")
