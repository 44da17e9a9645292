"""explain's pure parts: kubectl-style targets and the human text."""

from __future__ import annotations

import pytest

from pullmedic.cli import build_parser
from pullmedic.explain import ExplainError, Report, parse_target, render


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("web-1", ("Pod", "web-1")),
        ("pod/web-1", ("Pod", "web-1")),
        ("po/web-1", ("Pod", "web-1")),
        ("deploy/web", ("Deployment", "web")),
        ("deployment.apps/web", ("Deployment", "web")),
        ("sts/db", ("StatefulSet", "db")),
        ("ds/agent", ("DaemonSet", "agent")),
        ("cj/nightly", ("CronJob", "nightly")),
    ],
)
def test_targets_in_kubectl_spelling(target: str, want: tuple[str, str]) -> None:
    assert parse_target(target) == want


@pytest.mark.parametrize("target", ["service/web", "deploy/", "configmap/x"])
def test_other_targets_are_refused(target: str) -> None:
    with pytest.raises(ExplainError):
        parse_target(target)


def test_explain_is_a_subcommand() -> None:
    args = build_parser().parse_args(["explain", "deploy/web", "-n", "shop", "--json"])
    assert (args.target, args.namespace, args.json) == ("deploy/web", "shop", True)


def test_text_labels_an_anonymous_probe_and_an_open_circuit() -> None:
    r = Report(
        namespace="shop",
        pod="web-1",
        phase="Pending",
        node="n1",
        workload="Deployment/web",
        stuck=[{"container": "app", "image": "r/x:1", "reason": "ImagePullBackOff", "message": ""}],
        credentials={
            "pullSecrets": ["regcred"],
            "read": [],
            "forbidden": ["regcred"],
            "missing": [],
            "anonymous": True,
        },
        circuit="open",
        last_remediation={
            "time": "2026-01-01T00:00:00Z",
            "action": "PatchWorkloadImage",
            "cause": "TagNotFound",
            "previousImage": "r/x:0",
            "newImage": "r/x:1",
        },
    )
    text = render(r)
    assert "ANONYMOUSLY" in text and "regcred" in text
    assert "Circuit open" in text and "pullmedic.dev/circuit" in text
    assert "r/x:0 -> r/x:1" in text
    assert "pullmedic said nothing" in text
    healthy = Report(namespace="shop", pod="web-2", phase="Running", node="n1", workload=None)
    assert "No container is stuck" in render(healthy)
