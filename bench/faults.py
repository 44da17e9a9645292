"""Control-plane faults: how soon pullmedic heals after the API server comes back.

The fault suite (``tests/e2e/test_faults.py``: the API server refused, blackholed,
silently dropped or restarted, etcd restarted, the operator SIGKILLed in the middle of a
fix) prints one line per figure it measures; ``python -m bench faults`` records them in
``bench/results/faults.json`` as ``{"figures": {"<printed line>": seconds, ...}}`` so
that docs/reliability.md and the README quote them from there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO, say, table

LINE = re.compile(r"^\[faults\] (?P<what>.+): (?P<s>\d+(?:\.\d+)?)s$")


def run(quick: bool = False) -> dict[str, Any]:
    """Run the fault suite (tests/e2e/test_faults.py, real node) and keep the figures it
    prints: each case's time from the end of its fault to a healed workload or status."""
    argv = [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider"]
    argv.append(str(REPO / "tests" / "e2e" / "test_faults.py"))
    if quick:
        argv += ["-k", "refused or killed_mid_status"]
    say("faults: running the fault suite on the real node")
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    log = Path(tempfile.mkdtemp(prefix="pullmedic-bench-faults-")) / "pytest.log"
    log.write_text(proc.stdout + proc.stderr)
    say(f"faults: the suite's whole output is in {log}")
    figures: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            figures[m.group("what")] = float(m.group("s"))
    summary = next(
        (
            ln.strip()
            for ln in reversed(proc.stdout.splitlines())
            if " passed" in ln or " failed" in ln
        ),
        "",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the fault suite failed ({summary}); see {log}")
    return {"figures": figures, "pytest": summary}


def _figures(r: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in (r.get("figures") or {}).items()}


def render(r: dict[str, Any]) -> str:
    figures = _figures(r)
    rows = [[label, f"{seconds:.1f}"] for label, seconds in figures.items()]
    return table(
        "Faults: seconds from the end of the fault (or the operator's restart)",
        ["what the fault suite measured", "s"],
        rows,
    )


def headline(r: dict[str, Any]) -> str:
    figures = _figures(r)
    if not figures:
        return "the fault suite recorded no figures"
    label, slowest = max(figures.items(), key=lambda kv: kv[1])
    return (
        f"{len(figures)} figures from the fault suite (docs/reliability.md); the slowest: "
        f"{slowest:.1f} s ({label})"
    )
