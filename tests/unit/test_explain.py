"""explain's pure parts: kubectl-style targets, the human text, the record it shows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pullmedic.app.cli import build_parser
from pullmedic.app.explain import parse_target, render
from pullmedic.app.inspection import ExplainError, Report, RestLists, last_remediation
from pullmedic.core.diagnosis import Cause, Diagnosis
from pullmedic.core.records import REMEDIATION_ANNOTATION


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


def test_stuck_containers_are_labelled_by_kind() -> None:
    r = Report(
        namespace="shop",
        pod="web-1",
        phase="Running",
        node="n1",
        workload=None,
        stuck=[
            {
                "kind": "ephemeralContainers",
                "container": "dbg",
                "image": "r/debug:1",
                "reason": "ErrImagePull",
                "message": "",
            }
        ],
    )
    assert "Ephemeral container dbg: ErrImagePull for image r/debug:1" in render(r)


def test_the_record_is_read_as_the_operator_reads_it() -> None:
    raw = json.dumps(
        {
            "time": "2026-01-01T00:00:00.500000Z",
            "cause": "TagNotFound",
            "policy": "ClusterPullPolicy/heal",
            "action": "PatchWorkloadImage",
            "container": "app",
            "previousImage": "r/x:0",
            "newImage": "r/x:1",
            "secret": None,
        }
    )
    assert last_remediation({REMEDIATION_ANNOTATION: raw}) == {
        "time": "2026-01-01T00:00:00.500000Z",
        "cause": "TagNotFound",
        "container": "app",
        "action": "PatchWorkloadImage",
        "previousImage": "r/x:0",
        "newImage": "r/x:1",
        "secret": "",
    }
    assert last_remediation({}) is None
    hostile = last_remediation({REMEDIATION_ANNOTATION: '{"time": "yesterday"}'})
    assert hostile == {"raw": '{"time": "yesterday"}'}
    r = Report(
        namespace="shop",
        pod="web-1",
        phase="Pending",
        node="n1",
        workload="Deployment/web",
        last_remediation=hostile,
    )
    assert "record on Deployment/web is unreadable" in render(r)


class RecordingKube:
    """Stands in for RestKube: the requests explain's list reads send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, list[tuple[str, str]] | None]] = []

    async def request(
        self, method: str, path: str, query: list[tuple[str, str]] | None = None
    ) -> dict[str, Any]:
        self.sent.append((method, path, query))
        return {"items": [{"metadata": {"name": "x"}}]}


async def test_list_reads_use_selectors() -> None:
    kube = RecordingKube()
    lists = RestLists(kube)  # type: ignore[arg-type]
    assert await lists.pods("shop", {"b": "2", "a": "1"}) == [{"metadata": {"name": "x"}}]
    await lists.jobs("shop")
    await lists.events("shop", "Deployment", "web")
    assert kube.sent == [
        ("GET", "/api/v1/namespaces/shop/pods", [("labelSelector", "a=1,b=2")]),
        ("GET", "/apis/batch/v1/namespaces/shop/jobs", []),
        (
            "GET",
            "/api/v1/namespaces/shop/events",
            [("fieldSelector", "involvedObject.kind=Deployment,involvedObject.name=web")],
        ),
    ]


def available(image: str) -> Diagnosis:
    return Diagnosis(image, Cause.ImageAvailable, "high", "It pulls.")


@pytest.mark.parametrize(
    ("diagnoses", "commands", "to_fix"),
    [
        # Nothing planned and every image pulls now: recreate the pod, as planning says it.
        ([available("r/x:1")], [], "To fix: the image pulls now; kubectl -n shop delete pod web-1"),
        ([available("r/x:1")], ["kubectl -n shop delete pod web-1 web-2"], "To fix:\n  kubectl"),
        ([Diagnosis("r/x:1", Cause.TagNotFound, "high", "Gone.")], [], None),
        ([], [], None),
    ],
)
def test_to_fix(diagnoses: list[Diagnosis], commands: list[str], to_fix: str | None) -> None:
    r = Report("shop", "web-1", "Pending", "n1", None, diagnoses=diagnoses, commands=commands)
    text = render(r)
    if to_fix is None:
        assert "To fix" not in text
    else:
        assert to_fix in text
