"""`promtool test rules` on pullmedic's alerts: each fires on the series it is for, and
stays quiet on series that look close but must not page anyone.

The rules are read from the kustomize PrometheusRule (manifests/overlays/monitoring; the
chart ships the same spec, tests/unit/test_monitoring.py). promtool is built from the
`github.com/prometheus/prometheus` module at the version pinned in sandbox/versions.env
into the sandbox cache, the first time a test needs it (sandbox/build.sh promtool). No
cluster is needed.

Expected annotations are the rule's templates expanded here (labels, `$value` and the two
humanize functions the rules use), so a template that names a label the expression drops
fails the test.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox import paths

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "manifests" / "overlays" / "monitoring" / "prometheusrule.yaml"

Doc = dict[str, Any]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(paths.binary("promtool")), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def alert_rules() -> dict[str, Doc]:
    spec = yaml.safe_load(RULE.read_text())["spec"]
    return {r["alert"]: r for g in spec["groups"] for r in g["rules"] if "alert" in r}


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest's rules as a Prometheus rule file, and promtool's own check of it."""
    d = tmp_path_factory.mktemp("rules")
    spec = yaml.safe_load(RULE.read_text())["spec"]
    (d / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = promtool("check", "rules", "rules.yaml", cwd=d)
    assert out.returncode == 0, out.stdout + out.stderr
    return d


# ---------------------------------------------------------------------------------------
# Expected annotations: the rule's templates, expanded as Prometheus does for these cases
# ---------------------------------------------------------------------------------------


def go_float(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)


def expand(template: str, labels: dict[str, str], value: float) -> str:
    def one(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr.startswith("$labels."):
            return labels.get(expr.removeprefix("$labels."), "<no value>")
        if expr == "$value":
            return go_float(value)
        if expr == "$value | humanize":
            return f"{value:.4g}"
        if expr == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        raise AssertionError(f"template {expr!r}: teach expand() what Prometheus prints")

    return re.sub(r"\{\{(.*?)\}\}", one, template)


@dataclass
class Firing:
    labels: dict[str, str]  # the expression's labels (the rule adds severity)
    value: float


@dataclass
class Case:
    """Input series (promtool's expanding notation, one sample a minute), the evaluation
    time and the alerts that must be firing then (none: the quiet case)."""

    name: str
    series: dict[str, str]
    at: str
    firing: list[Firing] = field(default_factory=list)


CASES: dict[str, list[Case]] = {
    "PullMedicPodsStuckOnPull": [
        Case(
            "stuck on a missing tag, on the acting replica only",
            {
                'pullmedic_stuck_pods{cause="TagNotFound",pod="pm-a"}': "2x30",
                'pullmedic_stuck_pods{cause="TagNotFound",pod="pm-b"}': "0x30",
                'pullmedic_stuck_pods{cause="RateLimited",pod="pm-a"}': "0x30",
            },
            "15m",
            [Firing({"cause": "TagNotFound"}, 2)],
        ),
        Case(
            "stuck for a few minutes, then fixed by a policy",
            {
                'pullmedic_stuck_pods{cause="TagNotFound",pod="pm-a"}': "3 3 3 3 3 0x25",
                'pullmedic_stuck_pods{cause="TagNotFound",pod="pm-b"}': "0x30",
            },
            "15m",
        ),
    ],
    "PullMedicWorkloadImageUnavailable": [
        Case(
            "the audit found a deleted tag",
            {
                "pullmedic_image_unavailable"
                '{namespace="shop",kind="Deployment",name="web",cause="TagNotFound",'
                'pod="pm-a"}': "1x40",
            },
            "20m",
            [
                Firing(
                    {
                        "namespace": "shop",
                        "kind": "Deployment",
                        "name": "web",
                        "cause": "TagNotFound",
                    },
                    1,
                )
            ],
        ),
        Case(
            "found, then pullable again at the next check (the series is removed)",
            {
                "pullmedic_image_unavailable"
                '{namespace="shop",kind="Deployment",name="web",cause="TagNotFound",'
                'pod="pm-a"}': "1 1 1 1 1 stale",
            },
            "20m",
        ),
    ],
    "PullMedicRemediationsFailing": [
        Case(
            "every image patch fails",
            {
                'pullmedic_actions_total{action="PatchWorkloadImage",outcome="failed"}': "0+1x40",
                'pullmedic_actions_total{action="PatchWorkloadImage",outcome="applied"}': "0x40",
                'pullmedic_actions_total{action="RecreatePods",outcome="applied"}': "0+1x40",
            },
            "30m",
            [Firing({"action": "PatchWorkloadImage"}, 1)],
        ),
        Case(
            "an occasional failure among many applied",
            {
                'pullmedic_actions_total{action="PatchWorkloadImage",outcome="failed"}': "0+1x40",
                'pullmedic_actions_total{action="PatchWorkloadImage",outcome="applied"}': (
                    "0+9x40"
                ),
                'pullmedic_actions_total{action="PatchWorkloadImage",outcome="dry-run"}': (
                    "0+50x40"
                ),
            },
            "30m",
        ),
    ],
    "PullMedicCircuitOpen": [
        Case(
            "a fix that did not hold",
            {
                'pullmedic_circuits_opened_total{namespace="shop",kind="Deployment",name="web",'
                'cause="TagNotFound",pod="pm-a"}': "0x10 1x20",
            },
            "20m",
            [
                Firing(
                    {
                        "namespace": "shop",
                        "kind": "Deployment",
                        "name": "web",
                        "cause": "TagNotFound",
                    },
                    1,
                )
            ],
        ),
        Case(
            "opened long ago, nothing since",
            {
                'pullmedic_circuits_opened_total{namespace="shop",kind="Deployment",name="web",'
                'cause="TagNotFound",pod="pm-a"}': "1x150",
            },
            "140m",
        ),
    ],
    "PullMedicRegistryRateLimited": [
        Case(
            "pods stuck on 429s",
            {
                'pullmedic_stuck_pods{cause="RateLimited",pod="pm-a"}': "3x30",
                'pullmedic_stuck_pods{cause="RateLimited",pod="pm-b"}': "0x30",
            },
            "15m",
            [Firing({}, 3)],
        ),
        Case(
            "no pod stuck, but the audit met a 429",
            {
                'pullmedic_stuck_pods{cause="RateLimited",pod="pm-a"}': "0x30",
                "pullmedic_image_unavailable"
                '{namespace="shop",kind="Deployment",name="web",cause="RateLimited",'
                'pod="pm-a"}': "1x30",
            },
            "15m",
            [Firing({}, 1)],
        ),
        Case(
            "pods stuck for another cause",
            {
                'pullmedic_stuck_pods{cause="RateLimited",pod="pm-a"}': "0x30",
                'pullmedic_stuck_pods{cause="TagNotFound",pod="pm-a"}': "4x30",
                "pullmedic_image_unavailable"
                '{namespace="shop",kind="Deployment",name="web",cause="TagNotFound",'
                'pod="pm-a"}': "1x30",
            },
            "15m",
        ),
    ],
    "PullMedicNotReady": [
        Case(
            "one replica unready, the other ready",
            {
                'pullmedic_ready{pod="pm-a",instance="10.0.0.1:9090"}': "0x30",
                'pullmedic_ready{pod="pm-b",instance="10.0.0.2:9090"}': "1x30",
            },
            "15m",
            [Firing({"pod": "pm-a", "instance": "10.0.0.1:9090"}, 0)],
        ),
        Case(
            "unready while starting, then ready",
            {
                'pullmedic_ready{pod="pm-a",instance="10.0.0.1:9090"}': "0 0 0 0 0 1x25",
                'pullmedic_ready{pod="pm-b",instance="10.0.0.2:9090"}': "1x30",
            },
            "15m",
        ),
    ],
    "PullMedicDown": [
        Case(
            "both replicas unready",
            {
                'pullmedic_ready{pod="pm-a",instance="10.0.0.1:9090"}': "0x30",
                'pullmedic_ready{pod="pm-b",instance="10.0.0.2:9090"}': "0x30",
            },
            "15m",
            [Firing({}, 1)],
        ),
        Case(
            "nothing scraped at all",
            {'up{job="something-else"}': "1x30"},
            "15m",
            [Firing({}, 1)],
        ),
        Case(
            "the standby is unready, the leader ready",
            {
                'pullmedic_ready{pod="pm-a",instance="10.0.0.1:9090"}': "1x30",
                'pullmedic_ready{pod="pm-b",instance="10.0.0.2:9090"}': "0x30",
            },
            "15m",
        ),
    ],
    "PullMedicLoopRestarting": [
        Case(
            "the audit loop fails every minute",
            {
                'pullmedic_loop_restarts_total{loop="audit",pod="pm-a"}': "0+1x40",
                'pullmedic_loop_restarts_total{loop="status",pod="pm-a"}': "0x40",
            },
            "30m",
            [Firing({"loop": "audit"}, 15)],
        ),
        Case(
            "one restart after an API server blip",
            {
                'pullmedic_loop_restarts_total{loop="status",pod="pm-a"}': "0 0 0 1x37",
                'pullmedic_loop_restarts_total{loop="pod-watch",pod="pm-a"}': "0x10 1x30",
            },
            "30m",
        ),
    ],
}


def promtool_group(alert: Doc, case: Case) -> Doc:
    exp = []
    for f in case.firing:
        labels = {**f.labels, **alert["labels"]}
        exp.append(
            {
                "exp_labels": labels,
                "exp_annotations": {
                    k: expand(v, labels, f.value) for k, v in alert["annotations"].items()
                },
            }
        )
    return {
        "name": case.name,
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
        "alert_rule_test": [{"eval_time": case.at, "alertname": alert["alert"], "exp_alerts": exp}],
    }


def run_cases(rules_dir: Path, name: str, alert: Doc, cases: list[Case]) -> str:
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [promtool_group(alert, c) for c in cases],
    }
    path = rules_dir / f"{name}.test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = promtool("test", "rules", path.name, cwd=rules_dir)
    assert out.returncode == 0, f"promtool test rules {path.name}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    assert set(CASES) == set(alert_rules())
    for name, cases in CASES.items():
        assert any(c.firing for c in cases), f"{name}: no case where it fires"
        assert any(not c.firing for c in cases), f"{name}: no case where it must stay quiet"


@pytest.mark.parametrize("name", sorted(CASES))
def test_alert_under_promtool(rules_dir: Path, name: str) -> None:
    out = run_cases(rules_dir, name, alert_rules()[name], CASES[name])
    assert "SUCCESS" in out


def test_promtool_fails_a_wrong_expectation(rules_dir: Path) -> None:
    """Guards the tests above: an alert expected before its `for:` has passed, or with a
    wrong annotation, is a failure."""
    alert = alert_rules()["PullMedicPodsStuckOnPull"]
    early = Case(
        "not yet: pending, not firing",
        {'pullmedic_stuck_pods{cause="TagNotFound",pod="pm-a"}': "2x30"},
        "5m",
        [Firing({"cause": "TagNotFound"}, 2)],
    )
    wrong_value = Case(
        "firing, with another count",
        {'pullmedic_stuck_pods{cause="TagNotFound",pod="pm-a"}': "2x30"},
        "15m",
        [Firing({"cause": "TagNotFound"}, 7)],
    )
    for case in (early, wrong_value):
        with pytest.raises(AssertionError, match="FAILED"):
            run_cases(rules_dir, "guard", alert, [case])
