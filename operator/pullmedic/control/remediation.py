"""Deciding one group, start to end: gather what the kubelet would use, diagnose, plan,
apply (or suggest), then account and report.

The steps live elsewhere (lookups, prober, planning, actuator, accounting, reporting); this
module only orders them and keeps the invariants between them: the first report is never
lost to a postponement, a rate-limit slot is reserved with no await since its check, and
the result is accounted before any further I/O, so nothing can make a plan run again
unrecorded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pullmedic.control.diagnoser import (
    Diagnoser,
    as_the_node_sees_it,
    verified_alternative,
    verified_mirror,
)
from pullmedic.control.fixes import Fix, Role, Writes
from pullmedic.control.reporting import Reporter, remediated_message, suggestion_message
from pullmedic.control.scheduler import Postpone
from pullmedic.core import backoff
from pullmedic.core import policy as pol
from pullmedic.core.accounting import PolicyStats
from pullmedic.core.actions import Failure, ObjectRef, Plan
from pullmedic.core.circuit import MARK, CircuitBreaker
from pullmedic.core.decision import (
    failure_of,
    main_action,
)
from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, MIRROR_CAUSES, Cause, Diagnosis
from pullmedic.core.grouping import Group, Groups, PodState
from pullmedic.core.inventory import Inventory
from pullmedic.core.keyring import NodeRegistries
from pullmedic.core.kinds import ANNOTATABLE
from pullmedic.core.nodeview import held_by_node
from pullmedic.core.planning import MOVE_CAUSES, plan
from pullmedic.core.records import RemediationRecord, stamp
from pullmedic.core.selection import choose
from pullmedic.core.tokenmode import PodIdentity
from pullmedic.kube.actuator import Actuator
from pullmedic.kube.client import KubeApi, KubeError
from pullmedic.kube.events import Outbox
from pullmedic.kube.lookups import Lookups
from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")


@dataclass(frozen=True)
class Clocks:
    """Monotonic time for intervals, wall time for records other processes read."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


class Remediator:
    def __init__(
        self,
        *,
        kube: KubeApi,
        prober: Diagnoser,
        groups: Groups,
        inventory: Inventory,
        circuit: CircuitBreaker,
        operator_namespace: str | None,
        follow_up_window: float,
        default_platform: str = "linux/amd64",
        dry_run: bool = False,
        clocks: Clocks | None = None,
        node_registries: NodeRegistries | None = None,
        acting: Callable[[], bool] = lambda: True,
        journal: Callable[[str], Awaitable[None]] | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.acting = acting
        self.journal = journal
        self.kube = kube
        self.prober = prober
        self.groups = groups
        self.inv = inventory
        self.circuit = circuit
        self.operator_namespace = operator_namespace
        self.window = follow_up_window
        self.dry_run = dry_run
        self.clocks = clocks or Clocks()
        self.node_registries = node_registries or NodeRegistries()
        self.lookups = Lookups(kube, default_platform)
        self.actuator = Actuator(kube, dry_run=dry_run)
        self.reporter = Reporter(kube, outbox)

    async def decide(self, group: Group) -> None:
        members = self.groups.members(group)
        group.members_taken = True  # a pod joining from now on is not in this decision
        if not members:
            return
        rep = members[0]
        _, container_name, _image = group.key
        sc = next((c for c in rep.containers if c.name == container_name), None)
        if sc is None:
            return
        pod = rep.body
        ns = rep.ref.namespace
        if ns not in self.inv.namespaces:
            # Unknown labels would match NotIn/DoesNotExist selectors: never guess.
            raise Postpone(f"labels of namespace {ns} not known yet")
        if ns in self.inv.terminating:
            return  # the namespace is being deleted: nothing there is worth a diagnosis
        workload, job, wobj = await self.lookups.owner_chain(pod)
        failure = failure_of(rep, sc, members, workload, job, wobj)
        policy = choose(
            self.inv,
            namespace=ns,
            pod_labels=pod["metadata"].get("labels") or {},
            image=sc.image,
            operator_namespace=self.operator_namespace,
        )
        for m in members:
            m.policy = policy.key if policy else None

        keyring, candidates, problems = await self.lookups.keyrings(pod, policy)
        # Whose pull it is: a credential provider in ServiceAccount token mode (KEP-4412)
        # gets this pod's ServiceAccount token from the kubelet, and so from pullmedic.
        identity = PodIdentity.of_pod(pod)
        node = await self.lookups.node(pod["spec"].get("nodeName"))
        platform = node.platform
        t0 = self.clocks.monotonic()
        known = group.known_diagnosis(members, t0, self.window)
        if known is not None:
            diagnosis = known  # late siblings of the fix just made: no second probe
        else:
            diagnosis = await self.prober.diagnose(
                sc.image,
                keyring,
                platform,
                suggest=policy is not None and policy.mode is not pol.Mode.OBSERVE,
                candidate_keyrings=candidates or None,
                tag_policy=policy.tags if policy else None,
                secret_problems=problems,
                # The kubelet just failed this pull: a cached "pullable" is stale by
                # definition.
                distrust_available=True,
                pod=identity,
            )
            metrics.PROBE_SECONDS.observe(self.clocks.monotonic() - t0)
            diagnosis = as_the_node_sees_it(
                diagnosis, sc.image, sc.message, self.node_registries, policy
            )
        if diagnosis.cause in CREDENTIAL_CAUSES and node.name and not node.holds(sc.image):
            node = await self.lookups.node(node.name, fresh=True)  # pulled since we looked?
        if node.holds(sc.image):
            diagnosis = held_by_node(diagnosis, node.name)

        mirror_image = None
        if policy and diagnosis.cause in MIRROR_CAUSES:
            mirror_image = await verified_mirror(
                self.prober, sc.image, policy, keyring, platform, identity
            )
        alternative = None
        if policy and policy.alternatives and diagnosis.cause in MOVE_CAUSES:
            alternative = await verified_alternative(
                self.prober, sc.image, policy, keyring, platform, identity
            )

        if policy is not None:
            # The policy may have changed or gone while we probed (a kill switch to Observe).
            current = self.inv.policies.get(policy.key)
            if current is None or current.generation != policy.generation:
                raise Postpone(f"{policy.key} changed while diagnosing")
            policy = current
        await self._conclude(
            group, members, rep, failure, diagnosis, policy, wobj, mirror_image, alternative
        )

    async def _conclude(
        self,
        group: Group,
        members: list[PodState],
        rep: PodState,
        failure: Failure,
        diagnosis: Diagnosis,
        policy: pol.Policy | None,
        wobj: dict[str, Any] | None,
        mirror_image: str | None,
        alternative: tuple[str, str] | None = None,
    ) -> None:
        """From here on no Postpone: every branch is accounted."""
        if not self.acting():
            return  # leadership ended while probing: the new leader decides this group
        now = self.clocks.monotonic()
        first = group.cause == ""  # only now: a Postpone above must not lose the first report
        group.quiet = 0 if group.cause != str(diagnosis.cause) else group.quiet + 1
        group.cause = str(diagnosis.cause)
        if first:
            metrics.DETECTIONS.labels(cause=str(diagnosis.cause)).inc()
        remediating = policy is not None and policy.mode is pol.Mode.REMEDIATE
        target = failure.workload or rep.ref
        circuit = remediating and self.circuit.is_open(
            wobj, target, failure, diagnosis.cause, members, self.clocks.wall()
        )
        stats = self.inv.stats_of(policy)
        slot = self.clocks.wall()
        rate_limited = (
            stats is not None
            and policy is not None
            and stats.rate_limited(policy.remediations_per_hour, slot)
        )
        p = plan(
            failure,
            diagnosis,
            policy,
            mirror_image=mirror_image,
            alternative=alternative,
            circuit_open=circuit,
            rate_limited=rate_limited,
        )
        fix = Fix.of(p, failure, members, stats, group, slot)
        if p.apply:
            # No await since the rate-limit check: the slot is reserved in time.
            fix.choose_role(now - group.applied_at, self.window, self.clocks.wall)
        log.info(
            "plan %s", p.render(), extra={"cause": str(diagnosis.cause), "workload": str(target)}
        )
        if stats is not None:
            if first:
                stats.detected()
            stats.account_backoff(members, now)
        if first:
            await self.reporter.diagnosed(failure, diagnosis, p, now - rep.first_seen)

        if circuit:
            await self._open_circuit(failure, target, wobj, diagnosis.cause, stats, group)
            return
        if p.apply:
            if await self._apply(fix):
                group.fix_diagnosis, group.fixed_wall = diagnosis, fix.started
        elif policy is not None and policy.mode is not pol.Mode.OBSERVE and p.actions:
            await self._suggest(p, failure, stats, group)
        metrics.PLANS.labels(
            mode=str(p.mode),
            decision=(
                "applied"
                if p.apply
                else "suggested"
                if p.actions and policy and policy.mode is not pol.Mode.OBSERVE
                else "observed"
            ),
        ).inc()

    async def _apply(self, fix: Fix) -> bool:
        """Write the fix, then account, record and announce it as its role says. True when
        this decision made the group's fix (a follow-up only repeats its writes)."""
        if fix.role is Role.NEW and fix.stats is not None and fix.plan.policy:
            fix.stats.intend(fix.target, str(fix.plan.cause), stamp(fix.started))
            if self.journal is not None:
                await self.journal(fix.plan.policy)  # on record before the first write
        writes = Writes(await self.actuator.apply(fix.plan, started=fix.started))
        made = fix.settle(writes, self.clocks.monotonic)
        if fix.role is Role.DEFERRED:
            return False
        now = self.clocks.monotonic()
        if writes.wrote:
            fix.group.quiet = 0
        if made:
            # The window counts from the fix, not from its follow-ups; a follow-up's own
            # fingerprint (a raced pod's recreation) must not replace the fix's.
            fix.group.applied_at, fix.group.applied = now, fix.fingerprint
        saved = self._observe(fix, writes, now)
        fix.account(writes, saved)
        if fix.role is not Role.FOLLOW_UP:
            await self._publish(fix, writes, saved)
        return made

    def _observe(self, fix: Fix, w: Writes, now: float) -> float:
        """Remember a fix written for the circuit breaker, and report the writes' metrics;
        returns the back-off seconds recreating pods saved."""
        f, p = fix.failure, fix.plan
        if w.wrote and fix.role is not Role.FOLLOW_UP:
            main = main_action(p)
            self.circuit.remember(
                fix.target,
                f.container,
                RemediationRecord(
                    fix.started,
                    str(p.cause),
                    f.container,
                    str(main.type),
                    main.new_image,
                    main.secret,
                    frozenset(m.ref.uid for m in fix.members),
                    max(m.created for m in fix.members),
                ),
            )
        for r in w.results:
            metrics.ACTIONS.labels(action=str(r.action.type), outcome=r.outcome).inc()
        if fix.role is not Role.FOLLOW_UP:
            metrics.TIME_TO_ACTION.observe(now - fix.group.first_seen)
        if not w.recreated:
            return 0.0
        saved = sum(backoff.saved_by_recreation(now - m.first_seen) for m in fix.members)
        metrics.SECONDS_SAVED.inc(saved)
        return saved

    async def _publish(self, fix: Fix, w: Writes, saved: float) -> None:
        """The record (image patches carry theirs; secret fixes and recreations get one
        too), then the Event: remediated, or failed."""
        f, p = fix.failure, fix.plan
        if (
            f.workload is not None
            and w.wrote
            and f.workload.kind in ANNOTATABLE
            and not w.carry_record
            and not (fix.role is Role.CONTINUATION and fix.recorded())
        ):
            with contextlib.suppress(KubeError):
                await self.actuator.record(p, main_action(p), f.workload, started=fix.started)
        if w.wrote or fix.role is Role.FINISHED:
            policy = self.inv.policies.get(p.policy) if p.policy else None
            await self.reporter.remediated(
                fix.target,
                policy,
                remediated_message(p, f, w.text, saved),
                key=stamp(fix.started),
            )
        elif not w.ok and fix.group.fresh(f"failed:{p.cause}:{w.text}"):
            await self.reporter.failed(fix.target, p.cause, w.text)

    async def _suggest(self, p: Plan, f: Failure, stats: PolicyStats | None, group: Group) -> None:
        target = f.workload or f.pod
        if not group.fresh("suggest:" + "|".join(p.suggestions) + p.note):
            return
        msg = suggestion_message(p, f)
        if stats is not None:
            stats.suggested(target, str(p.cause), msg)
        await self.reporter.suggested(target, msg)

    async def _open_circuit(
        self,
        f: Failure,
        target: ObjectRef,
        wobj: Mapping[str, Any] | None,
        cause: Cause,
        stats: PolicyStats | None,
        group: Group,
    ) -> None:
        already = self.circuit.already_open(wobj, target, f.container)
        write_mark = self.circuit.trip(target, f.container)
        if already or not group.fresh(f"circuit:{cause}"):
            return
        if stats is not None:
            stats.circuit_opened(target, str(cause))
        metrics.CIRCUITS_OPENED.labels(
            namespace=target.namespace, kind=target.kind, name=target.name, cause=str(cause)
        ).inc()
        if write_mark and wobj:
            with contextlib.suppress(KubeError):
                await self.kube.json_patch(
                    target.kind,
                    target.namespace,
                    target.name,
                    MARK.store(wobj),
                    dry_run=self.dry_run,
                )
        await self.reporter.ineffective(target, f, cause)
