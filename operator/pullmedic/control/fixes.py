"""What applying a plan is to its group's fix (``Role``), what its writes did
(``Writes``), and the rules that move a fix from one role to the next: the states
``Remediator._apply`` takes a fix through, each transition written once.

A group has one fix at a time. A decision's writes are either a remediation of its own, or
finish one an earlier process began (its journal entry in the policy status), or repeat
an applied fix for late siblings (``Fix.choose_role``); what the writes answer can change
that (``Fix.settle``), and the role says how the fix is accounted (``Fix.account``),
recorded and announced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from pullmedic.core.accounting import PolicyStats, outcome, summary
from pullmedic.core.actions import ActionType, Failure, ObjectRef, Plan, Result
from pullmedic.core.decision import fingerprint, is_follow_up, is_late_sibling, is_raced_sibling
from pullmedic.core.grouping import Group, PodState
from pullmedic.core.policystatus import since
from pullmedic.core.records import RECORD, RemediationRecord, same_time
from pullmedic.kube.actuator import RECORD_CARRIERS

log = logging.getLogger("pullmedic")


class Role(Enum):
    NEW = "new"  # a remediation of its own: counted, recorded and announced once
    CONTINUATION = "continuation"  # finishes a fix an earlier process began and entered
    # A continuation with nothing left to write: the process that began it did it all (its
    # record is on the workload) but died before counting it. Counted and announced now.
    FINISHED = "finished"
    FOLLOW_UP = "follow-up"  # repeats an applied fix for late siblings: its writes only
    # The write carrying the record lost its answer: neither failed nor done, it is resolved
    # from the workload's record like a fix a crashed process began.
    DEFERRED = "deferred"


@dataclass
class Fix:
    """One plan being applied for a group, and what it is to the group's fix."""

    plan: Plan
    failure: Failure
    members: list[PodState]
    stats: PolicyStats | None
    group: Group
    started: float  # wall clock: its rate-limit slot and its record's time
    fingerprint: str
    role: Role = Role.NEW

    @classmethod
    def of(
        cls,
        p: Plan,
        f: Failure,
        members: list[PodState],
        stats: PolicyStats | None,
        group: Group,
        slot: float,
    ) -> Fix:
        return cls(p, f, members, stats, group, slot, fingerprint(p))

    @property
    def target(self) -> ObjectRef:
        return self.failure.workload or self.failure.pod

    def record(self) -> RemediationRecord | None:
        """The record of the last fix, as the failing pod's workload carries it."""
        return RECORD.fetch(dict(self.failure.workload_annotations))

    def recorded(self) -> bool:
        """The workload already carries the record of this fix."""
        rec = self.record()
        return rec is not None and same_time(rec.at, self.started)

    def choose_role(self, since_applied: float, window: float, wall: Callable[[], float]) -> None:
        """Follow-up, continuation or new; reserves the rate-limit slot of a fix to count
        (one an earlier process began keeps its own time, so its record and Events are
        the same ones)."""
        p, st = self.plan, self.stats
        if is_follow_up(self.fingerprint, self.group.applied, since_applied, window):
            self.role = Role.FOLLOW_UP
        elif self.fingerprint and not (st is not None and str(self.target) in st.inherited):
            # (An inherited journal entry is a fix to continue and count: below.)
            record = self.record()
            if is_late_sibling(p, record, self.members) or is_raced_sibling(
                p, record, wall(), window
            ):
                self.role = Role.FOLLOW_UP
        if st is None or self.role is Role.FOLLOW_UP:
            return
        entry = st.inherited.get(str(self.target))
        began = since(entry) if entry is not None and entry.get("cause") == str(p.cause) else None
        if began is not None:
            self.started, self.role = began, Role.CONTINUATION
        if self.started not in st.remediations:
            st.reserve(self.started)

    def settle(self, w: Writes, monotonic: Callable[[], float]) -> bool:
        """Move the role as the writes' answers say, one rule each; True when this
        decision made the group's fix (its own, or one it continued)."""
        st = self.stats
        if self.role is not Role.FOLLOW_UP and st is not None and w.record_unknown:
            st.defer(self.target, monotonic())
            log.warning(
                "outcome of the fix of %s unknown (%s): resolving it from its record",
                self.target,
                w.text,
            )
            self.role = Role.DEFERRED
            return False
        if self.role is Role.FOLLOW_UP and w.redone:
            self.role = Role.NEW
            if st is not None:
                st.reserve(self.started)
        made = self.role is not Role.FOLLOW_UP and w.made
        if self.role is not Role.CONTINUATION or st is None:
            return made
        if st.take_inherited(str(self.target)) is None:
            self.role = Role.FOLLOW_UP  # the status loop counted and announced it meanwhile
        elif w.ok and not w.wrote and self.recorded():
            self.role = Role.FINISHED
        return made

    def account(self, w: Writes, saved: float) -> None:
        """Count the fix in its policy's figures, before any further I/O: nothing after
        this may make the plan run again unrecorded. A follow-up only adds what it saved."""
        st = self.stats
        if st is None:
            return
        if self.role is Role.FOLLOW_UP:
            st.saved += saved
            st.dirty = True
            return
        finished = self.role is Role.FINISHED
        if not w.wrote and not finished:
            st.release(self.started)  # nothing written: give the slot back
        st.applied(self.plan, w.results, self.target, w.text, saved, written=finished)
        st.settle(self.target)


@dataclass(frozen=True)
class Writes:
    """The actuator's results, read once."""

    results: Sequence[Result]

    @property
    def ok(self) -> bool:
        """Every action succeeded or had nothing to do."""
        return outcome(self.results)[0]

    @property
    def wrote(self) -> bool:
        """Something was written."""
        return outcome(self.results)[1]

    @property
    def made(self) -> bool:
        """The fix is in place: written now, or found there already."""
        return self.ok and (self.wrote or all(r.outcome == "unchanged" for r in self.results))

    def applied(self, types: frozenset[ActionType]) -> bool:
        return any(r.outcome == "applied" and r.action.type in types for r in self.results)

    @property
    def redone(self) -> bool:
        """A write besides recreating pods landed: someone undid the fix (a GitOps sync, a
        human), so repeating it is a new remediation."""
        return self.applied(frozenset(ActionType) - {ActionType.RECREATE_PODS})

    @property
    def recreated(self) -> bool:
        return self.applied(frozenset({ActionType.RECREATE_PODS}))

    @property
    def carry_record(self) -> bool:
        """The record was written with the fix."""
        return self.applied(RECORD_CARRIERS)

    @property
    def record_unknown(self) -> bool:
        """The write that carries the record lost its answer, and nothing before it surely
        landed: only the workload's record can tell whether the fix was made. (When an
        earlier write surely landed, the fix is accounted as written and the unknown tail
        as a failure: its record is then written separately, as for any secret fix.)"""
        return not any(r.outcome == "applied" for r in self.results) and any(
            r.unknown and r.action.type in RECORD_CARRIERS for r in self.results
        )

    @property
    def text(self) -> str:
        return summary(self.results)
