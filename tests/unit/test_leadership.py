"""Leader election on a Lease, with a clock under the test's control: one leader at a time,
takeover after the lease duration, step-down before anyone may take over, hand-over on a
clean stop, and a standby engine that acts on its warm groups once elected."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from pullmedic.control.engine import Engine
from pullmedic.kube.client import KubeError
from pullmedic.kube.leadership import LeaseElector, LeaseSettings
from tests.unit.fakekube import FakeKube, FakeProber
from tests.unit.test_engine_scenarios import (
    BAD,
    FAST,
    GOOD,
    NS,
    TAG_TYPO,
    cluster_policy,
    deployment,
    image_patches,
    namespace,
    stuck_pod,
    until,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def elector(kube: FakeKube, clock: Clock, who: str) -> LeaseElector:
    s = LeaseSettings("ops", "pullmedic", who, duration=10, renew_deadline=7, retry=2)
    return LeaseElector(kube, s, clock=clock, wall=clock)


async def test_first_comer_creates_the_lease_and_leads() -> None:
    kube, clock = FakeKube(), Clock()
    a = elector(kube, clock, "a")
    await a.tick()
    assert a.leader
    lease = kube.obj("Lease", "ops", "pullmedic")
    assert lease["spec"]["holderIdentity"] == "a"
    assert lease["spec"]["leaseDurationSeconds"] == 10


async def test_a_standby_takes_over_only_after_the_lease_expired() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = elector(kube, clock, "a"), elector(kube, clock, "b")
    await a.tick()
    await b.tick()
    assert a.leader and not b.leader and b.holder == "a"
    for _ in range(4):  # a renews: b keeps waiting however long it runs
        clock.t += 2
        await a.tick()
        await b.tick()
        assert a.leader and not b.leader
    # a is killed: no more renewals. b waits out the duration from its own observation.
    clock.t += 9
    await b.tick()
    assert not b.leader
    clock.t += 2
    await b.tick()
    assert b.leader
    lease = kube.obj("Lease", "ops", "pullmedic")
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_leader_cut_off_steps_down_before_anyone_can_take_over() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = elector(kube, clock, "a"), elector(kube, clock, "b")
    await a.tick()
    await b.tick()
    stepped_down_at = took_over_at = None
    kube.fail("patch", "Lease", KubeError(0, "ConnectTimeoutError"))  # a's renewals fail
    for _ in range(20):
        clock.t += 1
        await a.tick()
        if stepped_down_at is None and not a.leader:
            stepped_down_at = clock.t
        kube.faults.clear()  # b's own calls work
        await b.tick()
        kube.fail("patch", "Lease", KubeError(0, "ConnectTimeoutError"))
        if took_over_at is None and b.leader:
            took_over_at = clock.t
        assert not (a.leader and b.leader)
    assert stepped_down_at is not None and took_over_at is not None
    assert stepped_down_at < took_over_at


async def test_a_clean_stop_hands_over_at_once() -> None:
    kube, clock = FakeKube(), Clock()
    a, b = elector(kube, clock, "a"), elector(kube, clock, "b")
    await a.tick()
    await b.tick()
    await a.release()
    assert not a.leader
    clock.t += 0.5
    await b.tick()
    assert b.leader


@pytest.mark.parametrize("seed", range(5))
async def test_never_two_leaders_under_random_faults(seed: int) -> None:
    rng = random.Random(seed)
    kube, clock = FakeKube(), Clock()
    electors = [elector(kube, clock, n) for n in "abc"]
    leaders_seen = set()
    for _ in range(200):
        clock.t += rng.choice((0.5, 1.0, 2.0))
        e = rng.choice(electors)
        if rng.random() < 0.3:
            kube.fail("patch", "Lease", KubeError(0, "reset"), times=1)
        await e.tick()
        leading = [x.s.identity for x in electors if x.leader]
        assert len(leading) <= 1, leading
        leaders_seen.update(leading)
    assert leaders_seen  # someone led at some point


async def test_a_standby_engine_acts_on_its_warm_groups_once_elected() -> None:
    kube = FakeKube()
    prober = FakeProber({BAD: TAG_TYPO, GOOD: TAG_TYPO})

    def engine(who: str) -> Engine:
        lease = LeaseSettings("ops", "pullmedic", who, duration=3, renew_deadline=2, retry=0.02)
        return Engine(kube, prober, dataclasses.replace(FAST, lease=lease))

    first, second = engine("first"), engine("second")
    policy = cluster_policy()
    kube.put(policy)
    for e in (first, second):
        e.on_namespace(None, namespace(NS))
        await e.on_policy(None, policy)
    first.start()
    await until(lambda: first.acting())
    second.start()
    deployment(kube, "web", BAD)
    pod = stuck_pod(kube, "web", 0, BAD)
    first.on_pod("ADDED", pod)
    second.on_pod("ADDED", pod)
    await until(lambda: bool(image_patches(kube, "web")))
    assert not second.acting() and second.scheduler.paused
    assert prober.asked == [BAD]  # the standby did not even probe
    # The leader dies without a word (SIGKILL): the standby waits out the lease, then acts.
    first.scheduler.cancel_all()
    await first.supervisor.stop()
    kube.obj("Deployment", NS, "web")["spec"]["template"]["spec"]["containers"][0]["image"] = BAD
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await until(lambda: second.acting(), timeout=6)
    await until(lambda: len(image_patches(kube, "web")) == 2, timeout=3)
    assert loop.time() - t0 < 5
    await second.stop()
    assert kube.obj("Lease", "ops", "pullmedic")["spec"]["holderIdentity"] == ""  # released
