"""A newcomer's first run: how long the README's two commands spend setting up.

Runs ``./scripts/setup.sh --demo`` (what ``./scripts/demo.sh`` runs first) and then
``./scripts/setup.sh`` (what ``./scripts/test.sh`` runs first) in a fresh clone of the
committed HEAD, with every cache the setup reads empty: the Go module and build caches,
pip's cache and the sandbox's binary cache. A cache this machine already holds is replaced
by an empty directory for the run; one that is empty or absent is used as it is (so a cold
machine's first measurement also fills its own caches). That is a cold first run whatever
this machine has cached. A second fresh clone then runs both again on those
caches: the warm figure a returning developer sees. Debian packages are the one thing
not isolated (apt is the machine's); the result says which were missing at the start.

The builds the tests make on first use (promtool, the operator image) are not part of
setup and are not counted here. ``--quick`` runs the warm half only, on this machine's
own caches.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, say, table
from sandbox import paths

NODE_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "busybox-static")
STEP = re.compile(r"^\[setup\] (?P<what>.+) \((?P<s>\d+) s\)$")
BUILT = re.compile(r"^\[build\] (?P<what>[\w-]+): ready in (?P<s>\d+) s$")
COMMANDS = (
    ("demo", ("./scripts/setup.sh", "--demo")),
    ("tests", ("./scripts/setup.sh",)),
)


def _missing_packages() -> list[str]:
    out = []
    for pkg in NODE_PACKAGES:
        p = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        if "install ok installed" not in p.stdout:
            out.append(pkg)
    return out


def _clone(dest: Path) -> None:
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=300)


def _setup(clone: Path, argv: tuple[str, ...], env: dict[str, str]) -> dict[str, Any]:
    """One setup run: its wall time, and the steps and components it printed."""
    say(f"{' '.join(argv)} in {clone}")
    t0 = time.monotonic()
    p = subprocess.run(
        argv, cwd=clone, env=env, capture_output=True, text=True, timeout=3 * 3600, check=False
    )
    wall = round(time.monotonic() - t0, 1)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stderr[-4000:]}")
    steps: list[dict[str, Any]] = []
    built: list[dict[str, Any]] = []
    for line in p.stderr.splitlines():
        if m := STEP.match(line):
            steps.append({"step": m["what"], "s": int(m["s"])})
        elif m := BUILT.match(line):
            built.append({"component": m["what"], "s": int(m["s"])})
    say(f"  {wall} s")
    return {"wall_s": wall, "steps": steps, "components": built, "load_after": os.getloadavg()}


def _go_env(name: str) -> str:
    p = subprocess.run(["go", "env", name], capture_output=True, text=True, check=True)
    return p.stdout.strip()


def _caches() -> dict[str, Path]:
    """Where setup's caches are, by the variable that moves each."""
    return {
        "PULLMEDIC_CACHE": paths.cache_dir(),
        "GOMODCACHE": Path(_go_env("GOMODCACHE")),
        "GOCACHE": Path(_go_env("GOCACHE")),
        "PIP_CACHE_DIR": Path(os.environ.get("PIP_CACHE_DIR", Path.home() / ".cache" / "pip")),
    }


def _empty(path: Path) -> bool:
    return not path.is_dir() or not any(path.iterdir())


def measure(cold: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pullmedic-firstrun-"))
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    isolated: list[str] = []
    if cold:
        for var, path in _caches().items():
            if not _empty(path):
                env[var] = str(work / "caches" / var.lower())
                isolated.append(var)
    runs: list[dict[str, Any]] = []
    missing = _missing_packages()
    try:
        rounds = ("cold", "warm") if cold else ("warm",)
        for n, state in enumerate(rounds):
            clone = work / f"clone{n}"
            _clone(clone)
            for command, argv in COMMANDS:
                runs.append({"cache": state, "command": command, **_setup(clone, argv, env)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "cold": cold,
        "caches_isolated": isolated,
        "node_packages_missing_at_start": missing,
        "runs": runs,
    }


def run(quick: bool = False) -> dict[str, Any]:
    return measure(cold=not quick)


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def render(r: dict[str, Any]) -> str:
    rows = []
    for x in r["runs"]:
        slow = sorted(x["components"], key=lambda c: -c["s"])[:3]
        rows.append(
            [
                x["cache"],
                "setup.sh --demo" if x["command"] == "demo" else "setup.sh",
                _minutes(x["wall_s"]),
                ", ".join(f"{c['component']} {_minutes(c['s'])}" for c in slow if c["s"]) or "-",
                f"{x['load_after'][1]:.1f}",
            ]
        )
    missing = ", ".join(r["node_packages_missing_at_start"]) or "none"
    return table(
        "Setup on a fresh clone (the demo's setup, then what the tests add)",
        ["caches", "command", "wall time", "slowest components", "load (5 min) after"],
        rows,
    ) + (f"\nDebian packages missing at the start: {missing}.\n")


def headline(r: dict[str, Any]) -> str:
    by = {(x["cache"], x["command"]): x["wall_s"] for x in r["runs"]}
    parts = []
    if ("cold", "demo") in by:
        parts.append(
            f"a first `./scripts/demo.sh` sets up for {_minutes(by[('cold', 'demo')])} on "
            f"empty caches, and `./scripts/test.sh` then adds "
            f"{_minutes(by[('cold', 'tests')])}"
        )
    parts.append(
        f"with every cache warm, setup takes {_minutes(by[('warm', 'demo')])} for the demo "
        f"and {_minutes(by[('warm', 'tests')])} for the tests"
    )
    return "; ".join(parts)
