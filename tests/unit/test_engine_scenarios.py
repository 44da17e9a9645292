"""The engine's lifecycle as scenarios: cluster state in (through a fake KubeApi), events
fed, cluster state and writes out. No cluster, no registry; each runs in well under a
second because every interval is scaled down."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from pullmedic.control.engine import Engine, EngineSettings
from pullmedic.core.circuit import CIRCUIT_ANNOTATION
from pullmedic.core.diagnosis import Cause, Diagnosis, Fix
from pullmedic.core.records import REMEDIATION_ANNOTATION
from pullmedic.kube.client import KubeError
from tests.unit.fakekube import FakeKube, FakeProber

NS = "team-a"
BAD = "registry.example.com/app:1.4.99"
GOOD = "registry.example.com/app:1.4.3"
PRIVATE = "registry.example.com/private/app:1.0"

FAST = EngineSettings(
    debounce=0.01,
    recheck_after=0.3,
    decision_timeout=0.3,
    retry_base=0.01,
    status_interval=0.02,
    secret_sync_interval=0.05,
    sweep_interval=0.05,
    sweep_max_age=0.05,
    api_check_interval=0.02,
    ready_budget=0.2,
    pod_watch_budget=0.2,
)


def diag(image: str, cause: Cause, fix: Fix | None = None) -> Diagnosis:
    return Diagnosis(image=image, cause=cause, confidence="high", summary=f"{cause}", fix=fix)


TAG_TYPO = diag(BAD, Cause.TagNotFound, Fix(kind="tag", reason="highest patch", image=GOOD))
GOOD_FAILS = diag(GOOD, Cause.TagNotFound, Fix(kind="tag", reason="highest patch", image=GOOD))
NEEDS_SECRET = diag(
    PRIVATE,
    Cause.AuthenticationRequired,
    Fix(kind="secret", reason="authenticates", secret="shared/regcred"),
)


# ---- cluster builders ------------------------------------------------------------------


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def cluster_policy(name: str = "heal", **spec: Any) -> dict[str, Any]:
    spec.setdefault("mode", "Remediate")
    spec.setdefault("selector", {"namespaces": [NS]})
    return {
        "apiVersion": "pullmedic.dev/v1alpha1",
        "kind": "ClusterPullPolicy",
        "metadata": {"name": name, "uid": f"policy-{name}", "generation": 1},
        "spec": spec,
    }


def deployment(kube: FakeKube, name: str, image: str) -> dict[str, Any]:
    dep = kube.put(
        {
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        }
    )
    kube.put(
        {
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{name}-rs",
                "namespace": NS,
                "ownerReferences": [
                    {
                        "kind": "Deployment",
                        "name": name,
                        "uid": dep["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
        }
    )
    return dep


def stuck_pod(
    kube: FakeKube,
    owner: str,
    n: int,
    image: str,
    *,
    created: str = "2026-12-01T10:00:00Z",
    pull_secrets: tuple[str, ...] = (),
) -> dict[str, Any]:
    rs = kube.obj("ReplicaSet", NS, f"{owner}-rs")
    return kube.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": f"{owner}-{n}",
                "namespace": NS,
                "uid": f"{owner}-pod-{n}",
                "creationTimestamp": created,
                "ownerReferences": [
                    {
                        "kind": "ReplicaSet",
                        "name": rs["metadata"]["name"],
                        "uid": rs["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "containers": [{"name": "app", "image": image}],
                "imagePullSecrets": [{"name": s} for s in pull_secrets],
                "nodeName": "node-1",
            },
            "status": {
                "containerStatuses": [
                    {
                        "name": "app",
                        "image": image,
                        "state": {"waiting": {"reason": "ErrImagePull"}},
                    }
                ]
            },
        }
    )


async def until(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll a positive condition; fail loudly when it never holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class World:
    def __init__(self, settings: EngineSettings = FAST) -> None:
        self.kube = FakeKube()
        self.prober = FakeProber({BAD: TAG_TYPO, GOOD: GOOD_FAILS, PRIVATE: NEEDS_SECRET})
        self.settings = settings
        self.engine = self.new_engine()

    def new_engine(self) -> Engine:
        return Engine(self.kube, self.prober, self.settings)

    async def boot(self, *policies: dict[str, Any]) -> None:
        self.engine.on_namespace(None, namespace(NS))
        for p in policies:
            self.kube.put(p)
            await self.engine.on_policy(None, p)

    def feed(self, *pods: dict[str, Any], event: str = "MODIFIED") -> None:
        for p in pods:
            self.engine.on_pod(event, p)

    async def settle(self) -> None:
        """Wait until no decision is running or due."""
        await until(
            lambda: all(g.task is None or g.task.done() for g in self.engine.groups.groups.values())
        )


@pytest.fixture
def world() -> Iterator[World]:
    yield World()


def image_patches(kube: FakeKube, name: str) -> list[Any]:
    return [
        w
        for w in kube.written("patch", "Deployment")
        if w.name == name and any(op.get("path", "").endswith("/image") for op in w.payload)
    ]


# ---- scenarios --------------------------------------------------------------------------


async def test_a_storm_of_replicas_is_one_diagnosis_one_patch_one_record(world: World) -> None:
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    pods = [stuck_pod(world.kube, "web", i, BAD) for i in range(5)]
    world.feed(*pods)
    await until(lambda: bool(image_patches(world.kube, "web")))
    await world.settle()

    assert world.prober.asked == [BAD]  # five pods, one probe
    assert len(image_patches(world.kube, "web")) == 1
    dep = world.kube.obj("Deployment", NS, "web")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == GOOD
    record = json.loads(dep["metadata"]["annotations"][REMEDIATION_ANNOTATION])
    assert (record["previousImage"], record["newImage"]) == (BAD, GOOD)
    assert len(world.kube.events("Remediated", on="web")) == 1
    assert len(world.kube.events("Remediated", on="heal")) == 1
    assert len(world.kube.events("PullDiagnosed")) == 1  # on the group's representative


async def test_status_catches_up_after_the_api_server_was_unreachable(world: World) -> None:
    """The reported bug: one failed status write used to end the status loop for good."""
    await world.boot(cluster_policy())
    world.engine.start()
    try:
        world.kube.fail("patch_status", "ClusterPullPolicy", KubeError(0, "NewConnectionError"))
        deployment(world.kube, "web", BAD)
        world.feed(stuck_pod(world.kube, "web", 0, BAD))
        await until(lambda: bool(image_patches(world.kube, "web")))
        await asyncio.sleep(0.1)  # several status ticks fail meanwhile ...
        policy = world.kube.obj("ClusterPullPolicy", "", "heal")
        assert "counts" not in policy.get("status", {})
        assert world.engine.status.failed_writes >= 2  # ... and were really attempted
        world.kube.heal()
        await until(
            lambda: (
                world.kube.obj("ClusterPullPolicy", "", "heal")
                .get("status", {})
                .get("counts", {})
                .get("remediated")
                == 1
            )
        )
        assert world.engine.supervisor.stalled() == []
    finally:
        await world.engine.stop()


async def test_a_hung_call_cannot_wedge_a_group(world: World) -> None:
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    release = world.kube.hang("get", "ReplicaSet")  # a pooled connection that died
    world.feed(stuck_pod(world.kube, "web", 0, BAD))
    group = next(iter(world.engine.groups.groups.values()))
    await until(lambda: world.engine.scheduler.timeouts == 1, timeout=2)
    assert group.failures == 1 and group.timer is not None  # retried later, not forgotten
    world.kube.faults.clear()  # the network heals (the hung call itself stays hung)
    await until(lambda: bool(image_patches(world.kube, "web")), timeout=5)
    release.set()


@pytest.mark.parametrize(
    "error",
    [KubeError(0, "ReadTimeoutError"), KubeError(500, "etcd leader changed"), RuntimeError("bug")],
)
async def test_any_failure_retries_the_group(world: World, error: Exception) -> None:
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    world.kube.fail("get", "ReplicaSet", error, times=1)
    world.feed(stuck_pod(world.kube, "web", 0, BAD))
    await until(lambda: bool(image_patches(world.kube, "web")), timeout=5)
    group = next(iter(world.engine.groups.groups.values()))
    # The retry succeeded and resets the streak once its decision has finished.
    await until(lambda: group.failures == 0, timeout=5)


def shared_secret(world: World) -> None:
    """The namespace's default ServiceAccount, and a pull secret in namespace "shared"."""
    world.kube.put({"kind": "ServiceAccount", "metadata": {"name": "default", "namespace": NS}})
    world.kube.put(
        {
            "kind": "Secret",
            "metadata": {"name": "regcred", "namespace": "shared"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "e30="},
        }
    )


def private_setup(world: World) -> None:
    deployment(world.kube, "priv", PRIVATE)
    shared_secret(world)
    world.engine.on_namespace(None, namespace("shared"))


async def fix_private(world: World) -> None:
    """Boot, break the private workload's first pod, and wait for its credential fix."""
    await world.boot(cluster_policy())
    private_setup(world)
    world.feed(stuck_pod(world.kube, "priv", 0, PRIVATE))
    await until(lambda: bool(world.kube.written("delete", "Pod")))
    await world.settle()


async def test_late_sibling_gets_the_applied_fix_as_a_follow_up(world: World) -> None:
    await fix_private(world)
    # A sibling created before the fix fails moments later: same fix, recreated at once.
    world.feed(stuck_pod(world.kube, "priv", 1, PRIVATE))
    await until(lambda: len(world.kube.written("delete", "Pod")) == 2)
    await world.settle()

    assert len(world.kube.written("create", "Secret")) == 1
    assert len(world.kube.written("patch", "ServiceAccount")) == 1
    assert len(world.kube.events("Remediated", on="priv")) == 1  # one Event, one record
    stats = world.engine.inventory.stats["ClusterPullPolicy/heal"]
    assert stats.counts["remediated"] == 1
    assert len(stats.remediations) == 1  # one rate-limit slot


SLOW_RECHECK = replace(FAST, recheck_after=30.0)  # a recheck cannot hide a missed wake-up


async def test_a_sibling_failing_while_the_fix_is_applied_is_recreated_at_once() -> None:
    """The demo's 36 s replica: it failed while the group's decision was still running
    (the fix being applied), so its wake-up was dropped and it waited for the 30 s
    recheck. A member that joins a group being decided is decided again right after."""
    world = World(SLOW_RECHECK)
    await world.boot(cluster_policy())
    private_setup(world)
    release = world.kube.hang("delete", "Pod")  # the first decision is mid-way
    world.feed(stuck_pod(world.kube, "priv", 0, PRIVATE))
    await until(lambda: world.kube.faults[("delete", "Pod")].times < 1_000_000)
    world.feed(stuck_pod(world.kube, "priv", 1, PRIVATE))  # created before the fix
    world.kube.heal()
    assert release.is_set()
    await until(lambda: len(world.kube.written("delete", "Pod")) == 2)  # not after 30 s
    await world.settle()
    assert priv_writes(world)[0] == 1  # one Remediated Event
    assert len(world.kube.written("patch", "ServiceAccount")) == 1
    stats = world.engine.inventory.stats["ClusterPullPolicy/heal"]
    assert stats.counts["remediated"] == 1


async def test_a_pod_whose_kubelet_raced_the_new_secret_is_recreated_as_a_follow_up() -> None:
    """A pod made after the credential fix (it has the secret) fails anyway: its kubelet
    pulled before its secret cache had the new secret. The probe with its credentials
    pulls (ImageAvailable): recreated at once, not counted or announced again."""
    world = World(SLOW_RECHECK)
    await fix_private(world)
    world.prober.answers[PRIVATE] = diag(PRIVATE, Cause.ImageAvailable)
    secret = world.kube.written("create", "Secret")[0].name
    raced = stuck_pod(
        world.kube, "priv", 1, PRIVATE, created="2026-12-01T10:00:00Z", pull_secrets=(secret,)
    )
    world.engine.groups.groups.clear()  # as after a restart: only the record tells
    world.feed(raced)
    await until(lambda: len(world.kube.written("delete", "Pod")) == 2)
    await world.settle()
    assert priv_writes(world)[0] == 1  # no second Remediated Event
    stats = world.engine.inventory.stats["ClusterPullPolicy/heal"]
    assert stats.counts["remediated"] == 1
    assert [a["cause"] for a in stats.last_actions] == ["AuthenticationRequired"]


def priv_writes(world: World) -> tuple[int, int, int]:
    """(Remediated Events, Deployment writes, pod deletions) for the private workload."""
    return (
        len(world.kube.events("Remediated", on="priv")),
        len([w for w in world.kube.written("patch", "Deployment") if w.name == "priv"]),
        len(world.kube.written("delete", "Pod")),
    )


async def test_a_sibling_failing_after_the_window_is_still_a_follow_up(world: World) -> None:
    """The kubelet pulls one image at a time: a sibling created before the fix may fail
    for the first time long after it. The workload's record says the same fix was made
    after that pod was created, so it is recreated with no second record or Event."""
    await fix_private(world)
    assert priv_writes(world) == (1, 1, 1)
    await asyncio.sleep(FAST.recheck_after + 0.1)  # past the in-memory follow-up window
    world.feed(stuck_pod(world.kube, "priv", 1, PRIVATE))
    await until(lambda: len(world.kube.written("delete", "Pod")) == 2)
    await world.settle()
    assert priv_writes(world) == (1, 1, 2)
    assert world.engine.inventory.stats["ClusterPullPolicy/heal"].counts["remediated"] == 1


async def test_a_late_sibling_after_a_failover_is_a_follow_up(world: World) -> None:
    """The leader fixed the workload and published its status, then died; a sibling made
    before the fix fails only now, on the new leader: recreated, not remediated again."""
    await fix_private(world)
    await world.engine.status.flush()
    assert world.kube.obj("ClusterPullPolicy", "", "heal")["status"]["pendingActions"] == []
    world.engine.scheduler.cancel_all()  # SIGKILL

    second = world.new_engine()
    second.on_namespace(None, namespace(NS))
    second.on_namespace(None, namespace("shared"))
    await second.on_policy(None, world.kube.obj("ClusterPullPolicy", "", "heal"))
    second.on_pod("MODIFIED", stuck_pod(world.kube, "priv", 1, PRIVATE))
    await until(lambda: len(world.kube.written("delete", "Pod")) == 2)
    await until(lambda: all(g.task is None or g.task.done() for g in second.groups.groups.values()))
    assert priv_writes(world) == (1, 1, 2)
    assert len(world.kube.written("patch", "ServiceAccount")) == 1
    assert second.inventory.stats["ClusterPullPolicy/heal"].counts["remediated"] == 1


async def test_rate_limit_counts_remediations_per_policy(world: World) -> None:
    await world.boot(cluster_policy(rateLimit={"remediationsPerHour": 1}))
    deployment(world.kube, "one", BAD)
    deployment(world.kube, "two", BAD)
    world.feed(stuck_pod(world.kube, "one", 0, BAD))
    await until(lambda: bool(image_patches(world.kube, "one")))
    await world.settle()
    world.feed(stuck_pod(world.kube, "two", 0, BAD))
    await until(lambda: bool(world.kube.events("SuggestedFix", on="two")), timeout=5)
    await world.settle()
    assert image_patches(world.kube, "two") == []  # the second is held back, and said so


async def test_circuit_opens_once_when_our_fix_fails_the_same_way(world: World) -> None:
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    world.feed(stuck_pod(world.kube, "web", 0, BAD))
    await until(lambda: bool(image_patches(world.kube, "web")))
    await world.settle()
    # The image pullmedic chose fails too (same cause): stop, mark, warn once.
    world.feed(stuck_pod(world.kube, "web", 1, GOOD, created="2026-12-01T10:05:00Z"))
    await until(lambda: bool(world.kube.events("RemediationIneffective")))
    world.feed(stuck_pod(world.kube, "web", 2, GOOD, created="2026-12-01T10:06:00Z"))
    await asyncio.sleep(0.05)
    await world.settle()
    dep = world.kube.obj("Deployment", NS, "web")
    assert dep["metadata"]["annotations"][CIRCUIT_ANNOTATION] == "open"
    assert len(image_patches(world.kube, "web")) == 1  # never patched again
    assert len(world.kube.events("RemediationIneffective")) == 1


async def test_a_restarted_operator_converges_without_writing_twice(world: World) -> None:
    """Killed after patching the workload, before recreating pods: the next process
    reads the record from the workload and finishes with no second patch or Event."""
    await world.boot(cluster_policy())
    shared_secret(world)
    world.engine.on_namespace(None, namespace("shared"))
    deployment(world.kube, "priv", PRIVATE)
    pod = stuck_pod(world.kube, "priv", 0, PRIVATE)
    world.kube.hang("delete", "Pod")  # the first process dies while recreating
    world.feed(pod)
    await until(lambda: bool(world.kube.written("patch", "ServiceAccount")))
    await asyncio.sleep(0.02)
    world.engine.scheduler.cancel_all()  # SIGKILL: nothing after this point runs
    world.kube.faults.clear()

    second = world.new_engine()
    second.on_namespace(None, namespace(NS))
    second.on_namespace(None, namespace("shared"))
    await second.on_policy(None, world.kube.obj("ClusterPullPolicy", "", "heal"))
    second.on_pod(None, world.kube.obj("Pod", NS, "priv-0"))  # kopf re-lists on start
    await until(lambda: bool(world.kube.written("delete", "Pod")))
    await until(lambda: all(g.task is None or g.task.done() for g in second.groups.groups.values()))

    assert len(world.kube.written("create", "Secret")) == 1  # copy: once
    assert len(world.kube.written("patch", "ServiceAccount")) == 1  # attach: once
    assert len(world.kube.written("delete", "Pod")) == 1
    assert len(world.kube.events("Remediated", on="priv")) == 1  # the first died before it
    record = world.kube.obj("Deployment", NS, "priv")["metadata"]["annotations"]
    assert json.loads(record[REMEDIATION_ANNOTATION])["action"] == "AttachPullSecret"
    assert len([w for w in world.kube.written("patch", "Deployment") if w.name == "priv"]) == 1
    stats = second.inventory.stats["ClusterPullPolicy/heal"]
    assert stats.counts["remediated"] == 1 and not stats.inherited and not stats.journal
    # The journal entry the first process wrote is cleared by the second's status write.
    assert world.kube.obj("ClusterPullPolicy", "", "heal")["status"]["pendingActions"]
    await second.status.flush()
    assert world.kube.obj("ClusterPullPolicy", "", "heal")["status"]["pendingActions"] == []


async def test_killed_mid_status_write_the_next_process_counts_it_once(world: World) -> None:
    """Fix applied and announced, its counted status never written: the next process
    finds the journal entry, confirms the record on the workload, counts it, and its
    announcement is the same Event (no duplicate)."""
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    world.feed(stuck_pod(world.kube, "web", 0, BAD))
    await until(lambda: bool(world.kube.events("Remediated", on="web")))
    await world.settle()
    # The journal write landed before the patch; every later status write is lost.
    status = world.kube.obj("ClusterPullPolicy", "", "heal")["status"]
    assert [e["workload"] for e in status["pendingActions"]] == [f"Deployment/{NS}/web"]
    assert "counts" not in status or status["counts"]["remediated"] == 0
    world.engine.scheduler.cancel_all()  # SIGKILL before the status loop ran

    second = world.new_engine()
    second.on_namespace(None, namespace(NS))
    await second.on_policy(None, world.kube.obj("ClusterPullPolicy", "", "heal"))
    await second.status.resolve(grace=0)
    await second.status.flush()
    status = world.kube.obj("ClusterPullPolicy", "", "heal")["status"]
    assert status["counts"]["remediated"] == 1
    assert status["pendingActions"] == []
    assert [a["workload"] for a in status["lastActions"]] == [f"Deployment/{NS}/web"]
    assert len(world.kube.events("Remediated", on="web")) == 1
    assert len(world.kube.events("Remediated", on="heal")) == 1
    assert len(image_patches(world.kube, "web")) == 1


async def test_a_status_write_in_flight_never_erases_a_journal_entry(world: World) -> None:
    """The fault suite's lost remediation: a status write computed before a fix was entered
    in the journal landed after it (a merge patch replaces the list whole), so when the
    process then died nothing recorded the fix. Writes of one policy are serialised and
    each payload is taken under the lock, so the journal entry survives."""
    from tests.unit.fakekube import Fault

    await world.boot(cluster_policy())
    release = asyncio.Event()
    world.kube.faults[("patch_status", "ClusterPullPolicy")] = Fault(hang=release, times=1)
    stale = asyncio.create_task(world.engine.status.flush())  # computed with no entry
    await until(lambda: world.kube.faults[("patch_status", "ClusterPullPolicy")].times == 0)
    deployment(world.kube, "web", BAD)
    world.feed(stuck_pod(world.kube, "web", 0, BAD))
    await until(
        lambda: (
            f"Deployment/{NS}/web" in world.engine.inventory.stats["ClusterPullPolicy/heal"].journal
        )
    )
    release.set()
    await stale
    await until(lambda: bool(world.kube.events("Remediated", on="web")))
    await world.settle()
    world.engine.scheduler.cancel_all()  # SIGKILL before the counted status is written
    status = world.kube.obj("ClusterPullPolicy", "", "heal")["status"]
    assert [e["workload"] for e in status["pendingActions"]] == [f"Deployment/{NS}/web"]

    second = world.new_engine()
    second.on_namespace(None, namespace(NS))
    await second.on_policy(None, world.kube.obj("ClusterPullPolicy", "", "heal"))
    await second.status.resolve(grace=0)
    await second.status.flush()
    status = world.kube.obj("ClusterPullPolicy", "", "heal")["status"]
    assert status["counts"]["remediated"] == 1 and status["pendingActions"] == []
    assert [a["workload"] for a in status["lastActions"]] == [f"Deployment/{NS}/web"]
    assert len(world.kube.events("Remediated", on="web")) == 1


async def test_killed_mid_status_write_with_pods_still_stuck_counts_it_once(world: World) -> None:
    """As above, but the restarted process sees a stuck pod of the group first: its
    decision continues the fix, finds nothing left to write, and still counts it once."""
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    pod = stuck_pod(world.kube, "web", 0, BAD)
    world.feed(pod)
    await until(lambda: bool(world.kube.events("Remediated", on="web")))
    await world.settle()
    world.engine.scheduler.cancel_all()

    second = world.new_engine()
    second.on_namespace(None, namespace(NS))
    await second.on_policy(None, world.kube.obj("ClusterPullPolicy", "", "heal"))
    second.on_pod(None, pod)  # an old pod, still reported stuck (status lags a sync)
    await until(lambda: second.inventory.stats["ClusterPullPolicy/heal"].counts["remediated"] == 1)
    await until(lambda: all(g.task is None or g.task.done() for g in second.groups.groups.values()))
    await second.status.resolve(grace=0)
    await second.status.flush()
    status = world.kube.obj("ClusterPullPolicy", "", "heal")["status"]
    assert status["counts"]["remediated"] == 1 and status["pendingActions"] == []
    assert len(world.kube.events("Remediated", on="web")) == 1
    assert len(image_patches(world.kube, "web")) == 1


async def test_a_journal_entry_for_a_fix_that_never_landed_is_dropped(world: World) -> None:
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    world.kube.obj("ClusterPullPolicy", "", "heal")["status"] = {
        "pendingActions": [
            {
                "workload": f"Deployment/{NS}/web",
                "cause": "TagNotFound",
                "since": "2026-12-01T10:00:00.000000Z",
            }
        ]
    }
    second = world.new_engine()
    second.on_namespace(None, namespace(NS))
    await second.on_policy(None, world.kube.obj("ClusterPullPolicy", "", "heal"))
    await second.status.resolve(grace=0)
    stats = second.inventory.stats["ClusterPullPolicy/heal"]
    assert stats.counts["remediated"] == 0 and not stats.inherited
    assert world.kube.events("Remediated") == []


async def test_dry_run_refresh_is_reported_as_dry_run_and_posts_nothing() -> None:
    w = World(EngineSettings(**{**FAST.__dict__, "dry_run": True}))
    await w.boot(
        cluster_policy(credentials={"secrets": [{"namespace": "shared", "name": "regcred"}]})
    )
    w.engine.on_namespace(None, namespace("shared"))
    w.kube.put(
        {
            "kind": "Secret",
            "metadata": {"name": "regcred", "namespace": "shared"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "bmV3"},
        }
    )
    w.kube.put(
        {
            "kind": "Secret",
            "metadata": {
                "name": "pullmedic.shared.regcred",
                "namespace": NS,
                "labels": {"pullmedic.dev/managed": "true"},
            },
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "b2xk"},
        }
    )
    policy = w.engine.inventory.policies["ClusterPullPolicy/heal"]
    outcome = await w.engine.secret_sync.refresh(
        policy, "shared/regcred", f"{NS}/pullmedic.shared.regcred"
    )
    assert outcome == "dry-run"
    assert w.kube.events("SecretRefreshed") == []
    copy = w.kube.obj("Secret", NS, "pullmedic.shared.regcred")
    assert copy["data"] == {".dockerconfigjson": "b2xk"}  # nothing written


async def test_supervised_loop_restarts_after_any_failure_and_is_counted() -> None:
    from pullmedic.control.supervision import Supervisor
    from pullmedic.telemetry import metrics

    sup = Supervisor()
    sup.BACKOFF_MIN = 0.001  # type: ignore[misc]
    runs = {"n": 0}

    async def flaky() -> None:
        runs["n"] += 1
        if runs["n"] <= 2:
            raise ValueError("not a KubeError")

    before = metrics.LOOP_RESTARTS.labels(loop="flaky")._value.get()
    loop = sup.every("flaky", 0.001, flaky)
    sup.start()
    try:
        await until(lambda: runs["n"] >= 4)
        assert loop.restarts == 2 and loop.streak == 0
        assert metrics.LOOP_RESTARTS.labels(loop="flaky")._value.get() - before == 2
        assert sup.stalled() == []
    finally:
        await sup.stop()


async def test_an_announcement_lost_to_the_network_is_posted_once_it_is_back(
    world: World,
) -> None:
    """The fix's Remediated Event was in flight when the network went away (the fault
    suite's blackhole): it is kept and posted again until the API answers, and a repeat
    of one that did land is the same Event (its name comes from the fix)."""
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    world.kube.fail("create", "Event", KubeError(0, "ReadTimeoutError"))
    world.feed(stuck_pod(world.kube, "web", 0, BAD))
    await until(lambda: bool(image_patches(world.kube, "web")))
    await world.settle()
    assert world.kube.events("Remediated") == []
    kept = len(world.engine.outbox.pending)
    assert kept >= 2  # on the workload and on the policy (and the diagnosis)
    await world.engine._status_tick()  # still away: kept
    assert len(world.engine.outbox.pending) == kept
    world.kube.heal()
    await world.engine._status_tick()
    assert not world.engine.outbox.pending
    assert len(world.kube.events("Remediated", on="web")) == 1
    assert len(world.kube.events("Remediated", on="heal")) == 1
    # A second process announcing the same fix (or a repeat that raced) is a no-op.
    body = next(iter(e for e in world.kube.events("Remediated", on="web")))
    world.engine.outbox.keep(NS, dict(body))
    assert await world.engine.outbox.flush(world.kube) == 0
    assert len(world.kube.events("Remediated", on="web")) == 1


async def test_a_fix_whose_answer_was_lost_is_counted_once_from_its_record(
    world: World,
) -> None:
    """The fault suite's refused API: the patch landed but its answer was lost (the
    connection reset). Not a failure: resolved from the record on the workload, counted
    and announced once, and the still-stuck pods' next decision writes nothing again."""
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    world.kube.lose_answer("patch", "Deployment")
    pod = stuck_pod(world.kube, "web", 0, BAD)
    world.feed(pod)
    await until(lambda: bool(image_patches(world.kube, "web")))
    await world.settle()
    stats = world.engine.inventory.stats["ClusterPullPolicy/heal"]
    assert stats.counts["failed"] == 0 and stats.counts["remediated"] == 0
    assert f"Deployment/{NS}/web" in stats.inherited
    assert world.kube.events("RemediationFailed") == []
    world.engine.on_pod("MODIFIED", pod)  # a recheck of the old pod, still stuck
    await until(lambda: stats.counts["remediated"] == 1)
    await world.settle()
    await world.engine.status.resolve(grace=0)
    assert stats.counts == {"detected": 1, "suggested": 0, "remediated": 1, "failed": 0}
    assert not stats.inherited
    assert len(image_patches(world.kube, "web")) == 1
    assert len(world.kube.events("Remediated", on="web")) == 1


async def test_a_lost_answer_after_writes_that_surely_landed_is_still_the_fix() -> None:
    """Copy and attach answered, the pod deletion's answer lost: the fix was made (its
    record is written separately), so it is counted, recorded and announced, never
    deferred to a record that would not be there."""
    world = World(SLOW_RECHECK)
    await world.boot(cluster_policy())
    private_setup(world)
    world.kube.lose_answer("delete", "Pod")
    world.feed(stuck_pod(world.kube, "priv", 0, PRIVATE))
    await until(lambda: bool(world.kube.events("Remediated", on="priv")))
    await world.settle()
    stats = world.engine.inventory.stats["ClusterPullPolicy/heal"]
    assert stats.counts["remediated"] == 1 and not stats.inherited
    record = world.kube.obj("Deployment", NS, "priv")["metadata"]["annotations"]
    assert json.loads(record[REMEDIATION_ANNOTATION])["action"] == "AttachPullSecret"


async def test_a_replacement_pod_that_raced_the_secret_does_not_trip_the_circuit() -> None:
    """The fix's own replacement pod (made in the fix's second, with the secret) fails
    because its kubelet raced the new secret: it is probed afresh (its credentials work),
    recreated as a follow-up; the circuit stays closed and nothing is counted again."""
    world = World(SLOW_RECHECK)
    await fix_private(world)
    record = json.loads(
        world.kube.obj("Deployment", NS, "priv")["metadata"]["annotations"][REMEDIATION_ANNOTATION]
    )
    world.prober.answers[PRIVATE] = diag(PRIVATE, Cause.ImageAvailable)
    secret = world.kube.written("create", "Secret")[0].name
    same_second = record["time"][:19] + "Z"
    world.feed(
        stuck_pod(world.kube, "priv", 1, PRIVATE, created=same_second, pull_secrets=(secret,))
    )
    await until(lambda: len(world.kube.written("delete", "Pod")) == 2)
    await world.settle()
    assert world.prober.asked == [PRIVATE, PRIVATE]  # probed afresh, not the fix's diagnosis
    stats = world.engine.inventory.stats["ClusterPullPolicy/heal"]
    assert stats.counts["failed"] == 0 and stats.counts["remediated"] == 1
    annotations = world.kube.obj("Deployment", NS, "priv")["metadata"]["annotations"]
    assert CIRCUIT_ANNOTATION not in annotations


async def test_siblings_that_arrive_during_the_debounce_cost_one_decision(world: World) -> None:
    await world.boot(cluster_policy(mode="Observe"))
    deployment(world.kube, "web", BAD)
    for i in range(5):
        world.feed(stuck_pod(world.kube, "web", i, BAD))
    await world.settle()
    await asyncio.sleep(0.05)
    await world.settle()
    assert world.prober.asked == [BAD]


async def test_the_apis_return_ends_every_back_off_at_once() -> None:
    """A loop that failed while the API was away sleeps up to a minute; the API's return
    (seen by the health probe, every second while it is down) wakes it at once."""
    from pullmedic.control.supervision import Supervisor

    sup = Supervisor()
    sup.BACKOFF_MIN = 30.0  # type: ignore[misc]
    runs = {"n": 0}

    async def watch() -> None:
        runs["n"] += 1
        if runs["n"] == 1:
            raise ConnectionRefusedError("the API server is away")

    sup.every("watch", 0.0, watch)
    sup.start()
    try:
        await until(lambda: sup.loops["watch"].streak == 1)
        await asyncio.sleep(0.05)
        assert runs["n"] == 1  # backing off: 30 s
        sup.wake()
        await until(lambda: runs["n"] >= 2, timeout=1.0)
    finally:
        await sup.stop()


async def test_the_health_probe_reports_the_apis_return_once(world: World) -> None:
    """While the API answers the probe runs every api_check_interval; once it fails it
    probes at every call and calls back exactly once when the API is back, which wakes
    the decisions still waiting out a failure's back-off."""
    await world.boot(cluster_policy())
    health = world.engine.health
    back: list[bool] = []
    health.on_api_back = lambda: back.append(True)
    world.kube.fail("get", "Version", KubeError(0, "ConnectionRefusedError"))
    await health.check_api()
    await health.check_api()
    assert health.api_down and back == []
    world.kube.heal()
    await health.check_api()
    await health.check_api()
    assert not health.api_down and back == [True]


async def test_an_api_that_answers_with_an_error_is_not_down(world: World) -> None:
    """429 (API priority and fairness) or 403 on /version: the API is there, only busy or
    strict. Taking it for an outage would wake every loop and group into it."""
    await world.boot(cluster_policy())
    health = world.engine.health
    back: list[bool] = []
    health.on_api_back = lambda: back.append(True)
    world.kube.fail("get", "Version", KubeError(429, "TooManyRequests"))
    await health.check_api()
    assert not health.api_down and health.api_ok_at is not None
    world.kube.heal()
    await health.check_api()
    assert back == []


async def test_decisions_backing_off_after_a_failure_are_retried_when_the_api_returns(
    world: World,
) -> None:
    await world.boot(cluster_policy())
    deployment(world.kube, "web", BAD)
    world.kube.fail("get", "ReplicaSet", KubeError(0, "ConnectionRefusedError"))  # owner chain
    world.engine.scheduler.settings = replace(world.engine.scheduler.settings, retry_base=60.0)
    world.feed(stuck_pod(world.kube, "web", 0, BAD))
    group = next(iter(world.engine.groups.groups.values()))
    await until(lambda: group.failures >= 1 and (group.task is None or group.task.done()))
    world.kube.heal()
    assert not image_patches(world.kube, "web")  # waiting out a 120 s back-off
    world.engine._api_back()
    await until(lambda: bool(image_patches(world.kube, "web")))


async def test_a_hanging_loop_body_is_cancelled_and_liveness_says_so() -> None:
    from pullmedic.control.supervision import Supervisor

    now = {"t": 0.0}
    sup = Supervisor(clock=lambda: now["t"])
    sup.BACKOFF_MIN = 0.001  # type: ignore[misc]
    calls = {"n": 0}

    async def hangs() -> None:
        calls["n"] += 1
        await asyncio.Event().wait()

    sup.every("hangs", 0.001, hangs, deadline=0.01)
    sup.start()
    try:
        await until(lambda: calls["n"] >= 2)  # cancelled at its deadline, then run again
        assert sup.loops["hangs"].restarts >= 1
        now["t"] = 1000.0  # no run has completed for longer than the budget
        assert sup.stalled() and "hangs" in sup.stalled()[0]
    finally:
        await sup.stop()


async def test_liveness_and_readiness(world: World) -> None:
    eng = world.engine
    assert "namespace watch has not listed yet" in eng.readiness()
    await world.boot(cluster_policy())
    eng.start()
    try:
        await until(lambda: eng.readiness() == [])
        assert eng.liveness() == []
        # A stuck pod and then silence beyond the budget: the pod watch is deaf.
        deployment(world.kube, "web", GOOD)
        world.prober.hang = asyncio.Event()
        world.feed(stuck_pod(world.kube, "web", 0, GOOD))
        await until(lambda: any("no pod event" in p for p in eng.liveness()), timeout=2)
        eng.saw_pod_event()
        assert not any("no pod event" in p for p in eng.liveness())
        # The API server stops answering: unready, but still alive.
        world.kube.fail("get", "Version", KubeError(0, "ConnectTimeoutError"))
        await until(lambda: "API server has not answered recently" in eng.readiness())
        assert not any("API" in p for p in eng.liveness())
        world.prober.hang.set()
    finally:
        await eng.stop()


async def test_an_incomplete_image_moves_to_a_mirror_that_has_it_whole(world: World) -> None:
    broken = "registry.example.com/app:2.0"
    mirrored = "mirror.example.com/app:2.0"
    world.prober.answers[broken] = diag(broken, Cause.ImageIncomplete)
    world.prober.answers[mirrored] = diag(mirrored, Cause.ImageAvailable)
    await world.boot(
        cluster_policy(
            mirrors=[{"registry": "registry.example.com", "mirror": "mirror.example.com"}]
        )
    )
    deployment(world.kube, "web", broken)
    world.feed(stuck_pod(world.kube, "web", 0, broken))
    await until(lambda: bool(image_patches(world.kube, "web")))
    await world.settle()
    dep = world.kube.obj("Deployment", NS, "web")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == mirrored
    assert world.prober.asked == [broken, mirrored]  # the mirror was verified first
    assert world.kube.written("delete", "Pod") == []  # never "recreate to skip back-off"


async def test_an_incomplete_image_without_a_mirror_is_reported_not_recreated(
    world: World,
) -> None:
    broken = "registry.example.com/app:2.0"
    world.prober.answers[broken] = diag(broken, Cause.ImageIncomplete)
    await world.boot(cluster_policy())
    deployment(world.kube, "web", broken)
    world.feed(stuck_pod(world.kube, "web", 0, broken))
    await until(lambda: bool(world.kube.events("PullDiagnosed")))
    await world.settle()
    assert world.kube.written("delete", "Pod") == []
    assert image_patches(world.kube, "web") == []


async def test_registries_the_nodes_authenticate_to_get_no_pull_secret(world: World) -> None:
    """The probe's 401 is not the node's answer where a credential provider runs: report
    with the kubelet's own words, never attach a secret over it."""
    await world.boot(
        cluster_policy(
            credentials={
                "secrets": [{"namespace": "shared", "name": "regcred"}],
                "nodeRegistries": ["registry.example.com"],
            }
        )
    )
    deployment(world.kube, "priv", PRIVATE)
    pod = stuck_pod(world.kube, "priv", 0, PRIVATE)
    pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = (
        "failed to authorize: failed to fetch oauth token: 401 Unauthorized"
    )
    world.feed(pod)
    await until(lambda: bool(world.kube.events("PullDiagnosed")))
    await world.settle()
    (event,) = world.kube.events("PullDiagnosed")
    assert "NodeCredentialsUnknown" in event["message"] and "refused too" in event["message"]
    assert world.kube.written("patch", "ServiceAccount") == []
    assert world.kube.written("create", "Secret") == []


async def test_a_private_image_on_the_node_still_gets_the_credential_fix(world: World) -> None:
    """Ensure-secret-pulled-images: the image is cached on the node, yet a pod without
    credentials fails. The diagnosis says why; the fix is the pull secret, not a
    recreation (which "ImageAvailable" would have chosen)."""
    world.kube.put(
        {
            "kind": "Node",
            "metadata": {
                "name": "node-1",
                "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            },
            "status": {"images": [{"names": [PRIVATE, "registry.example.com/other:1"]}]},
        }
    )
    shared_secret(world)
    await world.boot(cluster_policy())
    world.engine.on_namespace(None, namespace("shared"))
    deployment(world.kube, "priv", PRIVATE)
    world.feed(stuck_pod(world.kube, "priv", 0, PRIVATE))
    await until(lambda: bool(world.kube.written("patch", "ServiceAccount")))
    await world.settle()
    (event,) = world.kube.events("PullDiagnosed")
    assert "already on node node-1" in event["message"]
    assert "ensure-secret-pulled-images" in event["message"]


async def test_a_moved_repository_is_followed_once_verified_there(world: World) -> None:
    old = "registry.example.com/bitnami/redis:7.0"
    new = "registry.example.com/bitnamilegacy/redis:7.0"
    world.prober.answers[old] = diag(old, Cause.RepositoryNotFound)
    world.prober.answers[new] = diag(new, Cause.ImageAvailable)
    await world.boot(
        cluster_policy(
            alternatives=[
                {
                    "from": "registry.example.com/bitnami/*",
                    "to": "registry.example.com/bitnamilegacy/$1",
                }
            ]
        )
    )
    deployment(world.kube, "cache", old)
    world.feed(stuck_pod(world.kube, "cache", 0, old))
    await until(lambda: bool(image_patches(world.kube, "cache")))
    await world.settle()
    dep = world.kube.obj("Deployment", NS, "cache")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == new
    assert world.prober.asked == [old, new]  # verified before use
    (event,) = world.kube.events("Remediated", on="cache")
    assert old in event["message"] and new in event["message"]
    record = json.loads(dep["metadata"]["annotations"][REMEDIATION_ANNOTATION])
    assert (record["previousImage"], record["newImage"]) == (old, new)


async def test_an_alternative_that_is_not_there_whole_is_not_used(world: World) -> None:
    old = "registry.example.com/bitnami/redis:7.0"
    new = "registry.example.com/bitnamilegacy/redis:7.0"
    world.prober.answers[old] = diag(old, Cause.RepositoryNotFound)
    world.prober.answers[new] = diag(new, Cause.ImageIncomplete)
    await world.boot(
        cluster_policy(
            alternatives=[
                {
                    "from": "registry.example.com/bitnami/*",
                    "to": "registry.example.com/bitnamilegacy/$1",
                }
            ]
        )
    )
    deployment(world.kube, "cache", old)
    world.feed(stuck_pod(world.kube, "cache", 0, old))
    await until(lambda: len(world.prober.asked) == 2)
    await world.settle()
    assert image_patches(world.kube, "cache") == []


async def test_pods_of_a_namespace_being_deleted_are_left_alone(world: World) -> None:
    await world.boot(cluster_policy())
    world.engine.on_namespace(
        "MODIFIED", {"metadata": {"name": NS}, "status": {"phase": "Terminating"}}
    )
    deployment(world.kube, "web", BAD)
    world.feed(stuck_pod(world.kube, "web", 0, BAD))
    await world.settle()
    assert world.prober.asked == [] and world.kube.events() == []
    world.engine.on_namespace("MODIFIED", namespace(NS))  # (a namespace is never revived,
    assert NS not in world.engine.inventory.terminating  # but the state follows the object)
