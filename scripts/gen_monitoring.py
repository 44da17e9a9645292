"""Generate the monitoring files: the Grafana dashboard and the kustomize PrometheusRule.

Sources: the alert rules are written by hand in charts/pullmedic/files/pullmedic.rules.yaml
(the chart ships that file as its PrometheusRule's spec); the dashboard's panels are
written below. Run `python scripts/gen_monitoring.py`; tests/unit/test_monitoring.py checks
the committed files match, so the chart and manifests/overlays/monitoring never drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "pullmedic"
RULES = CHART / "files" / "pullmedic.rules.yaml"
CHART_DASHBOARD = CHART / "dashboards" / "pullmedic.json"
OVERLAY = REPO / "manifests" / "overlays" / "monitoring"
OVERLAY_RULE = OVERLAY / "prometheusrule.yaml"
OVERLAY_DASHBOARD = OVERLAY / "pullmedic.json"

NAMESPACE = "pullmedic-system"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


# ---------------------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------------------


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "refId": ref}
    if legend:
        t["legendFormat"] = legend
    if instant:
        t["instant"] = True
        t["range"] = False
        t["format"] = "table"
    return t


def quantiles(metric: str) -> list[dict[str, Any]]:
    return [
        target(
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{RI}])))",
            f"p{round(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]


def panel(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str = "short",
    kind: str = "timeseries",
    stack: bool = False,
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 20 if stack else 10,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        }
        p["options"] = {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["max", "last"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    elif kind == "table":
        p["options"] = {"showHeader": True}
        p["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}
        ]
    return p


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


STATS = [
    panel(
        "Pods stuck pulling now",
        "Pods currently stuck pulling an image, all causes (the acting replica's count).",
        [target("sum(max by (cause) (pullmedic_stuck_pods))")],
        kind="stat",
    ),
    panel(
        "Remediations applied",
        "Actions pullmedic applied in the dashboard's time range.",
        [target('sum(increase(pullmedic_actions_total{outcome="applied"}[$__range]))')],
        kind="stat",
    ),
    panel(
        "Back-off saved",
        "Image pull back-off avoided by recreating stuck pods after a fix, in the range.",
        [target("sum(increase(pullmedic_backoff_seconds_saved_total[$__range]))")],
        unit="s",
        kind="stat",
    ),
    panel(
        "Workloads whose image would not pull",
        "Audit: workloads whose template image would not pull for a new pod.",
        [target("count(max by (namespace, kind, name) (pullmedic_image_unavailable) > 0)")],
        kind="stat",
    ),
]

ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "Pull failures",
        [
            panel(
                "Failures diagnosed, by cause",
                "New pull failures diagnosed per interval (one per workload and image), by "
                "the cause the registry gave.",
                [
                    target(
                        f"sum by (cause) (increase(pullmedic_detections_total[{RI}]))", "{{cause}}"
                    )
                ],
                stack=True,
            ),
            panel(
                "Stuck pods, by cause",
                "Pods stuck pulling an image right now. Pods no policy fixes stay here "
                "(alert PullMedicPodsStuckOnPull).",
                [target("max by (cause) (pullmedic_stuck_pods) > 0", "{{cause}}")],
                stack=True,
            ),
            panel(
                "Kubelet pull attempts on stuck workloads",
                "Pull attempts the kubelet made so far, summed over the stuck workloads.",
                [target("max(pullmedic_pull_attempts)", "attempts")],
            ),
            panel(
                "Workloads whose image would not pull (audit)",
                "Each row a workload whose template image would not pull for a new pod "
                "(alert PullMedicWorkloadImageUnavailable).",
                [
                    target(
                        "max by (namespace, kind, name, cause) (pullmedic_image_unavailable) > 0",
                        instant=True,
                    )
                ],
                kind="table",
            ),
        ],
    ),
    (
        "Remediation",
        [
            panel(
                "Time to action",
                "From the first failure pullmedic saw to the action it took.",
                quantiles("pullmedic_time_to_action_seconds"),
                unit="s",
            ),
            panel(
                "Actions, by type and outcome",
                "Actions per interval: applied, unchanged, skipped, failed, dry-run.",
                [
                    target(
                        f"sum by (action, outcome) (increase(pullmedic_actions_total[{RI}]))",
                        "{{action}} {{outcome}}",
                    )
                ],
                stack=True,
            ),
            panel(
                "Plans, by mode and decision",
                "Decisions per interval: applied (Remediate), suggested (Suggest), observed.",
                [
                    target(
                        f"sum by (mode, decision) (increase(pullmedic_plans_total[{RI}]))",
                        "{{mode}} {{decision}}",
                    )
                ],
                stack=True,
            ),
            panel(
                "Back-off seconds saved and lost",
                "Saved: back-off avoided by recreating stuck pods after a fix. Lost: time "
                "workloads spent stuck in back-off before they recovered.",
                [
                    target(f"sum(increase(pullmedic_backoff_seconds_saved_total[{RI}]))", "saved"),
                    target(
                        f"sum(increase(pullmedic_backoff_seconds_lost_total[{RI}]))", "lost", "B"
                    ),
                ],
                unit="s",
            ),
        ],
    ),
    (
        "Registries",
        [
            panel(
                "Probe latency",
                "Time to diagnose one image against its registry.",
                quantiles("pullmedic_probe_duration_seconds"),
                unit="s",
            ),
            panel(
                "Probes per second",
                "Images diagnosed against their registries.",
                [target(f"sum(rate(pullmedic_probe_duration_seconds_count[{RI}]))", "probes")],
                unit="reqps",
            ),
            panel(
                "Registry errors: rate limits, unreachable, incomplete images",
                "Failures whose cause is the registry's side (new diagnoses per interval), and "
                "pods stuck on them now (alert PullMedicRegistryRateLimited).",
                [
                    target(
                        "sum by (cause) (increase(pullmedic_detections_total"
                        f'{{cause=~"RateLimited|RegistryUnreachable|ImageIncomplete"}}[{RI}]))',
                        "diagnosed {{cause}}",
                    ),
                    target(
                        "max by (cause) (pullmedic_stuck_pods"
                        '{cause=~"RateLimited|RegistryUnreachable|ImageIncomplete"}) > 0',
                        "stuck {{cause}}",
                        "B",
                    ),
                ],
            ),
            panel(
                "Kubernetes API failures",
                "API calls that failed after their retries, by reason.",
                [
                    target(
                        f"sum by (reason) (increase(pullmedic_kube_request_failures_total[{RI}]))",
                        "{{reason}}",
                    )
                ],
                stack=True,
            ),
        ],
    ),
    (
        "Admission",
        [
            panel(
                "Admission decisions",
                "Admission reviews answered per second: allowed, warned, mutated, denied.",
                [
                    target(
                        f"sum by (decision) (rate(pullmedic_admission_reviews_total[{RI}]))",
                        "{{decision}}",
                    )
                ],
                unit="reqps",
                stack=True,
            ),
            panel(
                "Admission decisions, share",
                "The share of each decision among all admission reviews.",
                [
                    target(
                        f"sum by (decision) (rate(pullmedic_admission_reviews_total[{RI}]))"
                        f" / ignoring (decision) group_left"
                        f" sum(rate(pullmedic_admission_reviews_total[{RI}]))",
                        "{{decision}}",
                    )
                ],
                unit="percentunit",
                stack=True,
            ),
        ],
    ),
    (
        "Operator",
        [
            panel(
                "Replicas: ready, healthy, leader",
                "Per replica: ready (watches established), healthy (liveness), leader (acts).",
                [
                    target("pullmedic_ready", "ready {{pod}}"),
                    target("pullmedic_healthy", "healthy {{pod}}", "B"),
                    target("pullmedic_leader", "leader {{pod}}", "C"),
                ],
            ),
            panel(
                "Background loop restarts",
                "Loops restarted after a failure or a missed deadline "
                "(alert PullMedicLoopRestarting).",
                [
                    target(
                        f"sum by (loop) (increase(pullmedic_loop_restarts_total[{RI}]))",
                        "{{loop}}",
                    )
                ],
                stack=True,
            ),
        ],
    ),
]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for i, p in enumerate(STATS):
        panels.append({**p, "id": next_id, "gridPos": {"h": 4, "w": 6, "x": 6 * i, "y": y}})
        next_id += 1
    y += 4
    for title, members in ROWS:
        panels.append({**row(title), "id": next_id, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        next_id += 1
        y += 1
        for i, p in enumerate(members):
            x = 12 * (i % 2)
            panels.append({**p, "id": next_id, "gridPos": {"h": 8, "w": 12, "x": x, "y": y}})
            next_id += 1
            if i % 2 == 1 or i == len(members) - 1:
                y += 8
    return {
        "uid": "pullmedic",
        "title": "pullmedic",
        "description": "Image pull failures: what broke, what pullmedic did, how fast.",
        "tags": ["pullmedic", "kubernetes", "images"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                }
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def dashboard_text() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


# ---------------------------------------------------------------------------------------
# The kustomize PrometheusRule: the chart's rules file as its spec, text for text
# ---------------------------------------------------------------------------------------

RULE_HEADER = f"""\
# Generated by scripts/gen_monitoring.py from charts/pullmedic/files/pullmedic.rules.yaml:
# edit that file and run the script. Runbooks: docs/runbooks.md.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: pullmedic
  namespace: {NAMESPACE}
  labels:
    app.kubernetes.io/name: pullmedic
    app.kubernetes.io/component: alerts
spec:
"""


def prometheusrule_text() -> str:
    body = "".join(
        ("  " + line if line.strip() else line) + "\n"
        for line in RULES.read_text().splitlines()
        if not line.startswith("#")
    )
    return RULE_HEADER + body


def outputs() -> dict[Path, str]:
    return {
        CHART_DASHBOARD: dashboard_text(),
        OVERLAY_DASHBOARD: dashboard_text(),
        OVERLAY_RULE: prometheusrule_text(),
    }


def main() -> int:
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
