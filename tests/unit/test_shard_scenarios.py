"""Two shards on one (fake) cluster: a Deployment whose pods are spread over both by uid
is diagnosed and remediated once, by the shard its ReplicaSet's uid hashes into."""

from __future__ import annotations

import asyncio
import copy
import random
import uuid
from dataclasses import replace
from typing import Any

from pullmedic.control.engine import Engine
from pullmedic.core.sharding import HANDOFF_LABEL, Shard
from tests.unit.fakekube import FakeKube, FakeProber
from tests.unit.test_engine_scenarios import (
    BAD,
    FAST,
    GOOD,
    GOOD_FAILS,
    NS,
    TAG_TYPO,
    cluster_policy,
    deployment,
    image_patches,
    namespace,
    stuck_pod,
    until,
)

SHARDS = [Shard(0, 2), Shard(1, 2)]


class Cluster:
    """One fake API server, one engine per shard; the tests play both pod watches."""

    def __init__(self) -> None:
        self.kube = FakeKube()
        self.prober = FakeProber({BAD: TAG_TYPO, GOOD: GOOD_FAILS})
        self.engines = [Engine(self.kube, self.prober, replace(FAST, shard=s)) for s in SHARDS]

    async def boot(self, policy: dict[str, Any]) -> None:
        self.kube.put(policy)
        for e in self.engines:
            e.on_namespace(None, namespace(NS))
            await e.on_policy(None, policy)

    def watch(self, pod: dict[str, Any], event: str = "MODIFIED") -> None:
        """The firehose: the pod reaches the shard whose slice holds its uid."""
        for e in self.engines:
            if e.shard.holds(pod["metadata"]["uid"]):
                e._pod_event(event, pod)

    def handed(self, event: str = "MODIFIED") -> None:
        """The hand-off watches: every pod carrying a shard's label reaches that shard."""
        for (kind, _, _), obj in list(self.kube.objects.items()):
            label = ((obj.get("metadata") or {}).get("labels") or {}).get(HANDOFF_LABEL)
            if kind == "Pod" and label:
                for e in self.engines:
                    if e.shard.name == label:
                        e._handed_event(event, obj)

    async def settle(self) -> None:
        await until(
            lambda: all(
                g.task is None or g.task.done()
                for e in self.engines
                for g in e.groups.groups.values()
            )
        )


def spread_pods(kube: FakeKube, owner: str, n: int) -> list[dict[str, Any]]:
    rnd = random.Random(owner)
    pods = []
    for i in range(n):
        stuck_pod(kube, owner, i, BAD)
        stored = kube.obj("Pod", NS, f"{owner}-{i}")
        stored["metadata"]["uid"] = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        pods.append(copy.deepcopy(stored))
    holders = {SHARDS[0].of(p["metadata"]["uid"]) for p in pods}
    assert holders == {0, 1}, "the test needs siblings in both shards"
    return pods


async def test_siblings_in_two_shards_are_remediated_once_by_the_owner() -> None:
    c = Cluster()
    await c.boot(cluster_policy())
    deployment(c.kube, "web", BAD)
    rs_uid = c.kube.obj("ReplicaSet", NS, "web-rs")["metadata"]["uid"]
    owner = SHARDS[0].of(rs_uid)
    other = 1 - owner
    pods = spread_pods(c.kube, "web", 6)
    for p in pods:
        c.watch(p)
    assert not c.engines[other].groups.groups  # it decides nothing for another's group
    foreign = [p for p in pods if SHARDS[0].of(p["metadata"]["uid"]) == other]
    assert set(c.engines[other].handoff.pending) == {p["metadata"]["uid"] for p in foreign}

    await c.engines[other].handoff.flush()
    labelled = c.kube.written("patch", "Pod")
    assert sorted(w.name for w in labelled) == sorted(p["metadata"]["name"] for p in foreign)
    assert not c.engines[other].handoff.pending
    c.handed()
    await until(lambda: bool(image_patches(c.kube, "web")))
    await c.settle()
    await asyncio.sleep(0.05)
    await c.settle()

    assert len(image_patches(c.kube, "web")) == 1
    assert len(c.kube.events("Remediated", on="web")) == 1
    assert len(c.kube.events("PullDiagnosed")) == 1
    assert c.prober.asked == [BAD]
    assert set(c.engines[owner].groups.pods) == {p["metadata"]["uid"] for p in pods}
    assert not c.engines[other].groups.pods


async def test_an_already_labelled_pod_is_not_patched_again() -> None:
    c = Cluster()
    await c.boot(cluster_policy())
    deployment(c.kube, "web", BAD)
    rs_uid = c.kube.obj("ReplicaSet", NS, "web-rs")["metadata"]["uid"]
    other = 1 - SHARDS[0].of(rs_uid)
    pods = spread_pods(c.kube, "web", 6)
    for p in pods:
        c.watch(p)
    await c.engines[other].handoff.flush()
    first = len(c.kube.written("patch", "Pod"))
    for (kind, _, _), obj in list(c.kube.objects.items()):  # the labelled pods' next events
        if kind == "Pod":
            c.watch(obj)
    await c.engines[other].handoff.flush()
    assert len(c.kube.written("patch", "Pod")) == first
    assert not c.engines[other].handoff.pending


async def test_a_recovered_or_deleted_foreign_pod_is_not_handed_over() -> None:
    c = Cluster()
    await c.boot(cluster_policy())
    deployment(c.kube, "web", BAD)
    rs_uid = c.kube.obj("ReplicaSet", NS, "web-rs")["metadata"]["uid"]
    other = 1 - SHARDS[0].of(rs_uid)
    pods = spread_pods(c.kube, "web", 6)
    foreign = [p for p in pods if SHARDS[0].of(p["metadata"]["uid"]) == other]
    for p in foreign:
        c.watch(p)
    running = dict(foreign[0], status={"containerStatuses": [{"name": "app", "state": {}}]})
    c.watch(running)
    for p in foreign[1:]:
        c.watch(p, "DELETED")
    assert not c.engines[other].handoff.pending


async def test_only_shard_0_writes_policy_conditions() -> None:
    c = Cluster()
    await c.boot(cluster_policy())
    writers = {w.name for w in c.kube.written("patch_status")}
    assert writers == {"heal"}
    assert len(c.kube.written("patch_status")) == 1  # shard 0's; shard 1 only reads it
    assert c.engines[0].acting_for_all() and not c.engines[1].acting_for_all()


async def test_a_pod_outside_the_slice_is_ignored_when_the_server_did_not_filter() -> None:
    c = Cluster()
    await c.boot(cluster_policy())
    deployment(c.kube, "web", BAD)
    pods = spread_pods(c.kube, "web", 6)
    for e in c.engines:
        for p in pods:
            e._pod_event("MODIFIED", p)  # every pod to every shard: the gate is off
    seen = [set(e.groups.pods) | set(e.handoff.pending) for e in c.engines]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {p["metadata"]["uid"] for p in pods}
