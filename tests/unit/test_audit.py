"""The audit of running workloads' images, through the fake KubeApi: what is checked, how
often, within which budget, and what is reported when a result changes."""

from __future__ import annotations

from typing import Any

import pytest

from pullmedic.control.audit import Auditor, AuditSettings, HostBudget, PolicyAudit
from pullmedic.control.engine import Engine
from pullmedic.core.diagnosis import Cause, Diagnosis
from pullmedic.kube.lookups import Lookups
from pullmedic.telemetry import metrics
from tests.unit.fakekube import FakeKube, FakeProber
from tests.unit.test_engine_scenarios import FAST

OK = "registry.example.com/app:1.0"
GONE = "registry.example.com/app:0.9"
OTHER = "other.example.com/tool:2"


def diag(image: str, cause: Cause) -> Diagnosis:
    return Diagnosis(image, cause, "high", f"{cause} for {image}.")


@pytest.mark.parametrize(
    ("n", "times", "allowed"),
    [
        (2, [0, 1, 2], [True, True, False]),
        (2, [0, 1, 100, 101], [True, True, True, True]),  # the window slides
        (1, [0, 50, 99, 100], [True, False, False, True]),
    ],
)
def test_host_budget(n: int, times: list[float], allowed: list[bool]) -> None:
    b = HostBudget(n, period=100)
    assert [b.take("h", t) for t in times] == allowed
    assert b.take("other", times[-1])  # budgets are per host


def workload(
    kube: FakeKube, name: str, image: str, ns: str = "team-a", kind: str = "Deployment"
) -> None:
    kube.put(
        {
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        }
    )


class Clock:
    t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def auditor(kube: FakeKube, prober: FakeProber, clock: Clock, n: int = 25) -> Auditor:
    return Auditor(
        kube, prober, Lookups(kube, "linux/amd64"), AuditSettings(n, period=3600), wall=clock
    )


async def test_checks_each_image_once_per_period_and_reports_changes() -> None:
    kube, clock = FakeKube(), Clock()
    workload(kube, "web", OK)
    workload(kube, "old", GONE)
    prober = FakeProber({OK: diag(OK, Cause.ImageAvailable), GONE: diag(GONE, Cause.TagNotFound)})
    a = auditor(kube, prober, clock)
    changes: list[tuple[str, str | None]] = []

    async def changed(new: Any, old: Any) -> None:
        changes.append((new.cause, old.cause if old else None))

    a.on_change = changed
    run = await a.run((i, None) for i in await a.workloads(["team-a"]))
    assert run.checked == 2 and sorted(prober.asked) == [GONE, OK]
    assert changes == [("TagNotFound", None)]  # a pullable first result is no news
    assert [f.item.workload.name for f in a.unavailable()] == ["old"]
    gauge = metrics.IMAGE_UNAVAILABLE.labels(
        namespace="team-a", kind="Deployment", name="old", cause="TagNotFound"
    )
    assert gauge._value.get() == 1

    clock.t += 60  # within the period: nothing is asked again
    run = await a.run((i, None) for i in await a.workloads(["team-a"]))
    assert run.checked == 0 and len(prober.asked) == 2

    clock.t += 3600  # the tag came back
    prober.answers[GONE] = diag(GONE, Cause.ImageAvailable)
    run = await a.run((i, None) for i in await a.workloads(["team-a"]))
    assert run.checked == 2 and changes[-1] == ("ImageAvailable", "TagNotFound")
    assert a.unavailable() == []
    assert ("team-a", "Deployment", "old", "TagNotFound") not in {
        tuple(s.labels.values()) for m in metrics.IMAGE_UNAVAILABLE.collect() for s in m.samples
    }


async def test_the_budget_defers_checks_of_one_host() -> None:
    kube, clock = FakeKube(), Clock()
    for i in range(5):
        workload(kube, f"w{i}", f"registry.example.com/app:{i}")
    workload(kube, "tool", OTHER)
    answers = {f"registry.example.com/app:{i}": diag("x", Cause.ImageAvailable) for i in range(5)}
    prober = FakeProber({**answers, OTHER: diag(OTHER, Cause.ImageAvailable)})
    a = auditor(kube, prober, clock, n=2)
    run = await a.run((i, None) for i in await a.workloads(None))
    assert run.checked == 3 and run.deferred == 4 - 1  # 2 of registry.example.com, 1 other
    assert OTHER in prober.asked


async def test_only_namespaces_an_auditing_policy_selects_and_status_lists_findings() -> None:
    kube = FakeKube()
    workload(kube, "old", GONE, ns="team-a")
    workload(kube, "old", GONE, ns="team-b")
    prober = FakeProber({GONE: diag(GONE, Cause.TagNotFound)})
    engine = Engine(kube, prober, FAST)
    for ns in ("team-a", "team-b"):
        engine.on_namespace(None, {"metadata": {"name": ns}})
    body = {
        "kind": "ClusterPullPolicy",
        "metadata": {"name": "audit", "generation": 1},
        "spec": {"selector": {"namespaces": ["team-a"]}, "audit": {"enabled": True}},
    }
    kube.put(body)
    await engine.on_policy(None, body)
    await engine.audit.tick()
    stats = engine.inventory.stats["ClusterPullPolicy/audit"]
    assert [e["workload"] for e in stats.audit] == ["Deployment/team-a/old"]
    assert stats.audit[0]["cause"] == "TagNotFound"
    events = kube.events("ImageUnavailable")
    assert [e["involvedObject"]["namespace"] for e in events] == ["team-a"]
    # A restarted operator reports the same finding with the same Event (no duplicate).
    again = PolicyAudit(auditor(kube, prober, Clock()), engine.inventory, kube, None)
    await again.tick()
    assert len(kube.events("ImageUnavailable")) == 1


async def test_one_check_answers_for_every_workload_with_the_same_image_and_credentials() -> None:
    kube, clock = FakeKube(), Clock()
    for i in range(10):
        workload(kube, f"w{i}", GONE)
    workload(kube, "elsewhere", GONE, ns="team-b")  # other namespace: other credentials
    prober = FakeProber({GONE: diag(GONE, Cause.TagNotFound)})
    a = auditor(kube, prober, clock, n=25)
    run = await a.run((i, None) for i in await a.workloads(None))
    assert run.checked == 2 and len(prober.asked) == 2
    assert len(a.unavailable()) == 11  # every workload still gets its own finding
