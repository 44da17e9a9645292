"""The one owner of what pullmedic persists on workloads: the remediation record and the
circuit-breaker mark. Written by the actuator, read by the circuit breaker; both go
through here so the format has a single definition."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from pullmedic.core.actions import Action, Plan
from pullmedic.core.detection import parse_time

REMEDIATION_ANNOTATION = "pullmedic.dev/last-remediation"
CIRCUIT_ANNOTATION = "pullmedic.dev/circuit"
CIRCUIT_OPEN = "open"


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
    # Read back from the annotation only: what a human needs to revert the change.
    previous_image: str = ""

    @classmethod
    def from_annotation(cls, raw: str | None) -> RemediationRecord | None:
        if not raw:
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(rec, dict):
            return None  # anyone who can edit the workload can write this: trust nothing
        at = rec.get("time")
        try:
            when = parse_time(at) if isinstance(at, str) else None
        except ValueError:
            when = None
        if when is None:
            return None
        return cls(
            when,
            str(rec.get("cause", "")),
            str(rec.get("container", "")),
            str(rec.get("action", "")),
            str(rec.get("newImage") or ""),
            str(rec.get("secret") or ""),
            previous_image=str(rec.get("previousImage") or ""),
        )

    def to_dict(self) -> dict[str, str]:
        """The record as the annotation spells it (``explain --json`` shows it so)."""
        return {
            "time": stamp(self.at),
            "cause": self.cause,
            "container": self.container,
            "action": self.action,
            "previousImage": self.previous_image,
            "newImage": self.new_image,
            "secret": self.secret,
        }


def stamp(at: float) -> str:
    """The record's time as written: microseconds, so it identifies one fix."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def same_time(a: float, b: float) -> bool:
    return abs(a - b) < 1e-3


def render(plan: Plan, a: Action, at: float) -> str:
    """The annotation value: everything a human needs to revert the change."""
    return json.dumps(
        {
            "time": stamp(at),
            "cause": str(plan.cause),
            "policy": plan.policy,
            "action": str(a.type),
            "container": plan.failure.container,
            "previousImage": a.old_image or plan.failure.image,
            "newImage": a.new_image or plan.failure.image,
            "secret": a.secret or None,
        },
        sort_keys=True,
    )
