"""Leader election on a coordination.k8s.io Lease, with client-go's rules.

Every replica watches and keeps its failure groups warm; only the holder of the Lease
decides and writes. The holder renews every ``retry`` seconds and stops acting when it
could not renew for ``renew_deadline``; the others take over once they have seen no
renewal for ``duration``. Since ``renew_deadline < duration``, a leader cut off from the
API server stops before anyone else can start, so two replicas never act at once (with
clocks that advance at the same rate; no agreement on the time of day is needed: each
replica times the Lease with its own monotonic clock, as client-go does).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pullmedic.kube.client import KubeApi, KubeError
from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = "pullmedic"
    identity: str = ""
    duration: float = 10.0  # followers wait this long without a renewal before taking over
    renew_deadline: float = 7.0  # the leader stops acting when it could not renew for this
    retry: float = 2.0  # how often the leader renews and followers check


def _micro(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        kube: KubeApi,
        settings: LeaseSettings,
        *,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.s = settings
        self.on_change = on_change
        self.clock = clock
        self.wall = wall
        self._leading = False
        self.holder: str = ""
        self._renewed_at = 0.0  # our own last successful renewal (monotonic)
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0  # when it last changed (monotonic)
        self.transitions = 0

    @property
    def leader(self) -> bool:
        """Leading, and renewed recently enough: the fence holds even if this replica's
        own loop stalls, because time alone ends it."""
        return self._leading and self.clock() - self._renewed_at <= self.s.renew_deadline

    def _set(self, leader: bool) -> None:
        if leader == self._leading:
            return
        self._leading = leader
        metrics.LEADER.set(1 if leader else 0)
        log.warning(
            "%s leadership of lease %s/%s",
            "acquired" if leader else "lost",
            self.s.namespace,
            self.s.name,
        )
        if self.on_change is not None:
            self.on_change(leader)

    async def tick(self) -> None:
        """One round: renew, or try to acquire; step down when renewals keep failing."""
        budget = (
            self.s.renew_deadline - (self.clock() - self._renewed_at)
            if self._leading
            else self.s.duration
        )
        try:
            async with asyncio.timeout(max(0.2, budget)):  # a hung renewal must not keep us
                await self._round()
        except KubeError as e:
            log.info("lease %s/%s: %s", self.s.namespace, self.s.name, e)
        except TimeoutError:
            log.info("lease %s/%s: no answer within %.1fs", self.s.namespace, self.s.name, budget)
        if self._leading and not self.leader:
            self._set(False)  # cut off: stop before a follower may start

    async def _round(self) -> None:
        now = self.clock()
        lease = await self.kube.get("Lease", self.s.namespace, self.s.name)
        if lease is None:
            await self.kube.create("Lease", self.s.namespace, self._body())
            self._won(now)
            return
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        renew = str(spec.get("renewTime") or "")
        if self._observed != (holder, renew):
            self._observed = (holder, renew)
            self._observed_at = now
        self.holder = holder
        duration = float(spec.get("leaseDurationSeconds") or self.s.duration)
        expired = now - self._observed_at > duration
        if holder and holder != self.s.identity and not expired:
            self._set(False)
            return
        taking_over = holder != self.s.identity
        ops: list[dict[str, Any]] = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": lease["metadata"]["resourceVersion"],
            },
            {"op": "replace", "path": "/spec", "value": self._spec(spec, taking_over)},
        ]
        await self.kube.json_patch("Lease", self.s.namespace, self.s.name, ops)
        self._won(now)

    def _won(self, now: float) -> None:
        self._renewed_at = now
        self.holder = self.s.identity
        if not self._leading:
            self.transitions += 1
        self._set(True)

    def _spec(self, old: dict[str, Any], taking_over: bool) -> dict[str, Any]:
        t = _micro(self.wall())
        return {
            "holderIdentity": self.s.identity,
            "leaseDurationSeconds": int(self.s.duration),
            "acquireTime": t if taking_over else old.get("acquireTime", t),
            "renewTime": t,
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (1 if taking_over else 0),
        }

    def _body(self) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.s.name, "namespace": self.s.namespace},
            "spec": {**self._spec({}, True), "leaseTransitions": 0},
        }

    async def release(self) -> None:
        """On a clean shutdown: hand over at once instead of after ``duration``."""
        if not self._leading:
            return
        self._set(False)
        try:
            lease = await self.kube.get("Lease", self.s.namespace, self.s.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.s.identity:
                return
            ops = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": lease["metadata"]["resourceVersion"],
                },
                {"op": "replace", "path": "/spec/holderIdentity", "value": ""},
                {"op": "replace", "path": "/spec/leaseDurationSeconds", "value": 1},
            ]
            await self.kube.json_patch("Lease", self.s.namespace, self.s.name, ops)
        except KubeError as e:
            log.info("lease not released: %s", e)
