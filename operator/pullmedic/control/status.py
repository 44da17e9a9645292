"""Policy status and gauges: what `kubectl get pullpolicies` and Prometheus show.

Counts are kept in memory (accounting) and written here, at most once per interval and
only when they changed. A write that fails stays dirty and is retried on the next tick, so
the status catches up however long the API server was away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pullmedic.control.reporting import Reporter
from pullmedic.core import backoff
from pullmedic.core import policy as pol
from pullmedic.core.accounting import PolicyStats, now_iso
from pullmedic.core.actions import ObjectRef
from pullmedic.core.diagnosis import Cause
from pullmedic.core.grouping import Groups, PodState
from pullmedic.core.inventory import Inventory
from pullmedic.core.metadata import annotations_of
from pullmedic.core.policystatus import Condition, StatusStore, since
from pullmedic.core.records import RECORD, same_time, stamp
from pullmedic.kube.client import KubeApi, KubeError
from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")


def ready_condition(policy: pol.Policy, problems: list[str]) -> Condition:
    return {
        "type": "Ready",
        "status": "False" if problems else "True",
        "reason": "InvalidSpec" if problems else "Accepted",
        "message": "; ".join(problems) if problems else f"mode {policy.mode}",
        "observedGeneration": policy.generation,
    }


class PolicyStatus:
    JOURNAL_WAIT = 2.0  # a fix waits this long at most for a status write in flight

    def __init__(
        self,
        kube: KubeApi,
        inventory: Inventory,
        groups: Groups,
        reporter: Reporter,
        clock: Callable[[], float] = time.monotonic,
        acting: Callable[[], bool] = lambda: True,
        lead: Callable[[], bool] | None = None,
        part: str = "",
    ) -> None:
        self.kube = kube
        self.inv = inventory
        self.groups = groups
        self.reporter = reporter
        self.clock = clock
        self.acting = acting  # standbys keep counts in step but never write
        # Sharded (``part`` is the shard, "<I>-of-<N>"): every shard's acting replica writes
        # its own figures and journal under status.shards[part]; the ``lead`` (shard 0's)
        # also writes the conditions and the sum at the top level.
        self.lead = lead or acting
        self.store = StatusStore(part)
        self.others_seen: dict[str, dict[str, Any]] = {}  # policy -> other shards' parts
        self.failed_writes = 0
        self.bodies: dict[str, Mapping[str, Any]] = {}
        # One writer at a time per policy, its payload taken under the lock: a merge patch
        # replaces lists whole, so a write computed before a journal entry and landing
        # after it would erase the entry (then a crash loses the fix it announced).
        self.locks: dict[str, asyncio.Lock] = {}

    def lock(self, key: str) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def payload(self, key: str, st: PolicyStats, stuck: int) -> dict[str, Any]:
        """The status patch for one policy: ours, in our shard's part when sharded."""
        seen = (self.bodies.get(key) or {}).get("status") or {}
        return self.store.store(st.status(stuck), seen, lead=self.lead())

    async def write(self, p: pol.Policy, status: Mapping[str, Any]) -> None:
        kind = "ClusterPullPolicy" if p.is_cluster else "PullPolicy"
        await self.kube.patch_status(kind, p.namespace or "", p.name, status)

    async def on_policy(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Parse, remember, and publish the Ready condition when it changed."""
        policy, problems = pol.parse(body)
        if event_type == "DELETED":
            self.inv.policies.pop(policy.key, None)
            self.inv.stats.pop(policy.key, None)
            self.bodies.pop(policy.key, None)
            self.others_seen.pop(policy.key, None)
            self.locks.pop(policy.key, None)
            return
        self.bodies[policy.key] = body
        if problems:
            self.inv.policies.pop(policy.key, None)
        else:
            self.inv.policies[policy.key] = policy
        new = policy.key not in self.inv.stats
        st = self.inv.stats.setdefault(policy.key, PolicyStats())
        status = body.get("status") or {}
        mine = self.store.fetch(status)
        if new or not self.acting():
            st.load(mine)  # continue the figures already published
            st.inherited_at = self.clock()
        st.adopt(mine["managedSecrets"])
        if self.store.part and self.lead():
            others = self.store.others(status)
            if others != self.others_seen.get(policy.key):
                self.others_seen[policy.key] = others
                st.dirty = True  # another shard's figures changed: write the sum again
        cond = ready_condition(policy, problems)
        if self.lead() and self.store.ready_changed(status, cond, policy.generation):
            cond["lastTransitionTime"] = now_iso()
            try:
                async with self.lock(policy.key):
                    await self.write(policy, self.store.ready(cond, policy.generation))
            except KubeError as e:
                # The next event for this policy (kopf re-lists on reconnect) writes it.
                log.warning("condition of %s not written: %s", policy.key, e)
            if problems:
                await self.reporter.invalid_spec(policy, "; ".join(problems))

    def pod_recovered(self, state: PodState) -> None:
        """A stuck pod runs (or is gone): its waiting time is lost back-off."""
        lost = self.clock() - state.first_seen
        metrics.SECONDS_LOST.inc(lost)
        st = self.inv.stats.get(state.policy) if state.policy else None
        if st is not None:
            st.lost += lost
            st.dirty = True

    def gauges(self) -> dict[str | None, int]:
        """Set the gauges; returns stuck pods per policy for the status."""
        stuck: dict[str | None, int] = {}
        attempts = 0
        now = self.clock()
        for state in self.groups.pods.values():  # one pass per interval, never per event
            stuck[state.policy] = stuck.get(state.policy, 0) + 1
            attempts += backoff.state(now - state.first_seen).attempts
        metrics.PULL_ATTEMPTS.set(attempts)
        by_cause = self.groups.stuck_by_cause()
        for cause in Cause:
            metrics.STUCK_PODS.labels(cause=str(cause)).set(by_cause.get(str(cause), 0))
        return stuck

    async def journal(self, key: str) -> None:
        """Write one policy's status now: a fix entered in the journal is on record before
        its first write. Best effort: when this fails, the status loop writes it."""
        p = self.inv.policies.get(key)
        st = self.inv.stats.get(key)
        if p is None or st is None or not self.acting():
            return
        lock = self.lock(key)
        try:
            async with asyncio.timeout(self.JOURNAL_WAIT):
                await lock.acquire()
        except TimeoutError:
            log.info("journal of %s not written yet: a status write is in flight", key)
            return  # best effort, as on a failed write: the status loop writes it
        try:
            await self.write(p, self.payload(key, st, self.gauges().get(key, 0)))
        except KubeError as e:
            log.info("journal of %s not written yet: %s", key, e)
        finally:
            lock.release()

    async def resolve(self, grace: float) -> None:
        """Fixes a previous process began and no decision of ours has continued within
        ``grace`` seconds: count and announce those whose record is on the workload (the
        fix landed), drop the rest (it never did; a still-stuck workload is decided anew)."""
        if not self.acting():
            return
        now = self.clock()
        for key, st in list(self.inv.stats.items()):
            p = self.inv.policies.get(key)
            if p is None or not st.inherited or now - st.inherited_at < grace:
                continue
            for workload in list(st.inherited):
                entry = st.inherited.get(workload)
                if entry is None:
                    continue
                kind, _, rest = workload.partition("/")
                ns, _, name = rest.partition("/")
                try:
                    obj = await self.kube.get(kind, ns, name)
                except KubeError:
                    continue  # next tick
                if st.take_inherited(workload) is None:
                    continue  # a decision took it meanwhile
                rec = RECORD.fetch(annotations_of(obj))
                began = since(entry)
                if rec is None or began is None or not same_time(rec.at, began):
                    continue
                cause = entry.get("cause", rec.cause)
                st.counts["remediated"] += 1
                st.note(
                    ObjectRef(
                        kind, ns, name, str(((obj or {}).get("metadata") or {}).get("uid", ""))
                    ),
                    cause,
                    rec.action,
                    "applied",
                    "finished before a restart; counted from the record on the workload",
                )
                await self.reporter.remediated(
                    ObjectRef(
                        kind, ns, name, str(((obj or {}).get("metadata") or {}).get("uid", ""))
                    ),
                    p,
                    f"Remediated {cause} for container {rec.container}: {rec.action} "
                    f"{rec.new_image or rec.secret}".rstrip(),
                    key=stamp(rec.at),
                )

    async def resume(self) -> None:
        """Just became the leader: publish what standbys only watched."""
        for body in list(self.bodies.values()):
            await self.on_policy(None, body)
        for st in self.inv.stats.values():
            st.dirty = True

    async def flush(self) -> int:
        """One tick: write every dirty policy's status. Returns how many writes failed."""
        stuck = self.gauges()
        failed = 0
        if not self.acting():
            return 0
        for key, st in list(self.inv.stats.items()):
            p = self.inv.policies.get(key)
            if p is None or not st.dirty:
                continue
            try:
                async with self.lock(key):
                    st.dirty = False  # under the lock: the payload is what is true now
                    await self.write(p, self.payload(key, st, stuck.get(key, 0)))
            except KubeError as e:
                st.dirty = True
                failed += 1
                log.warning("status of %s not written: %s", key, e)
            except BaseException:
                st.dirty = True  # cancelled or a bug: the next tick writes it
                raise
        self.failed_writes += failed
        return failed
