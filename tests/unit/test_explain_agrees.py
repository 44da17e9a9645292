"""``explain`` and the operator agree: every pod the operator treats as stuck is reported
stuck by explain (init and ephemeral containers too), with the same cause, and explain
prints the very command the operator suggests for the same fix.

Both run against the same in-memory cluster: the engine first (Suggest mode, so its
Events carry its diagnosis and command), then explain's gathering over the same objects.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import pytest

from pullmedic.app.explain import render
from pullmedic.app.inspection import ExplainError, Report, gather
from pullmedic.core.detection import PULL_REASONS, stuck_containers
from pullmedic.core.diagnosis import Cause, Diagnosis, Fix
from pullmedic.kube.client import KubeError
from pullmedic.probe.prober import Prober
from tests.unit.fakekube import FakeKube, FakeProber
from tests.unit.test_engine_scenarios import World, cluster_policy, until

NS = "team-a"
IMAGE = "registry.example.com/app:1.4.99"
FIXED = "registry.example.com/app:1.4.3"
MAIN = "registry.example.com/main:1"
STATUS_FIELDS = {
    "containers": "containerStatuses",
    "initContainers": "initContainerStatuses",
    "ephemeralContainers": "ephemeralContainerStatuses",
}
# What the kubelet writes into the waiting reason when it fails before pulling.
KUBELET_ERRORS = (
    "illegal base64 data at input byte 0",
    "unable to parse auth field, must be formatted as base64(username:password)",
)


class FakeLists:
    """explain's collection reads over the fake cluster."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube

    async def pods(self, ns: str, labels: Any) -> list[dict[str, Any]]:
        return [
            p
            for p in await self.kube.list("Pod", ns)
            if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    async def jobs(self, ns: str) -> list[dict[str, Any]]:
        return await self.kube.list("Job", ns)

    async def events(self, ns: str, kind: str, name: str) -> list[dict[str, Any]]:
        return [
            e
            for e in await self.kube.list("Event", ns)
            if (e["involvedObject"]["kind"], e["involvedObject"]["name"]) == (kind, name)
        ]


def put_workload(kube: FakeKube, field: str, image: str = IMAGE) -> None:
    """Deployment web (its ReplicaSet, its pod web-1) with container ``app`` in ``field``,
    waiting; an ephemeral container is only on the pod, never in a template."""
    template: dict[str, Any] = {"containers": [{"name": "main", "image": MAIN}]}
    if field != "ephemeralContainers":
        template.setdefault(field, []).append({"name": "app", "image": image})
    dep = kube.put(
        {
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": template},
            },
        }
    )
    kube.put(
        {
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web-rs",
                "namespace": NS,
                "ownerReferences": [
                    {
                        "kind": "Deployment",
                        "name": "web",
                        "uid": dep["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
        }
    )


def put_pod(
    kube: FakeKube, field: str, reason: str, image: str = IMAGE, secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    rs = kube.obj("ReplicaSet", NS, "web-rs")
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": MAIN}],
        "imagePullSecrets": [{"name": s} for s in secrets],
        "nodeName": "node-1",
    }
    spec.setdefault(field, []).append({"name": "app", "image": image})
    status: dict[str, Any] = {"phase": "Pending"}
    main = {"name": "main", "image": MAIN, "imageID": MAIN + "@sha256:" + "b" * 64}
    if field == "initContainers":
        main["state"] = {"waiting": {"reason": "PodInitializing"}}
    else:
        main["state"] = {"running": {}}
    status["containerStatuses"] = [main]
    status.setdefault(STATUS_FIELDS[field], []).append(
        {
            "name": "app",
            "image": image,
            "imageID": "",
            "state": {"waiting": {"reason": reason, "message": f"kubelet says {reason}"}},
        }
    )
    return kube.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": "web-1",
                "namespace": NS,
                "uid": "pod-web-1",
                "labels": {"app": "web"},
                "creationTimestamp": "2026-12-01T10:00:00Z",
                "ownerReferences": [
                    {
                        "kind": "ReplicaSet",
                        "name": "web-rs",
                        "uid": rs["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
            "status": status,
        }
    )


def sample(cause: Cause) -> Diagnosis:
    """A diagnosis of ``cause`` with the verified fix the prober would attach to it."""
    fix = None
    if cause in (Cause.TagNotFound, Cause.PlatformMismatch):
        fix = Fix(kind="tag", reason="highest patch", image=FIXED)
    elif cause in (Cause.AuthenticationRequired, Cause.CredentialsRejected):
        fix = Fix(kind="secret", reason="grants pull", secret=f"{NS}/regcred")
    return Diagnosis(IMAGE, cause, "high", f"because {cause}", fix=fix)


async def both(
    field: str, reason: str, diagnosis: Diagnosis, world: World | None = None
) -> tuple[World, Report]:
    """The operator decides the pod, then explain reads the same cluster."""
    world = world or World()
    world.prober.answers[IMAGE] = diagnosis
    await world.boot(cluster_policy(mode="Suggest"))
    if ("Deployment", NS, "web") not in world.kube.objects:
        put_workload(world.kube, field)
    pod = put_pod(world.kube, field, reason)
    world.feed(pod)
    await until(lambda: bool(world.kube.events("PullDiagnosed")), timeout=5)
    await world.settle()
    report = await gather(world.kube, FakeLists(world.kube), NS, "Deployment", "web", world.prober)
    return world, report


def operator_cause(world: World) -> str:
    (event,) = world.kube.events("PullDiagnosed")
    found = re.search(r"\(cause (\w+), confidence", event["message"])
    assert found, event["message"]
    return found.group(1)


def operator_commands(world: World) -> str | None:
    """What the operator's SuggestedFix Event tells the user to run, if it says to."""
    for e in world.kube.events("SuggestedFix"):
        if ". Run: " in e["message"]:
            return str(e["message"].split(". Run: ", 1)[1])
    return None


@pytest.mark.parametrize("field", sorted(STATUS_FIELDS))
@pytest.mark.parametrize("reason", [*sorted(PULL_REASONS), *KUBELET_ERRORS])
async def test_every_reason_the_operator_detects_is_stuck_for_explain(
    field: str, reason: str
) -> None:
    world, report = await both(field, reason, sample(Cause.TagNotFound))
    pod = world.kube.obj("Pod", NS, "web-1")
    operator = [(s.kind, s.name, s.image, s.reason) for s in stuck_containers(pod)]
    assert operator == [(field, "app", IMAGE, reason)]
    assert [(s["kind"], s["container"], s["image"], s["reason"]) for s in report.stuck] == operator
    assert [str(d.cause) for d in report.diagnoses] == [operator_cause(world)]
    assert "PullDiagnosed" in {e["reason"] for e in report.operator_events}
    text = render(report)
    assert "No container is stuck" not in text
    assert f"Cause: {operator_cause(world)}" in text


@pytest.mark.parametrize("cause", list(Cause), ids=str)
async def test_every_cause_same_as_the_operator_and_the_same_command(cause: Cause) -> None:
    world, report = await both("containers", "ImagePullBackOff", sample(cause))
    assert [str(d.cause) for d in report.diagnoses] == [operator_cause(world)] == [str(cause)]
    suggested = operator_commands(world)
    if report.commands:
        assert suggested is not None and suggested.startswith(" && ".join(report.commands))
    else:
        assert suggested is None


async def test_a_tag_fix_is_printed_as_planning_renders_it() -> None:
    """The command a user copies from explain is the operator's, not a second spelling."""
    _, report = await both("containers", "ErrImagePull", sample(Cause.TagNotFound))
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": FIXED}]
    assert report.commands == [
        f"kubectl -n {NS} patch deployment web --type=json -p '{json.dumps(patch)}'"
    ]


def broken_secret(kube: FakeKube, auth: str) -> None:
    cfg = {"auths": {"registry.example.com": {"auth": auth}}}
    kube.put(
        {
            "kind": "Secret",
            "metadata": {"name": "regcred", "namespace": NS},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(cfg).encode()).decode()},
        }
    )


def no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"an undecodable secret needs no registry probe: {request.url}")


@pytest.mark.parametrize(
    ("auth", "reason", "wrong"),
    [
        ("%%%not-base64", "illegal base64 data at input byte 0", "'auth' is not valid base64"),
        (
            base64.b64encode(b"no-colon-here").decode(),
            "unable to parse auth field, must be formatted as base64(username:password)",
            "no ':' found",
        ),
    ],
)
async def test_an_undecodable_pull_secret_is_named_by_both(
    auth: str, reason: str, wrong: str
) -> None:
    """The real kubelet leaves the pod waiting with the decoder's error as its reason and
    never pulls: the operator and explain both name the secret and what is wrong in it."""
    world = World()
    world.prober = Prober(transport=httpx.MockTransport(no_network))  # type: ignore[assignment]
    world.engine = world.new_engine()
    await world.boot(cluster_policy(mode="Suggest"))
    put_workload(world.kube, "containers")
    broken_secret(world.kube, auth)
    pod = put_pod(world.kube, "containers", reason, secrets=("regcred",))
    world.feed(pod)
    await until(lambda: bool(world.kube.events("PullDiagnosed")), timeout=5)
    await world.settle()
    (event,) = world.kube.events("PullDiagnosed")
    assert "cause MalformedSecret," in event["message"]
    assert f"{NS}/regcred" in event["message"] and wrong in event["message"]

    async with Prober(transport=httpx.MockTransport(no_network)) as prober:
        report = await gather(world.kube, FakeLists(world.kube), NS, "Pod", "web-1", prober)
    (diag,) = report.diagnoses
    assert diag.cause is Cause.MalformedSecret
    notes = [e.note for e in diag.evidence]
    assert any(f"{NS}/regcred" in n and wrong in n for n in notes), notes
    assert report.credentials["read"] == ["regcred"]
    assert report.commands == []  # a broken secret is fixed by its owner, never by a copy


async def test_a_viewer_without_secrets_or_nodes_probes_anonymously_and_says_so() -> None:
    kube = FakeKube()
    put_workload(kube, "containers")
    put_pod(kube, "containers", "ErrImagePull", secrets=("regcred", "gone"))
    kube.put({"kind": "Secret", "metadata": {"name": "regcred", "namespace": NS}, "type": "x"})
    kube.fail("get", "Secret", KubeError(403, "Forbidden"))
    kube.fail("get", "Node", KubeError(403, "Forbidden"))
    prober = FakeProber({IMAGE: sample(Cause.NotFoundOrPrivate)})
    report = await gather(kube, FakeLists(kube), NS, "Deployment", "web", prober)
    assert report.credentials["forbidden"] == ["regcred", "gone"]
    assert report.credentials["anonymous"] is True
    assert report.platform == "linux/amd64 (assumed (node node-1 not readable))"
    assert "ANONYMOUSLY" in render(report)


async def test_an_unreadable_target_is_an_error_not_a_crash() -> None:
    kube = FakeKube()
    kube.fail("get", "Deployment", KubeError(403, "Forbidden"))
    with pytest.raises(ExplainError, match="not allowed to read Deployment team-a/web"):
        await gather(kube, FakeLists(kube), NS, "Deployment", "web", None)
    with pytest.raises(ExplainError, match="pod/nope not found"):
        await gather(kube, FakeLists(kube), NS, "Pod", "nope", None)
