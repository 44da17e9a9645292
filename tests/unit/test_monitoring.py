"""The alerts and the dashboard: what they query exists, and the chart and kustomize agree.

- the generated files (kustomize PrometheusRule, both copies of the dashboard) are what
  scripts/gen_monitoring.py renders, so the chart and manifests/overlays/monitoring ship
  the same rules and the same dashboard;
- every alert follows the monitoring-mixin conventions and has its runbook section;
- every PromQL expression, in the rules and in every dashboard panel, names only series
  the operator exports (read from the metric definitions in telemetry/metrics.py).

`promtool test rules` runs the rules themselves: tests/integration/test_alerts.py.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
METRICS = REPO / "operator" / "pullmedic" / "telemetry" / "metrics.py"
CHART = REPO / "charts" / "pullmedic"
RULES = CHART / "files" / "pullmedic.rules.yaml"
DASHBOARD = CHART / "dashboards" / "pullmedic.json"
OVERLAY = REPO / "manifests" / "overlays" / "monitoring"
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/pullmedic/pullmedic/blob/main/docs/runbooks.md#"

Doc = dict[str, Any]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_monitoring", REPO / "scripts" / "gen_monitoring.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules() -> list[Doc]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def alerts() -> list[Doc]:
    return [r for r in rules() if "alert" in r]


def dashboard() -> Doc:
    doc: Doc = json.loads(DASHBOARD.read_text())
    return doc


# ---------------------------------------------------------------------------------------
# What the operator exports, from its metric definitions
# ---------------------------------------------------------------------------------------

SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
}


def exported_series(source: str | None = None) -> set[str]:
    """Series names a scrape can show: each definition's name with its type's suffixes
    (prometheus_client strips a counter's `_total` and adds `_total` and `_created`)."""
    tree = ast.parse(source if source is not None else METRICS.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        kind = node.func.id
        if kind not in SUFFIXES or not node.args:
            continue
        first = node.args[0]
        assert isinstance(first, ast.Constant) and isinstance(first.value, str), ast.dump(node)
        base = first.value.removesuffix("_total") if kind == "Counter" else first.value
        names.update(base + suffix for suffix in SUFFIXES[kind])
    return names


def test_exported_series_follow_the_client_library() -> None:
    got = exported_series(
        "from prometheus_client import Counter, Gauge, Histogram\n"
        "A = Counter('a_total', 'doc', ['x'])\n"
        "B = Counter('b', 'doc')\n"
        "C = Histogram('c_seconds', 'doc')\n"
        "D = Gauge('d', 'doc')\n"
    )
    assert got == {
        "a_total",
        "a_created",
        "b_total",
        "b_created",
        "c_seconds_bucket",
        "c_seconds_sum",
        "c_seconds_count",
        "c_seconds_created",
        "d",
    }


def test_the_operator_exports_what_the_alerts_are_built_on() -> None:
    exported = exported_series()
    for name in (
        "pullmedic_stuck_pods",
        "pullmedic_image_unavailable",
        "pullmedic_actions_total",
        "pullmedic_ready",
        "pullmedic_loop_restarts_total",
        "pullmedic_time_to_action_seconds_bucket",
    ):
        assert name in exported, name


# ---------------------------------------------------------------------------------------
# Metric names in PromQL
# ---------------------------------------------------------------------------------------

KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "start",
    "end",
}


def metric_names(expr: str) -> set[str]:
    """The series selectors' metric names in one PromQL expression.

    Strings, label matchers, ranges, grouping clauses and Grafana variables are removed;
    what is left that is not a function call, a keyword or a number is a metric name."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("max by (cause) (pullmedic_stuck_pods) > 0", {"pullmedic_stuck_pods"}),
        (
            'sum by (action) (rate(pullmedic_actions_total{outcome="failed"}[15m])) / '
            "ignoring (x) group_left sum(rate(up[$__rate_interval]))",
            {"pullmedic_actions_total", "up"},
        ),
        ("absent(pullmedic_ready == 1) or vector(0) > bool 2", {"pullmedic_ready"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) * on (pod) "
            'group_left (node) kube_pod_info{cause=~"a|b"}',
            {"x_bucket", "kube_pod_info"},
        ),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def unknown_metrics(expr: str) -> set[str]:
    return metric_names(expr) - exported_series()


def test_an_unknown_metric_is_noticed() -> None:
    """Guards the checks below: a misspelt or foreign metric is a finding."""
    assert unknown_metrics("sum(rate(pullmedic_action_total[5m]))") == {"pullmedic_action_total"}
    assert unknown_metrics("kube_pod_info and pullmedic_ready") == {"kube_pod_info"}
    assert unknown_metrics("pullmedic_stuck_pods_total") == {"pullmedic_stuck_pods_total"}


# ---------------------------------------------------------------------------------------
# The alerts
# ---------------------------------------------------------------------------------------


def test_the_generated_monitoring_files_are_committed() -> None:
    for path, text in generator().outputs().items():
        assert path.exists() and path.read_text() == text, (
            f"run python scripts/gen_monitoring.py ({path.relative_to(REPO)})"
        )


def test_kustomize_and_chart_ship_the_same_rules() -> None:
    """The chart's PrometheusRule spec is files/pullmedic.rules.yaml as it is (the
    template embeds it with .Files.Get; tests/integration/test_chart.py renders it)."""
    rule = yaml.safe_load((OVERLAY / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "pullmedic-system"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    template = (CHART / "templates" / "prometheusrule.yaml").read_text()
    assert '.Files.Get "files/pullmedic.rules.yaml" | nindent 2' in template
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert "prometheusrule.yaml" in kustomization["resources"]


def test_alerts_cover_what_a_platform_team_is_paged_for() -> None:
    names = {a["alert"] for a in alerts()}
    assert names == {
        "PullMedicPodsStuckOnPull",
        "PullMedicWorkloadImageUnavailable",
        "PullMedicRemediationsFailing",
        "PullMedicCircuitOpen",
        "PullMedicRegistryRateLimited",
        "PullMedicNotReady",
        "PullMedicDown",
        "PullMedicLoopRestarting",
    }
    assert len(names) == len(alerts()), "an alert name is used twice"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: str(a["alert"]))
def test_alert_follows_the_mixin_conventions(alert: Doc) -> None:
    assert re.fullmatch(r"PullMedic(?:[A-Z][a-z]+)+", alert["alert"]), alert["alert"]
    assert alert["labels"]["severity"] in ("info", "warning", "critical")
    assert re.fullmatch(r"\d+[smh]", alert["for"]), alert.get("for")
    annotations = alert["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["summary"].rstrip().endswith("."), "a summary is one sentence"
    assert annotations["runbook_url"] == RUNBOOK_URL + alert["alert"].lower()


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: str(a["alert"]))
def test_alert_queries_only_metrics_the_operator_exports(alert: Doc) -> None:
    names = metric_names(alert["expr"])
    assert names, f"{alert['alert']} queries no metric"
    assert not names - exported_series(), alert["expr"]


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_alert_has_its_runbook_section_and_every_section_an_alert() -> None:
    text = RUNBOOKS.read_text()
    sections = {github_anchor(h) for h in re.findall(r"^## (.+)$", text, flags=re.M)}
    wanted = {a["annotations"]["runbook_url"].removeprefix(RUNBOOK_URL) for a in alerts()}
    assert wanted == sections
    for alert in alerts():
        body = text.split(f"## {alert['alert']}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Means**", "**Confirm**", "**Do**"):
            assert part in body, (alert["alert"], part)
        assert "kubectl" in body, alert["alert"]
    assert "kubectl pullmedic explain" in text


def test_chart_monitoring_is_off_by_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]
    assert values["prometheusRule"]["enabled"] is False
    assert values["grafanaDashboard"]["enabled"] is False
    assert values["grafanaDashboard"]["labels"] == {"grafana_dashboard": "1"}


# ---------------------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------------------


def panels() -> list[Doc]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_the_dashboard_is_the_same_file_in_the_chart_and_the_overlay() -> None:
    assert (OVERLAY / "pullmedic.json").read_text() == DASHBOARD.read_text()
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    (generated,) = kustomization["configMapGenerator"]
    assert generated["files"] == ["pullmedic.json"]
    assert generated["options"]["labels"]["grafana_dashboard"] == "1"
    template = (CHART / "templates" / "dashboard.yaml").read_text()
    assert '.Files.Get "dashboards/pullmedic.json"' in template


def test_every_panel_queries_only_metrics_the_operator_exports() -> None:
    exported = exported_series()
    assert panels()
    for p in panels():
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = metric_names(t["expr"])
            assert names, (p["title"], t["expr"])
            assert not names - exported, (p["title"], t["expr"], names - exported)


def test_the_dashboard_shows_what_operators_ask_about() -> None:
    queried = {name for p in panels() for t in p["targets"] for name in metric_names(t["expr"])}
    for metric in (
        "pullmedic_detections_total",  # failures by cause
        "pullmedic_time_to_action_seconds_bucket",
        "pullmedic_actions_total",  # remediations and outcomes
        "pullmedic_backoff_seconds_saved_total",
        "pullmedic_stuck_pods",
        "pullmedic_probe_duration_seconds_bucket",  # probe latency
        "pullmedic_admission_reviews_total",  # admission decisions
        "pullmedic_image_unavailable",
    ):
        assert metric in queried, metric


def test_dashboard_is_well_formed() -> None:
    doc = dashboard()
    assert doc["uid"] == "pullmedic" and doc["title"]
    (var,) = doc["templating"]["list"]
    assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource", "prometheus")
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
