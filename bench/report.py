"""``python -m bench report [--check]``: the figures of README.md and docs/*.md, generated.

Figures are generated, never typed. Every benchmark writes ``bench/results/<name>.json``
(committed: date, commit, machine, load average and every figure), and this module renders
what sits between markers wherever they appear in README.md or docs/*.md:

    <!-- bench:NAME:start --> ... <!-- bench:NAME:end -->
        the benchmark's tables (its module's ``render``) and a provenance line;
    <!-- bench:NAME:headline:start --> ... <!-- bench:NAME:headline:end -->
        one bullet (its module's ``headline``) with a short provenance.

A benchmark with no results file gets a block that says it has not been measured at this
commit and names the command that measures it. ``--check`` rewrites nothing: it lists the
blocks that differ from what would be rendered and the measured figures typed outside any
block (``tests/unit/test_figures.py`` runs the same check), and exits 1 if there are any.

A number with a unit of time, memory, rate or ratio outside a block is a typed figure. A
configuration value (a flag default, a Kubernetes constant) is allowed where a reason says
so: ``<!-- not-measured: REASON -->`` at the end of a line exempts that line; alone on a
line it exempts the block under it (up to the next blank line).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO


@dataclass(frozen=True)
class Benchmark:
    name: str  # bench/<name>.py and bench/results/<name>.json
    title: str  # the headline's label

    @property
    def command(self) -> str:
        return f"python -m bench {self.name}"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("recovery", "Recovery"),
        Benchmark("storm", "Storm"),
        Benchmark("scale", "Scale"),
        Benchmark("watchmem", "Watch memory"),
        Benchmark("shards", "Sharded replicas"),
        Benchmark("admission", "Admission"),
        Benchmark("faults", "Control-plane faults"),
        Benchmark("audit_budget", "Audit cost"),
        Benchmark("integrity_storm", "Integrity storm"),
        Benchmark("probe_storm", "Probe storm"),
        Benchmark("quota", "Pull quota"),
        Benchmark("firstrun", "First run"),
    )
}

BLOCK = re.compile(
    r"<!-- bench:(?P<name>[a-z_]+)(?P<view>(?::headline)?):start -->\n"
    r"(?P<body>.*?)"
    r"<!-- bench:(?P=name)(?P=view):end -->",
    re.S,
)
MARKER = re.compile(r"<!-- bench:[^>]*-->")


def doc_paths(root: Path = REPO) -> list[Path]:
    """Where figures may be quoted: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def load_results(results: Path) -> dict[str, dict[str, Any]]:
    """The committed results, by benchmark (other files in the directory are not read)."""
    out = {}
    for name in BENCHMARKS:
        path = results / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


# --------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------


def _num(v: Any, unit: str = "", digits: int = 1) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def _machine(m: dict[str, Any]) -> str:
    if not m:
        return "not recorded"
    return (
        f"{m.get('nproc', '?')} cores ({m.get('cpu_model', '?')}), "
        f"{m.get('memory_gib', '?')} GiB, Linux {m.get('kernel', '?')}"
    )


def _load(m: dict[str, Any]) -> str:
    load = m.get("load_average_at_start")
    return ", ".join(f"{x:.2f}" for x in load) if load else "not recorded"


def _commit(r: dict[str, Any]) -> str:
    commit = str(r.get("commit") or "unknown")
    short = commit[:12] if commit != "unknown" else "an unknown commit"
    return short + (" plus uncommitted changes" if r.get("dirty") else "")


def provenance(name: str, r: dict[str, Any]) -> str:
    """The line under a benchmark's tables: when, from which code, on what, how loaded."""
    m = r.get("machine") or {}
    date = r.get("date") or r.get("started") or "at an unknown date"
    command = r.get("command") or BENCHMARKS[name].command
    wall = f", {_num(r['wall_s'])} s of wall time" if "wall_s" in r else ""
    quick = " (quick sizes: a smoke run)" if r.get("quick") else ""
    return (
        f"_Source: `bench/results/{name}.json`, measured {date} at commit {_commit(r)} "
        f"with `{command}`{quick}{wall}; machine: {_machine(m)}; "
        f"load average at start {_load(m)}._"
    )


def not_measured(name: str) -> str:
    return (
        f"Not measured at this commit: there is no `bench/results/{name}.json`. "
        f"`{BENCHMARKS[name].command}` measures it; `python -m bench report` then fills this in."
    )


def table_block(name: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return not_measured(name)
    tables: str = importlib.import_module(f"bench.{name}").render(r)
    return tables.strip() + "\n\n" + provenance(name, r)


def headline_block(name: str, r: dict[str, Any] | None) -> str:
    b = BENCHMARKS[name]
    if r is None:
        return f"- **{b.title}**: not measured at this commit (`{b.command}` measures it)."
    date = str(r.get("date") or r.get("started") or "date unknown")[:10]
    return (
        f"- **{b.title}**: {headline_of(name)(r).strip().rstrip('.')}. "
        f"_From `bench/results/{name}.json`, {date}, commit {_commit(r)}._"
    )


def headline_of(name: str) -> Callable[[dict[str, Any]], str]:
    """The benchmark module's ``headline``; recovery's lives here (its module is shared)."""
    if name in LOCAL_HEADLINES:
        return LOCAL_HEADLINES[name]
    fn: Callable[[dict[str, Any]], str] = importlib.import_module(f"bench.{name}").headline
    return fn


def render_text(text: str, results: dict[str, dict[str, Any]]) -> str:
    """``text`` with every known block rendered from ``results`` (unknown ones kept)."""

    def one(m: re.Match[str]) -> str:
        name, view = m["name"], m["view"]
        if name not in BENCHMARKS:
            return m[0]
        r = results.get(name)
        body = headline_block(name, r) if view else table_block(name, r)
        return f"<!-- bench:{name}{view}:start -->\n{body}\n<!-- bench:{name}{view}:end -->"

    return BLOCK.sub(one, text)


def regenerate(root: Path = REPO) -> dict[Path, str]:
    """Files whose generated blocks would change, with their new text."""
    results = load_results(root / "bench" / "results")
    out = {}
    for path in doc_paths(root):
        text = path.read_text()
        new = render_text(text, results)
        if new != text:
            out[path] = new
    return out


# --------------------------------------------------------------------------------------
# Typed figures
# --------------------------------------------------------------------------------------

_NUM = r"(?<![\w.])\d+(?:[.,]\d+)*"
_RANGE = rf"{_NUM}(?:\s*(?:-|\u2013|/|to|and|or)\s*{_NUM})*"  # 5-7, 5 / 7 (an en dash too)
_UNIT = (
    r"(?:ms|s|secs?|seconds?|min|mins|minutes?|h|hours?|days?"
    r"|KiB|MiB|GiB|kB|KB|MB|GB|bytes|%)"
)
FIGURE = re.compile(
    rf"{_RANGE}\s?{_UNIT}(?!\w)"  # 12.3 s, 5-7 s, 40 ms, 72 MiB, 12 %, 12 min
    rf"|(?!0x){_NUM}(?:\s?\u00d7|x(?![\w<]))"  # 3.2 with a times sign, 20x (not 0x hex)
    rf"|{_RANGE}\s?[A-Za-z]+/(?:s|min|h)(?!\w)"  # 160 pods/s
    rf"|\bp\d{{2,3}}(?:\s*/\s*(?:p\d{{2,3}}|max))*:?\s+(?:of\s+)?\d+(?:\.\d+)?"  # p99 3.2
)
EXEMPT = re.compile(r"<!--\s*not-measured(?P<reason>[^>]*?)-->")
_COMMENT = re.compile(r"<!--.*?-->")


@dataclass(frozen=True)
class Typed:
    path: str
    line: int
    figure: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: typed figure {self.figure!r}: {self.text.strip()}"


def _outside_blocks(text: str) -> str:
    """The text with every generated block blanked (line numbers kept)."""
    return BLOCK.sub(lambda m: "\n" * m[0].count("\n"), text)


def exemptions(text: str) -> list[tuple[int, str]]:
    """(line, reason) of every ``not-measured`` marker; an empty reason is a problem."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in EXEMPT.finditer(line):
            out.append((n, m["reason"].strip().lstrip(":").strip()))
    return out


def typed_figures(text: str, path: str = "") -> list[Typed]:
    """Measured-looking figures outside generated blocks and outside exempted lines."""
    found = []
    exempt_block = False
    for n, line in enumerate(_outside_blocks(text).splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            exempt_block = False
            continue
        if EXEMPT.fullmatch(stripped):
            exempt_block = True
            continue
        if exempt_block or EXEMPT.search(line):
            continue
        for m in FIGURE.finditer(_COMMENT.sub("", line)):
            found.append(Typed(path, n, m[0], line))
    return found


# --------------------------------------------------------------------------------------
# The check and the command
# --------------------------------------------------------------------------------------


def _stray_markers(text: str) -> list[str]:
    """Markers that are not part of a well-formed block, and unknown benchmark names."""
    spans = [(m.start(), m.end()) for m in BLOCK.finditer(text)]
    out = []
    for m in MARKER.finditer(text):
        if not any(a <= m.start() < b for a, b in spans):
            out.append(f"marker without its pair: {m[0]}")
    for m in BLOCK.finditer(text):
        if m["name"] not in BENCHMARKS:
            out.append(f"unknown benchmark {m['name']!r} (known: {', '.join(BENCHMARKS)})")
    return out


def check(root: Path = REPO) -> list[str]:
    """Every reason the docs' figures are not what the committed results say."""
    problems: list[str] = []
    stale = regenerate(root)
    results = load_results(root / "bench" / "results")
    for path in doc_paths(root):
        rel = str(path.relative_to(root))
        text = path.read_text()
        problems += [f"{rel}: {p}" for p in _stray_markers(text)]
        if path in stale:
            old = {m[0] for m in BLOCK.finditer(text)}
            for m in BLOCK.finditer(render_text(text, results)):
                if m[0] not in old:
                    problems.append(
                        f"{rel}: block bench:{m['name']}{m['view']} is stale "
                        "(run `python -m bench report`)"
                    )
        problems += [
            f"{rel}:{n}: not-measured marker without a reason"
            for n, reason in exemptions(text)
            if not reason
        ]
        problems += [str(t) for t in typed_figures(text, rel)]
    return problems


def write(root: Path = REPO) -> list[Path]:
    """Regenerate every block in place; returns the files changed."""
    changed = regenerate(root)
    for path, text in changed.items():
        path.write_text(text)
    return list(changed)


def main(argv: Iterable[str] | None = None, root: Path = REPO) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench report", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = ap.parse_args(None if argv is None else list(argv))
    if args.check:
        problems = check(root)
        for p in problems:
            print(p)
        return 1 if problems else 0
    for path in write(root):
        print(f"updated {path.relative_to(root)}")
    return 0


# --------------------------------------------------------------------------------------
# Headlines of benchmarks whose module is not edited here
# --------------------------------------------------------------------------------------

_WHO = {
    "pullmedic (Remediate)": "pullmedic alone",
    "kubelet alone + human fix": "a human fix at the first ErrImagePull",
    "human fix + descheduler PodLifeTime": "that fix plus descheduler's PodLifeTime",
}


def _healed(row: dict[str, Any]) -> str:
    runs, ok = row.get("runs", 0), row.get("recovered", 0)
    if not ok:
        return f"never healed ({runs} runs)"
    extra = f"; {ok} of {runs} runs healed" if ok < runs else ""
    return f"p50 {_num(row.get('p50_s'), ' s')} (max {_num(row.get('max_s'), ' s')}{extra})"


def _did_its_part(row: dict[str, Any]) -> str:
    """The patcher's own step (the secret on the ServiceAccount), apart from healing."""
    if "service_account_patched" not in row:
        return ""
    done, runs = row["service_account_patched"], row.get("runs", 0)
    return f", with the ServiceAccount patched in {done} of {runs} runs"


def recovery_headline(r: dict[str, Any]) -> str:
    """Per case: pullmedic alone against the human parties of the same runs."""
    cases: dict[str, list[str]] = {}
    for row in r.get("summary") or []:
        who = _WHO.get(row["who"], row["who"])
        cases.setdefault(row["case"], []).append(f"{who} {_healed(row)}{_did_its_part(row)}")
    detail = ". ".join(f"{case.capitalize()}: {'; '.join(p)}" for case, p in cases.items())
    return (
        f"{r.get('replicas')}-replica Deployments on the {r.get('node', 'real')} node, "
        f"{r.get('runs')} runs, first ErrImagePull to all replicas Running. {detail}"
    )


LOCAL_HEADLINES: dict[str, Callable[[dict[str, Any]], str]] = {"recovery": recovery_headline}
