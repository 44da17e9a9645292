"""Policy status with shards: each shard's figures and journal in its own part
(status.shards["<I>-of-<N>"]), shard 0 writes their sum at the top level, and a restarted
shard continues its own journal."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from pullmedic.control.engine import Engine
from pullmedic.core.policystatus import merge_parts
from tests.unit.test_engine_scenarios import (
    BAD,
    FAST,
    NS,
    cluster_policy,
    deployment,
    image_patches,
    namespace,
    until,
)
from tests.unit.test_shard_scenarios import SHARDS, Cluster, spread_pods

POLICY = ("ClusterPullPolicy", "", "heal")
WEB = f"Deployment/{NS}/web"


@pytest.mark.parametrize(
    ("parts", "want"),
    [
        ({}, {"counts": {}, "lastActions": [], "pendingActions": []}),
        (
            {
                "0-of-2": {"counts": {"remediated": 1, "stuck": 2}},
                "1-of-2": {"counts": {"remediated": 2, "detected": 3}},
            },
            {"counts": {"remediated": 3, "stuck": 2, "detected": 3}},
        ),
        (
            {
                "1-of-2": {"lastActions": [{"time": "2026-01-01T00:00:02Z", "workload": "b"}]},
                "0-of-2": {"lastActions": [{"time": "2026-01-01T00:00:01Z", "workload": "a"}]},
            },
            {
                "lastActions": [
                    {"time": "2026-01-01T00:00:01Z", "workload": "a"},
                    {"time": "2026-01-01T00:00:02Z", "workload": "b"},
                ]
            },
        ),
        (
            {
                "0-of-2": {"pendingActions": [{"workload": "w1", "since": "s"}]},
                "1-of-2": {"pendingActions": [{"workload": "w0", "since": "t"}, {"bad": 1}]},
            },
            {
                "pendingActions": [
                    {"workload": "w0", "since": "t"},
                    {"workload": "w1", "since": "s"},
                ]
            },
        ),
        (
            {
                "0-of-2": {"managedSecrets": [{"source": "a/s", "copy": "b/s"}]},
                "1-of-2": {"managedSecrets": [{"source": "a/s", "copy": "b/s"}, "junk"]},
            },
            {"managedSecrets": [{"source": "a/s", "copy": "b/s"}]},
        ),
        (
            {
                "0-of-2": {"backoff": {"secondsLostWaiting": 1.25}},
                "1-of-2": {"backoff": {"secondsLostWaiting": 2.5, "pullAttempts": 4}},
            },
            {"backoff": {"secondsLostWaiting": 3.8, "pullAttempts": 4}},
        ),
        # Bad input from the API (hand-edited status): counted as empty, never a crash.
        ({"0-of-2": "nonsense", "1-of-2": {"counts": {"remediated": "x"}}}, {"counts": {}}),
    ],
)
def test_merge_parts(parts: dict[str, Any], want: dict[str, Any]) -> None:
    got = merge_parts(parts)
    for key, value in want.items():
        assert got[key] == value, key


async def remediate_across_shards() -> tuple[Cluster, int]:
    """A Deployment whose pods span both shards, fixed by its owner shard."""
    c = Cluster()
    await c.boot(cluster_policy())
    deployment(c.kube, "web", BAD)
    rs_uid = c.kube.obj("ReplicaSet", NS, "web-rs")["metadata"]["uid"]
    owner = SHARDS[0].of(rs_uid)
    for p in spread_pods(c.kube, "web", 6):
        c.watch(p)
    await c.engines[1 - owner].handoff.flush()
    c.handed()
    await until(lambda: bool(c.kube.events("Remediated", on="web")))
    await c.settle()
    return c, owner


async def exchange(c: Cluster) -> None:
    """Both shards write, then see the policy as the API server has it (kopf's watch)."""
    for _ in range(2):
        for e in c.engines:
            await e.status.flush()
        for e in c.engines:
            await e.on_policy(None, c.kube.obj(*POLICY))


async def test_each_shard_writes_its_part_and_shard_0_the_sum() -> None:
    c, owner = await remediate_across_shards()
    part = SHARDS[owner].name
    # The journal entry was on record, in the owner's part, before the first fix write.
    writes = c.kube.writes
    journal_at = next(
        i
        for i, w in enumerate(writes)
        if w.verb == "patch_status"
        and [
            e["workload"]
            for e in ((w.payload or {}).get("shards", {}).get(part, {}).get("pendingActions") or [])
        ]
        == [WEB]
    )
    patch_at = next(i for i, w in enumerate(writes) if w.verb == "patch" and w.kind == "Deployment")
    assert journal_at < patch_at
    # A non-zero shard never writes the top level; shard 0 never writes another's part.
    for w in writes:
        if w.verb != "patch_status" or not w.payload or "shards" not in w.payload:
            continue
        assert len(w.payload["shards"]) == 1
        if "counts" in w.payload:
            assert SHARDS[0].name in w.payload["shards"]

    await exchange(c)
    status = c.kube.obj(*POLICY)["status"]
    assert status["shards"][part]["counts"]["remediated"] == 1
    assert status["shards"][part]["pendingActions"] == []
    assert status["shards"][SHARDS[1 - owner].name]["counts"]["remediated"] == 0
    assert status["counts"]["remediated"] == 1  # the sum, written by shard 0
    assert [a["workload"] for a in status["lastActions"]] == [WEB]
    assert status["pendingActions"] == []
    assert len(image_patches(c.kube, "web")) == 1
    # Quiet once in step: no further status writes.
    before = len(c.kube.written("patch_status", "ClusterPullPolicy"))
    await exchange(c)
    assert len(c.kube.written("patch_status", "ClusterPullPolicy")) == before


async def test_a_restarted_shard_continues_its_own_journal() -> None:
    """The owner dies after its fix and announcement, before its counted status was
    written: its successor (same shard) finds the entry in its part and counts it once."""
    c, owner = await remediate_across_shards()
    part = SHARDS[owner].name
    status = c.kube.obj(*POLICY)["status"]
    assert [e["workload"] for e in status["shards"][part]["pendingActions"]] == [WEB]
    c.engines[owner].scheduler.cancel_all()  # SIGKILL before its status loop ran

    successor = Engine(c.kube, c.prober, replace(FAST, shard=SHARDS[owner]))
    successor.on_namespace(None, namespace(NS))
    await successor.on_policy(None, c.kube.obj(*POLICY))
    assert WEB in successor.inventory.stats["ClusterPullPolicy/heal"].inherited
    await successor.status.resolve(grace=0)
    await successor.status.flush()
    c.engines[owner] = successor
    await exchange(c)
    status = c.kube.obj(*POLICY)["status"]
    assert status["shards"][part]["counts"]["remediated"] == 1
    assert status["shards"][part]["pendingActions"] == []
    assert status["counts"]["remediated"] == 1
    assert len(c.kube.events("Remediated", on="web")) == 1  # the same Event, not a second
    await asyncio.sleep(0)
