"""Control-plane faults: how soon pullmedic heals after the API server comes back.

The fault suite (``tests/e2e/test_faults.py``: the API server refused, blackholed,
silently dropped or restarted, etcd restarted, the operator SIGKILLed in the middle of a
fix) prints one line per figure it measures; ``python -m bench faults`` records them in
``bench/results/faults.json`` as ``{"figures": {"<printed line>": seconds, ...}}`` so
that docs/reliability.md and the README quote them from there.
"""

from __future__ import annotations

from typing import Any

from bench.common import table


def run(quick: bool = False) -> dict[str, Any]:
    raise NotImplementedError("written by the fault suite: see bench/faults.py")


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
