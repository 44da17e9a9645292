"""``python -m bench [recovery|storm|scale|admission|all] [--quick] [--write-docs]``.

Each benchmark gets its own fresh sandbox at real kubelet timing, prints its table(s) and
writes ``bench/results/<name>.json``; ``all`` also writes ``bench/results/all.json`` and,
unless ``--quick`` (or with ``--write-docs``), refreshes the generated part of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from typing import Any

from bench import report
from bench.common import RESULTS, machine, say, write_result

NAMES = ("recovery", "storm", "scale")
# Run on their own only (not part of `all`, their tables are written into the docs by hand).
SEPARATE = ("admission", "shards", "watchmem")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", default="all", choices=(*NAMES, *SEPARATE, "all"))
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    ap.add_argument(
        "--write-docs",
        action="store_true",
        help="refresh docs/benchmarks.md from the results (default for a full `all`)",
    )
    args = ap.parse_args(argv)
    names = NAMES if args.which == "all" else (args.which,)
    results: dict[str, Any] = {
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    failed = False
    merged: dict[str, Any] = {}
    prior = RESULTS / "all.json"
    if args.which in NAMES and not args.quick and prior.exists():
        merged = json.loads(prior.read_text())  # a single full run refreshes its section
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        t0 = time.monotonic()
        try:
            r = mod.run(quick=args.quick)
        except Exception:
            failed = True
            say(f"{name} failed:\n{traceback.format_exc()}")
            results[name] = {"error": traceback.format_exc(limit=5)}
            continue
        r["wall_s"] = round(time.monotonic() - t0, 1)
        r["quick"] = args.quick
        r["command"] = results["command"]
        r["started"] = results["started"]
        results[name] = r
        path = write_result(name, {"machine": results["machine"], **r})
        print(mod.render(r), flush=True)
        say(f"{name}: done in {r['wall_s']} s, written to {path}")
    if merged and not failed:
        merged.update({n: results[n] for n in names}, machine=results["machine"])
        results = merged
    if args.which == "all" or merged:
        write_result("all", results)
    if (args.which == "all" or merged) and (args.write_docs or not args.quick):
        report.update_docs(results)
        say("docs/benchmarks.md updated")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
