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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pullmedic.control.reporting import Reporter, remediated_message, suggestion_message
from pullmedic.control.scheduler import Postpone
from pullmedic.core import backoff, reference
from pullmedic.core import policy as pol
from pullmedic.core.accounting import PolicyStats, outcome, summary
from pullmedic.core.circuit import MARK, CircuitBreaker
from pullmedic.core.decision import (
    alternative_candidate,
    failure_of,
    fingerprint,
    is_follow_up,
    is_late_sibling,
    is_raced_sibling,
    main_action,
    mirror_candidate,
)
from pullmedic.core.detection import parse_time
from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, Cause, Diagnosis, held_by_node, node_view
from pullmedic.core.grouping import Group, Groups, PodState
from pullmedic.core.inventory import Inventory
from pullmedic.core.keyring import Keyring, NodeRegistries, SecretProblem
from pullmedic.core.kinds import ANNOTATABLE
from pullmedic.core.planning import MOVE_CAUSES, ActionType, Failure, ObjectRef, Plan, Result, plan
from pullmedic.core.platforms import Platform
from pullmedic.core.records import RECORD, RemediationRecord, same_time, stamp
from pullmedic.kube.actuator import Actuator
from pullmedic.kube.client import KubeApi, KubeError
from pullmedic.kube.events import Outbox
from pullmedic.kube.lookups import Lookups
from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")

# Causes a copy of the same image elsewhere fixes (verified whole there first).
MIRROR_CAUSES = frozenset({Cause.RegistryUnreachable, Cause.RateLimited, Cause.ImageIncomplete})


class Diagnoser(Protocol):
    async def diagnose(
        self,
        image: str,
        keyring: Keyring,
        platform: Platform,
        *,
        suggest: bool = True,
        candidate_keyrings: Mapping[str, Keyring] | None = None,
        tag_policy: pol.TagCorrection | None = None,
        secret_problems: Sequence[SecretProblem] = (),
        distrust_available: bool = False,
    ) -> Diagnosis: ...


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
        policy = self._choose(pod, ns, sc.image)
        for m in members:
            m.policy = policy.key if policy else None

        keyring, candidates, problems = await self.lookups.keyrings(pod, policy)
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
            )
            metrics.PROBE_SECONDS.observe(self.clocks.monotonic() - t0)
            diagnosis = self._as_the_node_sees_it(diagnosis, sc.image, sc.message, policy)
        if diagnosis.cause in CREDENTIAL_CAUSES and node.name and not node.holds(sc.image):
            node = await self.lookups.node(node.name, fresh=True)  # pulled since we looked?
        if node.holds(sc.image):
            diagnosis = held_by_node(diagnosis, node.name)

        mirror_image = None
        if policy and diagnosis.cause in MIRROR_CAUSES:
            mirror_image = await self._verified_mirror(sc.image, policy, keyring, platform)
        alternative = None
        if policy and policy.alternatives and diagnosis.cause in MOVE_CAUSES:
            alternative = await self._verified_alternative(sc.image, policy, keyring, platform)

        if policy is not None:
            # The policy may have changed or gone while we probed (a kill switch to Observe).
            current = self.inv.policies.get(policy.key)
            if current is None or current.generation != policy.generation:
                raise Postpone(f"{policy.key} changed while diagnosing")
            policy = current
        await self._conclude(
            group, members, rep, failure, diagnosis, policy, wobj, mirror_image, alternative
        )

    def _as_the_node_sees_it(
        self, d: Diagnosis, image: str, kubelet_message: str, policy: pol.Policy | None
    ) -> Diagnosis:
        if d.cause not in CREDENTIAL_CAUSES:
            return d
        try:
            ref = reference.parse(image)
        except reference.InvalidReference:
            return d
        nodes = self.node_registries
        if policy is not None and policy.node_registries:
            nodes = nodes | NodeRegistries.parse(policy.node_registries)[0]
        return node_view(d, kubelet_message, ref.registry_host) if nodes.provide(ref) else d

    def _choose(self, pod: Mapping[str, Any], ns: str, image: str) -> pol.Policy | None:
        try:
            ref = reference.parse(image)
            canonical, familiar = str(ref), ref.familiar()
        except reference.InvalidReference:
            canonical = familiar = image
        return pol.choose(
            list(self.inv.policies.values()),
            namespace=ns,
            namespace_labels=self.inv.namespaces.get(ns, {}),
            pod_labels=(pod["metadata"].get("labels") or {}),
            image=canonical,
            familiar_image=familiar,
            operator_namespace=self.operator_namespace,
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
        fp = fingerprint(p)
        follow_up = is_follow_up(fp, group.applied, now - group.applied_at, self.window)
        inherited = stats is not None and str(target) in stats.inherited
        if not follow_up and p.apply and fp and not inherited:
            # (An inherited journal entry is a fix to continue and count: below.)
            record = _record_on(failure)
            follow_up = is_late_sibling(p, record, members) or is_raced_sibling(
                p, record, self.clocks.wall(), self.window
            )
        continuation = False
        if p.apply and stats is not None and not follow_up:
            # A fix a previous process began (its journal entry is in the status): finish
            # it under its own time, so its record and Events are the same ones.
            entry = stats.inherited.get(str(target))
            if entry is not None and entry.get("cause") == str(p.cause):
                try:
                    since = parse_time(entry.get("since"))
                except ValueError:
                    since = None
                if since is not None:
                    slot, continuation = since, True
        if p.apply and stats is not None and not follow_up and slot not in stats.remediations:
            stats.reserve(slot)  # with no await since the check (a deferred fix holds its own)
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
            applied_at = group.applied_at
            await self._apply(p, failure, members, stats, group, slot, follow_up, fp, continuation)
            if group.applied_at != applied_at:  # this decision made the group's fix
                group.fix_diagnosis, group.fixed_wall = diagnosis, slot
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

    async def _apply(
        self,
        p: Plan,
        f: Failure,
        members: list[PodState],
        stats: PolicyStats | None,
        group: Group,
        started: float,
        follow_up: bool,
        fp: str,
        continuation: bool = False,
    ) -> None:
        """A follow-up repeats an applied plan for late siblings: its writes (recreating
        those pods) happen, but it is not a new remediation to count, record or announce.
        A continuation finishes a fix an earlier process began: counted and announced once
        (unless the status loop already did), never recorded twice."""
        target = f.workload or f.pod
        if not follow_up and not continuation and stats is not None and p.policy:
            stats.intend(target, str(p.cause), stamp(started))
            if self.journal is not None:
                await self.journal(p.policy)  # on record before the first write
        results = await self.actuator.apply(p, started=started)
        if not follow_up and stats is not None and _record_outcome_unknown(results):
            # A write's answer was lost (the connection reset or timed out): it may have
            # landed. Neither failed nor done: the status loop resolves it from the record
            # on the workload, as after a crash: counted and announced once if it is there.
            stats.defer(target, self.clocks.monotonic())
            log.warning(
                "outcome of the fix of %s unknown (%s): resolving it from its record",
                target,
                summary(results),
            )
            return
        # Account first: nothing after this point may make the plan run again unrecorded.
        ok, wrote = outcome(results)
        if follow_up and any(
            r.outcome == "applied" and r.action.type is not ActionType.RECREATE_PODS
            for r in results
        ):
            # Someone undid the fix (a GitOps sync, a human): this is a new remediation.
            follow_up = False
            if stats is not None:
                stats.reserve(started)
        now = self.clocks.monotonic()
        if wrote:
            group.quiet = 0
        if ok and (wrote or all(r.outcome == "unchanged" for r in results)) and not follow_up:
            # The window counts from the fix, not from its follow-ups; a follow-up's own
            # fingerprint (a raced pod's recreation) must not replace the fix's.
            group.applied_at = now
            group.applied = fp
        if continuation and stats is not None and stats.take_inherited(str(target)) is None:
            follow_up = True  # the status loop counted and announced it meanwhile
        # A continuation with nothing left to write: the process that began it did it all
        # (its record is on the workload) but died before counting it. Count it now.
        finished_before = (
            continuation and not follow_up and ok and not wrote and _recorded(f, started)
        )
        main = main_action(p)
        if wrote and not follow_up:
            self.circuit.remember(
                target,
                f.container,
                RemediationRecord(
                    started,
                    str(p.cause),
                    f.container,
                    str(main.type),
                    main.new_image,
                    main.secret,
                    frozenset(m.ref.uid for m in members),
                    max(m.created for m in members),
                ),
            )
        for r in results:
            metrics.ACTIONS.labels(action=str(r.action.type), outcome=r.outcome).inc()
        if not follow_up:
            metrics.TIME_TO_ACTION.observe(now - group.first_seen)
        saved = 0.0
        if any(
            r.action.type is ActionType.RECREATE_PODS and r.outcome == "applied" for r in results
        ):
            saved = sum(backoff.saved_by_recreation(now - m.first_seen) for m in members)
            metrics.SECONDS_SAVED.inc(saved)
        text = summary(results)
        if stats is not None and follow_up:
            stats.saved += saved
            stats.dirty = True
        elif stats is not None:
            if not wrote and not finished_before:
                stats.release(started)  # nothing written: give the slot back
            stats.applied(p, results, target, text, saved, written=finished_before)
            stats.settle(target)
        if follow_up:
            return
        if (
            f.workload is not None
            and wrote
            and f.workload.kind in ANNOTATABLE
            and not _carries_record(results)
            and not (continuation and _recorded(f, started))
        ):
            # Image patches carry their record; secret fixes and recreations get one too.
            with contextlib.suppress(KubeError):
                await self.actuator.record(p, main, f.workload, started=started)
        if wrote or finished_before:
            policy = self.inv.policies.get(p.policy) if p.policy else None
            await self.reporter.remediated(
                target, policy, remediated_message(p, f, text, saved), key=stamp(started)
            )
        elif not ok and group.fresh(f"failed:{p.cause}:{text}"):
            await self.reporter.failed(target, p.cause, text)

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

    async def _verified_alternative(
        self, image: str, policy: pol.Policy, keyring: Keyring, platform: Platform
    ) -> tuple[str, str] | None:
        """The same tag (or digest) under a moved repository's new name, found whole for
        the node's platform there; and the move, for the Event and the record."""
        candidate = alternative_candidate(image, policy)
        if candidate is None:
            return None
        new, move = candidate
        d = await self.prober.diagnose(new, keyring, platform, suggest=False)
        return (new, move) if d.cause is Cause.ImageAvailable else None

    async def _verified_mirror(
        self, image: str, policy: pol.Policy, keyring: Keyring, platform: Platform
    ) -> str | None:
        candidate = mirror_candidate(image, policy)
        if candidate is None:
            return None
        d = await self.prober.diagnose(candidate, keyring, platform, suggest=False)
        return candidate if d.cause is Cause.ImageAvailable else None


def _record_on(f: Failure) -> RemediationRecord | None:
    """The record of the last fix, as the failing pod's workload carries it."""
    return RECORD.fetch(dict(f.workload_annotations))


def _recorded(f: Failure, at: float) -> bool:
    """The workload already carries the record of the fix made at ``at``."""
    rec = _record_on(f)
    return rec is not None and same_time(rec.at, at)


def _record_outcome_unknown(results: Sequence[Result]) -> bool:
    """The write that carries the fix's record lost its answer, and nothing before it
    surely landed: only the workload's record can tell whether the fix was made. (When an
    earlier write surely landed, the fix is accounted as written and the unknown tail as a
    failure: its record is then written separately, as for any secret fix.)"""
    return not any(r.outcome == "applied" for r in results) and any(
        r.unknown
        and r.action.type in (ActionType.PATCH_WORKLOAD_IMAGE, ActionType.ADD_TEMPLATE_PULL_SECRET)
        for r in results
    )


def _carries_record(results: Sequence[Result]) -> bool:
    return any(
        r.action.type in (ActionType.PATCH_WORKLOAD_IMAGE, ActionType.ADD_TEMPLATE_PULL_SECRET)
        and r.outcome == "applied"
        for r in results
    )
