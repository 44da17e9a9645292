"""Two shards against the real sandbox (API server with ShardedListAndWatch): together
they list every pod exactly once, and a Deployment whose pods span both shards is
remediated exactly once, by the shard its ReplicaSet's uid hashes into."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from pullmedic.core.sharding import HANDOFF_LABEL, Shard
from sandbox.images import push_image
from sandbox.kube import OPERATOR_NAMESPACE, deployment, wait_for
from tests.e2e.conftest import OperatorProcess, leader_elect
from tests.e2e.test_ha import leading, remediated_events

pytestmark = pytest.mark.cluster
SHARDS = [Shard(0, 2), Shard(1, 2)]
REPLICAS = 8  # all eight in one shard: 1 in 128


@pytest.fixture
def shards(
    sandbox: Any, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[list[OperatorProcess]]:
    """Two shard replicas, not started: the test starts each when its turn comes."""
    ops = [
        OperatorProcess(operator_kubeconfig, sandbox.registries, tmp_path / f"shard{i}.log")
        for i in range(2)
    ]
    try:
        yield ops
    finally:
        for op in ops:
            op.stop()


def pull_failed(pod: Any) -> bool:
    """Every container of the pod is waiting on a failed pull."""
    statuses = (pod.status and pod.status.container_statuses) or ()
    return bool(statuses) and all(
        st.state
        and st.state.waiting
        and st.state.waiting.reason in ("ErrImagePull", "ImagePullBackOff")
        for st in statuses
    )


def start_shard(op: OperatorProcess, index: int) -> None:
    op.start("--shards", "2", "--shard-index", str(index), *leader_elect("pullmedic-shard-test"))
    wait_for(lambda: leading(op), f"shard {index} leading", 30)


class LabelWatch:
    """A pod watch in a thread: the hand-off label values each pod carried, by uid."""

    def __init__(self, core: Any, namespace: str) -> None:
        from kubernetes import watch

        self.seen: dict[str, set[str]] = {}
        self.error: BaseException | None = None  # the stream broke before stop()
        self.stopped = False
        self.w = watch.Watch()
        self.thread = threading.Thread(target=self._run, args=(core, namespace), daemon=True)
        self.thread.start()

    def _run(self, core: Any, namespace: str) -> None:
        try:
            for ev in self.w.stream(core.list_namespaced_pod, namespace, timeout_seconds=600):
                pod = ev["object"]
                label = (pod.metadata.labels or {}).get(HANDOFF_LABEL)
                values = self.seen.setdefault(pod.metadata.uid, set())
                if label:
                    values.add(label)
        except Exception as e:  # after stop() (the namespace goes): expected
            if not self.stopped:
                self.error = e

    def stop(self) -> dict[str, set[str]]:
        self.stopped = True
        self.w.stop()
        assert self.error is None, f"the label watch broke before the end: {self.error!r}"
        return {u: set(v) for u, v in self.seen.items()}


def watch_handoff_labels(core: Any, namespace: str) -> LabelWatch:
    return LabelWatch(core, namespace)


def test_two_shards_remediate_a_spanning_deployment_once(
    shards: list[OperatorProcess],
    sandbox: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    """The pods are stuck before either shard runs, and the shard that does not own the
    group starts first: with both running from the start, the owner could fix the
    Deployment (from its own pods) before the other shard's few pods had failed, and a
    terminating pod is rightly never handed over, so whether a hand-off happened at all was
    a race (CI lost it once, with one pod of eight in the other shard)."""
    repo = f"team/shard-{namespace[-6:]}"
    for tag in ("2.0.0", "2.0.3"):
        push_image(registries.open, repo, tag)
    cluster_policy([namespace], mode="Remediate")
    bad = f"{registries.open.host}/{repo}:2.0.9"
    good = f"{registries.open.host}/{repo}:2.0.3"
    labels = watch_handoff_labels(core, namespace)  # every label a pod ever carried

    def image() -> str:
        d = apps.read_namespaced_deployment("span", namespace)
        return str(d.spec.template.spec.containers[0].image)

    first_pods: list[Any] = []

    def stuck_pods() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector="app=span").items
        first_pods[:] = [p for p in pods if p.spec.containers[0].image == bad]
        return len(first_pods) == REPLICAS and all(pull_failed(p) for p in first_pods)

    # All eight pods in one shard happens once in 128 tries: then the Deployment is made
    # again (new pods, new uids) until its pods span both shards.
    for _ in range(5):
        apps.create_namespaced_deployment(namespace, deployment("span", bad, replicas=REPLICAS))
        wait_for(stuck_pods, "the first ReplicaSet's pods stuck pulling", 90)
        if {SHARDS[0].of(p.metadata.uid) for p in first_pods} == {0, 1}:
            break
        apps.delete_namespaced_deployment("span", namespace, propagation_policy="Foreground")
        wait_for(
            lambda: (
                not core.list_namespaced_pod(namespace, label_selector="app=span").items
                and not apps.list_namespaced_deployment(namespace).items
            ),
            "the one-shard Deployment gone",
            60,
        )
    rs = next(r for r in first_pods[0].metadata.owner_references if r.controller)
    owner = SHARDS[0].of(rs.uid)
    foreign = [p.metadata.uid for p in first_pods if SHARDS[0].of(p.metadata.uid) != owner]
    mine = [p.metadata.uid for p in first_pods if SHARDS[0].of(p.metadata.uid) == owner]
    assert foreign and mine, "the pods did not span both shards in five Deployments"

    # The other shard first: it hands every stuck pod of the owner's group over.
    start_shard(shards[1 - owner], 1 - owner)
    wait_for(
        lambda: all(SHARDS[owner].name in labels.seen.get(u, set()) for u in foreign),
        f"shard {1 - owner} to hand its {len(foreign)} pod(s) to shard {owner}",
        30,
    )
    assert image() == bad, "the shard that does not own the group fixed it"
    start_shard(shards[owner], owner)
    leases = {
        lease.metadata.name
        for lease in client.CoordinationV1Api(core.api_client)
        .list_namespaced_lease(OPERATOR_NAMESPACE)
        .items
    }
    assert {"pullmedic-shard-test-shard-0-of-2", "pullmedic-shard-test-shard-1-of-2"} <= leases
    wait_for(lambda: image() == good, "the owner shard to heal the Deployment", 90)

    # The API server splits the pods: each shard's list is its slice, the two are disjoint
    # and together they are every pod.
    with httpx.Client(
        base_url=sandbox.cluster.api_url, verify=sandbox.cluster.ssl_context(), timeout=30
    ) as h:
        path = f"/api/v1/namespaces/{namespace}/pods"
        whole = h.get(path).json()
        every = {p["metadata"]["uid"] for p in whole["items"]}
        at = {"resourceVersion": whole["metadata"]["resourceVersion"]}
        slices = []
        for s in SHARDS:  # at the same resourceVersion: the rollout goes on meanwhile
            params = {"shardSelector": s.selector(), "resourceVersionMatch": "Exact", **at}
            body = h.get(path, params=params).json()
            assert body["metadata"]["shardInfo"]["selector"] == s.selector()
            slices.append({p["metadata"]["uid"] for p in body["items"]})
    assert not slices[0] & slices[1] and slices[0] | slices[1] == every

    # The owner labelled none of its own pods; the other shard labelled its pods for the
    # owner only (seen by a watch, as the rollout may have replaced them since).
    seen = labels.stop()
    assert all(not seen.get(u) for u in mine), f"the owner labelled its own pods: {seen}"
    handed = {u: seen.get(u, set()) for u in foreign}
    assert all(v <= {SHARDS[owner].name} for v in handed.values()), handed

    d = apps.read_namespaced_deployment("span", namespace)
    assert d.metadata.generation == 2, "patched more than once"
    assert remediated_events(core, namespace, "span") == 1
