"""The circuit breaker: stop when pullmedic's own fix fails again with the same cause.

Pure: the workload's annotations and this process's memory in, a verdict out. Owners the
ClusterRole may annotate carry the state in annotations (surviving restarts; deleting the
annotation re-arms); the rest are guarded in memory, keyed by uid. This module owns that
annotation's format (``MARK``: fetch / store / purge, as for the remediation record).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pullmedic.core.actions import ActionType, Failure, ObjectRef
from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, Cause
from pullmedic.core.grouping import PodState
from pullmedic.core.kinds import ANNOTATABLE
from pullmedic.core.metadata import annotation_ops, annotations_of, remove_ops
from pullmedic.core.records import RECORD, RemediationRecord

CIRCUIT_ANNOTATION = "pullmedic.dev/circuit"
CIRCUIT_OPEN = "open"

CircuitKey = tuple[str, str]


class CircuitMark:
    """The mark on a workload whose circuit is open: ``pullmedic.dev/circuit: open``. Any
    other value, or none, is a closed circuit (deleting the annotation re-arms)."""

    key = CIRCUIT_ANNOTATION

    def fetch(self, annotations: Mapping[str, Any]) -> bool:
        return annotations.get(self.key) == CIRCUIT_OPEN

    def store(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        """JSON patch ops marking ``obj`` open."""
        return annotation_ops(obj, {self.key: CIRCUIT_OPEN})

    def purge(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        return remove_ops(obj, "annotations", self.key)


MARK = CircuitMark()


def circuit_key(target: ObjectRef, container: str) -> CircuitKey:
    # By uid: a recreated workload of the same name starts clean.
    return (f"{target}#{target.uid}", container)


class CircuitBreaker:
    def __init__(self, window: float) -> None:
        self.window = window
        self.records: dict[tuple[str, str], RemediationRecord] = {}
        self.open_in_memory: set[CircuitKey] = set()

    def remember(self, target: ObjectRef, container: str, record: RemediationRecord) -> None:
        self.records[(str(target), container)] = record

    def forget_before(self, oldest: float) -> None:
        for k in [k for k, r in self.records.items() if r.at < oldest]:
            del self.records[k]

    def already_open(
        self, wobj: Mapping[str, Any] | None, target: ObjectRef, container: str
    ) -> bool:
        """The circuit is open: marked on the workload, or in memory where no mark can be."""
        if target.kind in ANNOTATABLE:
            return MARK.fetch(annotations_of(wobj))  # removing the annotation re-arms
        return circuit_key(target, container) in self.open_in_memory

    def trip(self, target: ObjectRef, container: str) -> bool:
        """Mark open; True when the mark must be written on the workload."""
        if target.kind not in ANNOTATABLE:
            self.open_in_memory.add(circuit_key(target, container))
            return False
        return True

    def is_open(
        self,
        wobj: Mapping[str, Any] | None,
        target: ObjectRef,
        f: Failure,
        cause: Cause,
        members: Iterable[PodState],
        now: float,
    ) -> bool:
        """Open when a pod that already carries our fix fails again with the same cause."""
        if self.already_open(wobj, target, f.container):
            return True
        rec = self.records.get((str(target), f.container))
        from_ann = RECORD.fetch(annotations_of(wobj))
        if (
            from_ann is not None
            and from_ann.container == f.container
            and (rec is None or from_ann.at > rec.at + 1)
        ):
            rec = from_ann  # survives restarts
        if rec is None or now - rec.at > self.window:
            return False
        same = rec.cause == str(cause) or (
            rec.cause in CREDENTIAL_CAUSES and cause in CREDENTIAL_CAUSES
        )
        if not same:
            return False
        if rec.action in (ActionType.PATCH_WORKLOAD_IMAGE, ActionType.PATCH_POD_IMAGE):
            return f.image == rec.new_image  # the image we chose fails itself
        if rec.secret:
            return rec.secret in f.pod_pull_secrets  # the pod got our secret, still fails
        # Recreated pods: a member that was not among the pods we deleted and is newer than
        # them. After a restart only the record's time is known: allow for clock skew.
        if rec.old_created is not None:
            return any(
                m.ref.uid not in rec.old_pods and m.created >= rec.old_created for m in members
            )
        return any(m.created >= rec.at + 5 for m in members)
