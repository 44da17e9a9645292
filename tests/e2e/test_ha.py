"""Two replicas with leader election against the real sandbox: one acts, the standby
takes over when the leader is SIGKILLed in the middle of a storm, and no workload is
patched or announced twice across the failover."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.images import push_image
from sandbox.kube import deployment, events_for, running_pods, wait_for
from tests.e2e.conftest import OperatorProcess, leader_elect

pytestmark = pytest.mark.cluster
LEASE = "pullmedic-ha-test"


def leading(op: OperatorProcess) -> bool:
    try:
        text = httpx.get(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return False
    return any(line.strip() == "pullmedic_leader 1.0" for line in text.splitlines())


@pytest.fixture
def pair(
    sandbox: Any, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[list[OperatorProcess]]:
    ops = [
        OperatorProcess(operator_kubeconfig, sandbox.registries, tmp_path / f"op{i}.log")
        for i in range(2)
    ]
    for op in ops:
        op.start(*leader_elect(LEASE))
    try:
        yield ops
    finally:
        for op in ops:
            op.stop()


def record_time(d: Any) -> float:
    """Wall time of the remediation record on a workload (0 when it has none)."""
    raw = (d.metadata.annotations or {}).get("pullmedic.dev/last-remediation")
    if not raw:
        return 0.0
    return datetime.fromisoformat(json.loads(raw)["time"]).timestamp()


def remediated_events(core: Any, ns: str, name: str) -> int:
    return sum(
        e.count or 1
        for e in events_for(core, ns, name)
        if e.source.component == "pullmedic" and e.reason == "Remediated"
    )


def test_the_standby_takes_over_a_storm_without_duplicate_writes(
    pair: list[OperatorProcess],
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    private_case: Any,
) -> None:
    # private_case: a Remediate ClusterPullPolicy for the namespace, with a pull secret to
    # offer, and a private image that needs it (its stuck pods are recreated once fixed).
    repo = f"team/ha-{namespace[-6:]}"
    for tag in ("1.0.0", "1.0.3"):
        push_image(registries.open, repo, tag)
    wait_for(lambda: sum(leading(op) for op in pair) == 1, "exactly one leader", 30)
    leader = next(op for op in pair if leading(op))
    standby = next(op for op in pair if op is not leader)
    bad = f"{registries.open.host}/{repo}:1.0.9"
    good = f"{registries.open.host}/{repo}:1.0.3"

    def image(name: str) -> str:
        return str(
            apps.read_namespaced_deployment(name, namespace).spec.template.spec.containers[0].image
        )

    apps.create_namespaced_deployment(namespace, deployment("before", bad, replicas=2))
    wait_for(lambda: image("before") == good, "the leader to heal the first workload", 60)

    # A storm, and the leader dies in the middle of it.
    names = [f"storm-{i}" for i in range(5)]
    for n in names:
        apps.create_namespaced_deployment(namespace, deployment(n, bad, replicas=2))
    apps.create_namespaced_deployment(namespace, deployment("priv", private_case.image, 2))
    leader.stop(kill=True)
    killed_at = time.monotonic()
    killed_wall = time.time()
    wait_for(lambda: leading(standby), "the standby to take the Lease over", 30)
    took_over = time.monotonic() - killed_at
    wait_for(
        lambda: (
            all(image(n) == good for n in names)
            and len(running_pods(core, namespace, "app=priv")) == 2
        ),
        "the storm healed after failover",
        90,
    )
    healed = time.monotonic() - killed_at
    print(f"\nfailover: standby leads {took_over:.1f}s after SIGKILL; storm healed {healed:.1f}s")
    assert took_over <= 15
    # The standby did the storm's work: fixes recorded after the kill are its own.
    after = [
        n
        for n in [*names, "priv"]
        if record_time(apps.read_namespaced_deployment(n, namespace)) > killed_wall
    ]
    assert after, "every fix predates the kill: the failover was not exercised"
    assert standby.metric("pullmedic_plans_total", decision="applied") >= len(after)

    for n in ["before", *names]:
        d = apps.read_namespaced_deployment(n, namespace)
        assert d.metadata.generation == 2, f"{n}: patched more than once"
        assert remediated_events(core, namespace, n) == 1, n
    # The private workload: the ServiceAccount got the secret and the Deployment only its
    # record (a Deployment's generation also counts annotation changes: one write), one
    # Event, and its two stuck pods recreated once: its ReplicaSet made 2 + 2 pods.
    priv = apps.read_namespaced_deployment("priv", namespace)
    assert priv.metadata.generation == 2, "priv: written more than once"
    assert not priv.spec.template.spec.image_pull_secrets
    assert remediated_events(core, namespace, "priv") == 1
    created = [
        e
        for e in core.list_namespaced_event(namespace).items
        if e.reason == "SuccessfulCreate" and e.involved_object.name.startswith("priv-")
    ]
    assert sum(e.count or 1 for e in created) == 4, [e.message for e in created]
