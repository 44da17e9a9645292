"""The roles a fix moves through (control/fixes.py): each rule of ``Fix.settle`` and
``Fix.choose_role``, and what ``Fix.account`` counts for each role."""

from __future__ import annotations

import json

from pullmedic.control.fixes import Fix, Role, Writes
from pullmedic.core.accounting import PolicyStats
from pullmedic.core.actions import Action, ActionType, Failure, ObjectRef, Plan, Result
from pullmedic.core.diagnosis import Cause
from pullmedic.core.grouping import Group, PodState
from pullmedic.core.policy import Mode
from pullmedic.core.policystatus import PendingAction
from pullmedic.core.records import REMEDIATION_ANNOTATION, stamp

DEPLOY = ObjectRef("Deployment", "ns", "web", "d")
POD = ObjectRef("Pod", "ns", "web-1", "p1")
AT = 1795946400.25
PATCH = Action(
    ActionType.PATCH_WORKLOAD_IMAGE, DEPLOY, "patch", old_image="r/x:9", new_image="r/x:1"
)
RECREATE = Action(ActionType.RECREATE_PODS, DEPLOY, "recreate", pods=(POD,))


def _fix(role: Role, *, recorded_at: float | None = None) -> Fix:
    annotations: tuple[tuple[str, str], ...] = ()
    if recorded_at is not None:
        rec = {"time": stamp(recorded_at), "cause": "TagNotFound", "action": "PatchWorkloadImage"}
        annotations = ((REMEDIATION_ANNOTATION, json.dumps(rec)),)
    f = Failure(
        pod=POD,
        container="app",
        container_kind="containers",
        container_index=0,
        image="r/x:9",
        reason="ErrImagePull",
        service_account="default",
        workload=DEPLOY,
        workload_annotations=annotations,
    )
    p = Plan(f, Cause.TagNotFound, "ns/p", Mode.REMEDIATE, (PATCH, RECREATE), True)
    members = [PodState(POD, {}, [], 0.0, AT - 60)]
    group = Group(("ns", "app", "r/x:9"), 0.0)
    fix = Fix.of(p, f, members, PolicyStats(), group, AT)
    fix.role = role
    return fix


def _writes(*outcomes: str, unknown: bool = False) -> Writes:
    return Writes(
        [
            Result(a, o, unknown=unknown and a is PATCH)
            for a, o in zip((PATCH, RECREATE), outcomes, strict=False)
        ]
    )


def _inherit(fix: Fix) -> None:
    assert fix.stats is not None
    entry: PendingAction = {"workload": str(DEPLOY), "cause": "TagNotFound", "since": stamp(AT)}
    fix.stats.inherited[str(DEPLOY)] = entry


def test_a_new_fix_that_writes_is_made_and_counted() -> None:
    fix = _fix(Role.NEW)
    assert fix.settle(_writes("applied", "applied"), lambda: 0.0) is True
    assert fix.role is Role.NEW
    fix.account(_writes("applied", "applied"), 0.0)
    assert fix.stats is not None and fix.stats.counts["remediated"] == 1


def test_a_lost_answer_defers_the_fix_to_its_record() -> None:
    fix = _fix(Role.NEW)
    assert fix.settle(_writes("failed", unknown=True), lambda: 5.0) is False
    assert fix.role is Role.DEFERRED
    # A follow-up has nothing to resolve: its fix was counted already.
    follow = _fix(Role.FOLLOW_UP)
    follow.settle(_writes("failed", unknown=True), lambda: 5.0)
    assert follow.role is Role.FOLLOW_UP


def test_a_follow_up_whose_fix_was_undone_is_a_new_remediation() -> None:
    fix = _fix(Role.FOLLOW_UP)
    assert fix.settle(_writes("applied", "applied"), lambda: 0.0) is True
    assert fix.role is Role.NEW
    assert fix.stats is not None and list(fix.stats.remediations) == [AT]  # its own slot
    plain = _fix(Role.FOLLOW_UP)  # only recreating late siblings: still a follow-up
    assert plain.settle(_writes("unchanged", "applied"), lambda: 0.0) is False
    assert plain.role is Role.FOLLOW_UP
    plain.account(_writes("unchanged", "applied"), 12.0)
    assert plain.stats is not None and plain.stats.counts["remediated"] == 0
    assert plain.stats.saved == 12.0


def test_a_continuation_counted_meanwhile_becomes_a_follow_up() -> None:
    fix = _fix(Role.CONTINUATION)  # nothing inherited any more: the status loop took it
    assert fix.settle(_writes("applied", "applied"), lambda: 0.0) is True
    assert fix.role is Role.FOLLOW_UP


def test_a_continuation_with_nothing_left_and_its_record_there_is_finished() -> None:
    fix = _fix(Role.CONTINUATION, recorded_at=AT)
    _inherit(fix)
    assert fix.settle(_writes("unchanged", "unchanged"), lambda: 0.0) is True
    assert fix.role is Role.FINISHED
    fix.account(_writes("unchanged", "unchanged"), 0.0)
    assert fix.stats is not None and fix.stats.counts["remediated"] == 1
    unrecorded = _fix(Role.CONTINUATION)
    _inherit(unrecorded)
    unrecorded.settle(_writes("unchanged", "unchanged"), lambda: 0.0)
    assert unrecorded.role is Role.CONTINUATION


def test_an_inherited_entry_is_continued_under_its_own_time() -> None:
    fix = _fix(Role.NEW)
    fix.started = AT + 30
    _inherit(fix)
    fix.choose_role(1e9, 60.0, lambda: AT + 30)
    assert (fix.role, fix.started) == (Role.CONTINUATION, AT)
    assert fix.stats is not None and list(fix.stats.remediations) == [AT]


def test_repeating_the_applied_fix_within_the_window_is_a_follow_up() -> None:
    fix = _fix(Role.NEW)
    fix.group.applied = fix.fingerprint
    fix.choose_role(10.0, 60.0, lambda: AT)
    assert fix.role is Role.FOLLOW_UP
    assert fix.stats is not None and not fix.stats.remediations  # no slot of its own
