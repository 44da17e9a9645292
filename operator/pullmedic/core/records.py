"""The one owner of the remediation record: the ``pullmedic.dev/last-remediation``
annotation (JSON) on a workload, everything a human needs to revert a fix and what the
circuit breaker and a restarted operator read back. ``RECORD`` is its storage, in the
style of kopf's progress storage: ``fetch`` reads a typed record, ``store`` and ``purge``
return the JSON patch ops, which the kube edge applies. Nothing else parses the JSON."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pullmedic.core.actions import Action, Plan
from pullmedic.core.detection import parse_time
from pullmedic.core.metadata import annotation_ops, remove_ops

REMEDIATION_ANNOTATION = "pullmedic.dev/last-remediation"


@dataclass(frozen=True)
class RemediationRecord:
    """What was done to a workload, for the circuit breaker (annotation or memory)."""

    at: float
    cause: str
    container: str
    action: str
    new_image: str
    secret: str
    # Known only in memory: the pods that were stuck when the fix was made, and the newest
    # of their creation times (apiserver clock), so "created after the fix" needs no
    # agreement between our clock and the apiserver's.
    old_pods: frozenset[str] = frozenset()
    old_created: float | None = None
    # Written for humans, read back for `explain`: what it takes to revert the change.
    previous_image: str = ""
    policy: str | None = None

    @classmethod
    def of(cls, plan: Plan, a: Action, at: float) -> RemediationRecord:
        """The record of action ``a`` of ``plan``, made at ``at`` (epoch seconds)."""
        image = plan.failure.image
        return cls(
            at,
            str(plan.cause),
            plan.failure.container,
            str(a.type),
            a.new_image or image,
            a.secret,
            previous_image=a.old_image or image,
            policy=plan.policy,
        )

    def to_dict(self) -> dict[str, str]:
        """The record as ``explain --json`` shows it."""
        return {
            "time": stamp(self.at),
            "cause": self.cause,
            "container": self.container,
            "action": self.action,
            "previousImage": self.previous_image,
            "newImage": self.new_image,
            "secret": self.secret,
        }


class RecordAnnotation:
    """The record's storage on the workload's annotations."""

    key = REMEDIATION_ANNOTATION

    def parse(self, raw: Any) -> RemediationRecord | None:
        """The record an annotation value spells, or None (anyone who can edit the
        workload can write it: trust nothing)."""
        if not raw or not isinstance(raw, str):
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(rec, dict):
            return None
        at = rec.get("time")
        try:
            when = parse_time(at) if isinstance(at, str) else None
        except ValueError:
            when = None
        if when is None:
            return None
        return RemediationRecord(
            when,
            str(rec.get("cause", "")),
            str(rec.get("container", "")),
            str(rec.get("action", "")),
            str(rec.get("newImage") or ""),
            str(rec.get("secret") or ""),
            previous_image=str(rec.get("previousImage") or ""),
        )

    def fetch(self, annotations: Mapping[str, Any]) -> RemediationRecord | None:
        return self.parse(annotations.get(self.key))

    def render(self, record: RemediationRecord) -> str:
        """The annotation value (sorted keys, as every version wrote it)."""
        return json.dumps(
            {
                "time": stamp(record.at),
                "cause": record.cause,
                "policy": record.policy,
                "action": record.action,
                "container": record.container,
                "previousImage": record.previous_image,
                "newImage": record.new_image,
                "secret": record.secret or None,
            },
            sort_keys=True,
        )

    def store(self, obj: Mapping[str, Any], record: RemediationRecord) -> list[dict[str, Any]]:
        """JSON patch ops writing the record on ``obj``."""
        return annotation_ops(obj, {self.key: self.render(record)})

    def purge(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        return remove_ops(obj, "annotations", self.key)


RECORD = RecordAnnotation()


def stamp(at: float) -> str:
    """The record's time as written: microseconds, so it identifies one fix."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def same_time(a: float, b: float) -> bool:
    return abs(a - b) < 1e-3
