"""Figures in README.md and docs/*.md come from bench/results, never from a keyboard.

The first test is the gate: every generated block is what ``python -m bench report``
renders from the committed results, and no measured figure is typed outside one. The
others show what the gate catches (a stale block, a typed figure, a marker without a
reason) and that every benchmark's table and headline render from a result of its shape.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import common, report

REPO = Path(__file__).resolve().parents[2]

# Exemptions are argued one by one; a new one should be rare (prefer rewording).
MAX_EXEMPTIONS = 8


def test_docs_figures_are_generated_from_the_committed_results() -> None:
    problems = report.check(REPO)
    assert not problems, "\n".join(
        ["run `python -m bench report`, or reword / mark the figure:", *problems]
    )


def test_exemptions_are_few_and_argued() -> None:
    found = [
        (path.name, n, reason)
        for path in report.doc_paths(REPO)
        for n, reason in report.exemptions(path.read_text())
    ]
    assert all(reason for _, _, reason in found), found
    assert len(found) <= MAX_EXEMPTIONS, found


def test_every_benchmark_has_its_table_in_docs_benchmarks() -> None:
    text = (REPO / "docs" / "benchmarks.md").read_text()
    blocks = {(m["name"], m["view"]) for m in report.BLOCK.finditer(text)}
    assert {(name, "") for name in report.BENCHMARKS} <= blocks


def test_no_results_means_every_block_says_not_measured(tmp_path: Path) -> None:
    text = "<!-- bench:storm:start -->\nold 12 s\n<!-- bench:storm:end -->\n"
    out = report.render_text(text, {})
    assert "12 s" not in out
    assert "Not measured at this commit" in out
    assert "`python -m bench storm`" in out
    assert not report.typed_figures(out)


# --------------------------------------------------------------------------------------
# What counts as a typed figure
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "figures"),
    [
        ("On 2 cores that took 12 min 38 s from nothing", ["12 min", "38 s"]),
        ("pullmedic heals a tag typo in 5.2-7.0 s", ["5.2-7.0 s"]),
        ("detection-to-action p99 under 1 s", ["1 s"]),
        ("p50 0.39, p99 0.81 before", ["p50 0.39", "p99 0.81"]),
        ("Admission answers in 14-36 ms", ["14-36 ms"]),
        ("72.8 MiB with 50,000 pods (0.01-0.05 KiB per pod)", ["72.8 MiB", "0.01-0.05 KiB"]),
        ("63 MB as a gzip-compressed archive", ["63 MB"]),
        ("Image size: 63266089 bytes", ["63266089 bytes"]),
        ("pullmedic used 12 % of one core", ["12 %"]),
        ("3.2\u00d7 faster than kopf's watch", ["3.2\u00d7"]),
        ("makes the emulator 20x faster", ["20x"]),
        ("creation ran at 160-210 pods/s", ["160-210 pods/s"]),
        ("1.3 s / 4.7 s after the fault", ["1.3 s", "4.7 s"]),
        ("at most 3 h apart", ["3 h"]),
    ],
)
def test_typed_figures_are_found(line: str, figures: list[str]) -> None:
    assert [t.figure for t in report.typed_figures(line)] == figures


@pytest.mark.parametrize(
    "line",
    [
        "kubectl v1.36.3 built from the pinned module; Python 3.11+ and Go 1.26+",
        "uid 65532 on a read-only root; HTTP 201; 2 cores; 1,000 pods; 5 secrets",
        "the open upper end is `'0x10000000000000000'`, a bound is `'0x<start>'`",
        "retries fit in max(60, 3 x `--api-timeout`)",
        "p50 / p90 / max over the runs, per case and party",
        "100 Deployments x 10 replicas, a 2-shard split, generation 2",
        "`kubectl get cpullpol` shows AGE 3m",
    ],
)
def test_what_is_not_a_figure(line: str) -> None:
    assert report.typed_figures(line) == []


def test_exemptions_need_a_reason_and_cover_a_line_or_the_block_under_them() -> None:
    text = "\n".join(
        [
            "a back-off from 10 s to 300 s <!-- not-measured: a Kubernetes constant -->",
            "<!-- not-measured: flag defaults -->",
            "| `--api-timeout` | 20 s |",
            "| `--watch-timeout` | 30 s |",
            "",
            "measured: 4.4 s after the kill",
            "ready in 9 s <!-- not-measured -->",
        ]
    )
    assert [(t.line, t.figure) for t in report.typed_figures(text)] == [(6, "4.4 s")]
    assert report.exemptions(text) == [
        (1, "a Kubernetes constant"),
        (2, "flag defaults"),
        (7, ""),
    ]


def test_figures_inside_generated_blocks_are_allowed() -> None:
    text = (
        "intro\n<!-- bench:storm:start -->\n| p99 | 3.2 s |\n<!-- bench:storm:end -->\nafter 5 s\n"
    )
    assert [(t.line, t.figure) for t in report.typed_figures(text)] == [(5, "5 s")]


# --------------------------------------------------------------------------------------
# The check catches stale blocks and typed figures (on a copy of a small repository)
# --------------------------------------------------------------------------------------


def _repo(root: Path, readme: str, doc: str) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "bench" / "results").mkdir(parents=True)
    (root / "README.md").write_text(readme)
    (root / "docs" / "reliability.md").write_text(doc)
    return root


FAULTS = {
    "date": "2026-12-03T10:00:00Z",
    "commit": "0123456789abcdef0123456789abcdef01234567",
    "dirty": False,
    "command": "python -m bench faults",
    "machine": {
        "nproc": 2,
        "cpu_model": "AMD EPYC",
        "memory_gib": 23.5,
        "kernel": "6.1",
        "load_average_at_start": [0.05, 0.5, 1.0],
    },
    "figures": {
        "refuse 90s: Deployment 'after' healed after the fault ended": 3.2,
        "blackhole 60s: policy status current after the fault ended": 1.3,
    },
}
BLOCKS = (
    "<!-- bench:faults:start -->\n<!-- bench:faults:end -->\n"
    "<!-- bench:faults:headline:start -->\n<!-- bench:faults:headline:end -->\n"
)


def test_check_catches_a_stale_block_and_report_fixes_it(tmp_path: Path) -> None:
    root = _repo(tmp_path, "# x\n", "# Reliability\n\n" + BLOCKS)
    report.write(root)
    assert report.check(root) == []
    doc = (root / "docs" / "reliability.md").read_text()
    assert "Not measured at this commit" in doc
    # A results file arrives: the blocks are now stale until the report runs.
    (root / "bench" / "results" / "faults.json").write_text(json.dumps(FAULTS))
    problems = report.check(root)
    assert problems == [
        "docs/reliability.md: block bench:faults is stale (run `python -m bench report`)",
        "docs/reliability.md: block bench:faults:headline is stale (run `python -m bench report`)",
    ]
    assert report.write(root) == [root / "docs" / "reliability.md"]
    assert report.check(root) == []
    doc = (root / "docs" / "reliability.md").read_text()
    assert "| refuse 90s: Deployment 'after' healed after the fault ended" in doc
    assert "3.2" in doc
    assert "commit 0123456789ab" in doc
    assert "load average at start 0.05, 0.50, 1.00" in doc
    assert "`python -m bench faults`" in doc
    # Editing a figure inside a block by hand is caught as well.
    (root / "docs" / "reliability.md").write_text(doc.replace("| 3.2", "| 2.9"))
    assert report.check(root) == [
        "docs/reliability.md: block bench:faults is stale (run `python -m bench report`)"
    ]


def test_check_catches_a_typed_figure_outside_a_block(tmp_path: Path) -> None:
    readme = "# pullmedic\n\nThe storm is healed in 52 s.\n\n" + BLOCKS
    root = _repo(tmp_path, readme, "# Reliability\n")
    report.write(root)
    assert report.check(root) == ["README.md:3: typed figure '52 s': The storm is healed in 52 s."]


def test_check_catches_broken_markers_and_unknown_names(tmp_path: Path) -> None:
    doc = (
        "<!-- bench:faults:start -->\nno end\n\n"
        "<!-- bench:nosuch:start -->\n<!-- bench:nosuch:end -->\n"
    )
    root = _repo(tmp_path, "# x\n", doc)
    problems = report.check(root)
    assert "docs/reliability.md: marker without its pair: <!-- bench:faults:start -->" in problems
    assert any("unknown benchmark 'nosuch'" in p for p in problems)


def test_report_check_command_exits_non_zero_when_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _repo(tmp_path, "# x\n", BLOCKS)
    assert report.main(["--check"], root=root) == 1
    assert "stale" in capsys.readouterr().out
    assert report.main([], root=root) == 0
    assert report.main(["--check"], root=root) == 0


# --------------------------------------------------------------------------------------
# Every benchmark renders from a result of its shape
# --------------------------------------------------------------------------------------

SPLIT_ROW: dict[str, Any] = {
    "settled_rss_mib_mean": 72.1,
    "settled_rss_mib_max": 72.3,
    "pods_per_replica_mean": 500,
    "detect_seen_p50_s": 0.02,
    "detect_seen_max_s": 0.09,
    "detect_diagnosed_p50_s": 0.57,
    "detect_diagnosed_max_s": 0.64,
    "detected": 2,
    "new_failing_workloads": 2,
    "workloads_decided_by_more_than_one_replica": [],
    "replicas": [
        {
            "replica": "op-0-of-1",
            "pods_in_slice": 1000,
            "settled_rss_mib": 72.3,
            "peak_rss_mib": 73.0,
            "growth_kib_per_pod_from_idle": 0.5,
        }
    ],
}
HAMMER = {"n": 20, "p50_ms": 8.0, "p99_ms": 14.0, "max_ms": 1551.0, "statuses": [201]}
HAMMER |= {"warned": 0, "rewritten": 0, "kuik_annotated": 0, "ms": []}
SHAPES: dict[str, dict[str, Any]] = {
    "recovery": {
        "replicas": 3,
        "runs": 10,
        "node": "real",
        "summary": [
            {
                "case": "tag typo",
                "who": "pullmedic (Remediate)",
                "runs": 10,
                "recovered": 10,
                "p50_s": 6.1,
                "p90_s": 7.0,
                "max_s": 9.5,
            },
            {
                "case": "missing pull secret",
                "who": "kubelet alone + human fix",
                "runs": 10,
                "recovered": 0,
                "p50_s": None,
                "p90_s": None,
                "max_s": None,
            },
            {
                "case": "missing pull secret",
                "who": "human fix + descheduler PodLifeTime",
                "runs": 10,
                "recovered": 9,
                "p50_s": 8.0,
                "p90_s": 9.0,
                "max_s": 11.0,
                "computed_at_alert_p50_s": {
                    "KubePodNotReady": 908.0,
                    "KubeContainerWaiting": 3608.0,
                },
            },
        ],
        "cases": [],
        "descheduler": {"running": True, "max_pod_lifetime_s": 5, "interval_s": 5, "evictions": 3},
    },
    "storm": {
        "deployments": 100,
        "replicas": 10,
        "pods": 1000,
        "distinct_bad_images": 5,
        "credential_causes": 2,
        "failing_image_keyring_pairs": 7,
        "all_fixed": True,
        "time_limit_s": 240.0,
        "all_running_after_first_failure_s": 111.3,
        "workloads_fixed": 100,
        "workloads_failed": 100,
        "last_workload_first_failure_after_first_s": 72.3,
        "fixed_after_first_failure_by_cause_s": {
            "TagNotFound": {"n": 80, "p50": 56.9, "max": 78.8}
        },
        "fixed_after_first_action_by_cause_s": {"TagNotFound": {"n": 80, "p50": 55.0, "max": 77.0}},
        "registry": {
            "operator_by_kind": dict.fromkeys(
                ("ping", "token", "manifest_head", "manifest_get", "blob", "tags"), 1
            ),
            "operator_total": 6,
            "operator_manifest_requests": 2,
            "operator_distinct_manifest_probes": 2,
            "operator_repeated_manifest_probes": 0,
            "first_pass_manifest_requests": 2,
            "first_pass_distinct_manifest_probes": 2,
            "registry_side_pullmedic": {"HEAD manifest": 1},
            "registry_side_kubelet": {"HEAD manifest": 9},
            "token_server_requests_all_clients": 3,
        },
        "api_writes": {
            "operator": {"PATCH deployments": 100},
            "operator_total": 100,
            "deployment_patches_max_per_workload": 1,
            "serviceaccount_patches_max_per_sa": 2,
            "all_clients": {"POST pods": 2000},
        },
        "latency": {
            "actions": 142,
            "groups_acted_on": 100,
            "decisions": 428,
            "every_action_p50_s": 1.7,
            "every_action_p99_s": 18.2,
            "every_action_max_s": 21.8,
            "detection_to_action_p50_s": 0.99,
            "detection_to_action_p99_s": 2.38,
            "excl_registry_p50_s": 0.98,
            "excl_registry_p99_s": 2.3,
            "kubelet_failure_to_action_p50_s": 1.2,
            "kubelet_failure_to_action_p99_s": 3.2,
        },
    },
    "scale": {
        "baseline_rss_mib": 72.2,
        "growth_kib_per_pod_overall": 0.1,
        "target_settled_rss_mib": 250.0,
        "steps": [
            {
                "pods": 1000,
                "failing_pods": 10,
                "peak_rss_mib": 73.0,
                "settled_rss_mib": 72.9,
                "growth_kib_per_pod": 0.7,
                "cpu_seconds_step": 2.0,
                "seconds_to_bring_up": 39.4,
                "detect_seen_p50_s": 0.0,
                "detect_seen_max_s": 0.0,
                "detect_diagnosed_p50_s": 0.29,
                "detect_diagnosed_max_s": 0.31,
            }
        ],
    },
    "watchmem": {
        "baseline_rss_mib": {"op-0-of-1": 71.8},
        "steps": [
            {
                "healthy_pods": 1000,
                "component_rss_mib": {"kube-apiserver": 500.0},
                "splits": {"1": SPLIT_ROW, "2": SPLIT_ROW, "4": SPLIT_ROW},
            }
        ],
        "restarted": {
            "pods": 1000,
            "peak_rss_mib": 98.6,
            "settled_rss_mib": 96.6,
            "seconds_to_marker": 17.7,
        },
    },
    "shards": {
        "baseline_rss_mib": {"op-0-of-1": 72.4},
        "steps": [
            {
                "pods": 1000,
                "seconds_to_bring_up": 40.0,
                "component_rss_mib": {},
                "bring_up_cpu": {},
                "splits": {"1": SPLIT_ROW, "2": SPLIT_ROW, "4": SPLIT_ROW},
            }
        ],
    },
    "admission": {
        "webhook_timeouts_s": {"pullmedic": 2},
        "cases": {
            "pullmedic warm Deployment": {"hooked": HAMMER, "baseline": HAMMER},
            "pullmedic warm Pod": {"hooked": HAMMER, "baseline": HAMMER},
            "pullmedic hanging Pod": {"hooked": HAMMER, "baseline": HAMMER},
        },
    },
    "faults": FAULTS,
    "audit_budget": {
        "workloads": 1000,
        "images": 40,
        "deleted_tags": 3,
        "hours": 6,
        "runs": [
            {
                "run": "default",
                "checks_per_hour": 13.3,
                "requests_per_hour": 80.7,
                "manifest_gets_per_hour": 3.5,
                "max_host_requests_per_hour": 40.2,
                "found": 75,
            },
            {
                "run": "no budget",
                "checks_per_hour": 40.0,
                "requests_per_hour": 234.7,
                "max_host_requests_per_hour": 120.2,
                "found": 75,
            },
        ],
    },
    "integrity_storm": {
        "workloads": 100,
        "pods": 1000,
        "runs": [
            {
                "run": "cache + single-flight",
                "causes": "ImageIncomplete",
                "requests": dict.fromkeys(
                    ("ping", "token", "manifest_head", "manifest_get", "blob", "tags"), 1
                ),
                "total": 6,
            }
        ],
    },
    "probe_storm": {
        side: {
            "diagnoses": 1000,
            "distinct_images": 10,
            "wall_seconds": 1.5,
            "requests": dict.fromkeys(
                ("ping", "token", "manifest_head", "manifest_get", "blob", "tags"), 2
            ),
            "total_requests": 12,
            "token_server_requests": 3,
            "causes": {"ImageAvailable": 500},
        }
        for side in ("economy", "baseline")
    },
    "quota": {
        side: [
            {
                "shape": "one manifest",
                "step": step,
                "cause": "ImageAvailable",
                "manifest_get": 1,
                "manifest_head": 1,
                "other": 2,
            }
            for step in ("first look", "re-check")
        ]
        for side in ("pullmedic", "baseline")
    },
    "firstrun": {
        "cold": True,
        "caches_isolated": [],
        "node_packages_missing_at_start": ["containerd"],
        "runs": [
            {
                "cache": cache,
                "command": command,
                "wall_s": 1500.0 if cache == "cold" else 9.0,
                "steps": [{"step": "Python venv ready", "s": 30}],
                "components": [
                    {"component": "kubernetes", "s": 1200},
                    {"component": "etcd", "s": 0},
                ],
                "load_after": [1.0, 1.0, 1.0],
            }
            for cache in ("cold", "warm")
            for command in ("demo", "tests")
        ],
    },
}


def test_every_benchmark_has_a_shape_here_and_a_module_that_runs_it() -> None:
    assert set(SHAPES) == set(report.BENCHMARKS)
    for name in report.BENCHMARKS:
        mod = importlib.import_module(f"bench.{name}")
        assert callable(mod.run) and callable(mod.render), name


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_benchmark_renders_its_table_and_headline(name: str) -> None:
    r = {**SHAPES[name], "date": "2026-12-03T10:00:00Z", "commit": "f" * 40, "dirty": True}
    table = report.table_block(name, r)
    headline = report.headline_block(name, r)
    assert table.startswith("### "), table
    assert "plus uncommitted changes" in table
    assert f"`bench/results/{name}.json`" in table
    assert headline.startswith(f"- **{report.BENCHMARKS[name].title}**: ")
    assert "\n" not in headline
    assert re.search(r"\d", headline.split("(`bench/results")[0]), headline


PATCHER_ROW = {
    "case": "missing pull secret",
    "who": "titansoft imagepullsecret-patcher",
    "runs": 10,
    "recovered": 0,
    "p50_s": None,
    "p90_s": None,
    "max_s": None,
    "service_account_patched": 10,
    "service_account_patched_p50_s": 0.4,
}


@pytest.mark.parametrize(
    ("peer", "says"),
    [
        (None, "not run: not part of this run"),
        ({"ready": False, "reason": "PATCHER_SRC is not set"}, "not run: PATCHER_SRC is not set"),
        ({"ready": True}, "had its secret in 10/10 runs"),
    ],
)
def test_recovery_says_why_the_patcher_has_no_figures(peer: Any, says: str) -> None:
    r = copy.deepcopy(SHAPES["recovery"])
    if peer is not None:
        r["peer"] = peer
    if peer and peer["ready"]:
        r["summary"].append(PATCHER_ROW)
    text = importlib.import_module("bench.recovery").render(r)
    row = next(line for line in text.splitlines() if "| titansoft" in line)
    assert ("| 0/10 " in row) == bool(peer and peer["ready"]), row
    assert says in text
    headline = report.recovery_headline(r)
    assert ("ServiceAccount patched in 10 of 10 runs" in headline) == bool(peer and peer["ready"])


# --------------------------------------------------------------------------------------
# Results carry their provenance
# --------------------------------------------------------------------------------------


def test_write_result_records_date_commit_and_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "machine", lambda: {"nproc": 2, "load_average_at_start": [1.0]})
    path = common.write_result("storm", {"pods": 1000})
    assert path == tmp_path / "storm.json"
    r = json.loads(path.read_text())
    assert r["pods"] == 1000
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["date"])
    assert re.fullmatch(r"[0-9a-f]{40}", r["commit"])
    assert isinstance(r["dirty"], bool)
    assert r["machine"]["load_average_at_start"] == [1.0]
    quick = common.write_result("storm", {"pods": 60}, quick=True)
    assert quick == tmp_path / "quick" / "storm.json"
    assert json.loads(path.read_text())["pods"] == 1000
