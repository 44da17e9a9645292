"""``python -m bench NAME|all [--quick] [--no-report]`` or ``python -m bench report [--check]``.

``NAME`` runs one benchmark (``all``: recovery, storm and scale, one after another), prints
its tables and writes ``bench/results/<name>.json`` with the date, the commit, the machine
and its load average beside every figure. A full run then regenerates the figures of
README.md and docs/*.md (``python -m bench report``; ``--no-report`` skips it); a
``--quick`` smoke run writes to ``bench/results/quick/`` and touches neither.

``report`` renders the docs' generated blocks from the committed results; ``report
--check`` changes nothing and exits 1 when a block is stale or a figure is typed outside
one (see bench/report.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from typing import Any

from bench import report
from bench.common import REPO, machine, provenance, say, write_result

NAMES = ("recovery", "storm", "scale")
# Run on their own only, not part of `all`: every other benchmark the report knows.
SEPARATE = tuple(name for name in report.BENCHMARKS if name not in NAMES)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["report"]:
        return report.main(args_in[1:])
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", default="all", choices=(*NAMES, *SEPARATE, "all"))
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    ap.add_argument(
        "--no-report", action="store_true", help="do not regenerate the docs after a full run"
    )
    args = ap.parse_args(args_in)
    names = NAMES if args.which == "all" else (args.which,)
    command = "python -m bench " + " ".join(args_in)
    failed = False
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        # Taken as the run starts: the commit and load it ran under.
        header: dict[str, Any] = {
            **provenance(),
            "machine": machine(),
            "command": command,
            "quick": args.quick,
        }
        t0 = time.monotonic()
        try:
            r = mod.run(quick=args.quick)
        except Exception:
            failed = True
            say(f"{name} failed:\n{traceback.format_exc()}")
            continue
        r = {**r, **header, "wall_s": round(time.monotonic() - t0, 1)}
        path = write_result(name, r, quick=args.quick)
        print(mod.render(r), flush=True)
        say(f"{name}: done in {r['wall_s']} s, written to {path.relative_to(REPO)}")
    if not args.quick and not args.no_report:
        for path in report.write():
            say(f"{path.relative_to(REPO)} regenerated from bench/results")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
