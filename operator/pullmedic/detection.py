"""Which containers of a pod are stuck pulling: a cheap, pure read of pod status.

Runs on every pod event, so it touches only the few fields it needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

PULL_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
        "ImageInspectError",
        "SignatureValidationFailed",
    }
)
# The kubelet puts some credential errors in the waiting reason itself (no pull is even
# attempted): a pull secret whose ``auth`` does not decode to user:pass.
PULL_REASON_PREFIXES = ("unable to parse auth field",)


def is_pull_reason(reason: object) -> bool:
    return isinstance(reason, str) and (
        reason in PULL_REASONS or reason.startswith(PULL_REASON_PREFIXES)
    )


STATUS_FIELDS = (
    ("initContainers", "initContainerStatuses"),
    ("containers", "containerStatuses"),
    ("ephemeralContainers", "ephemeralContainerStatuses"),
)


@dataclass(frozen=True)
class StuckContainer:
    kind: str  # spec field: containers | initContainers | ephemeralContainers
    index: int  # position in that spec list (JSON patch paths need it)
    name: str
    image: str  # as written in the pod spec, not the status's resolved name
    reason: str
    message: str


def stuck_containers(pod: Mapping[str, Any]) -> list[StuckContainer]:
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    out: list[StuckContainer] = []
    for spec_field, status_field in STATUS_FIELDS:
        statuses = status.get(status_field) or ()
        if not statuses:
            continue
        index = {
            c.get("name"): (i, c.get("image", "")) for i, c in enumerate(spec.get(spec_field) or ())
        }
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if not is_pull_reason(reason):
                continue
            name = cs.get("name", "")
            i, image = index.get(name, (-1, cs.get("image", "")))
            out.append(
                StuckContainer(
                    spec_field, i, name, image, str(reason), str(waiting.get("message", ""))
                )
            )
    return out


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref  # type: ignore[no-any-return]
    return None


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def might_be_stuck(pod: Mapping[str, Any], known: Container[str]) -> bool:
    """The cheap pre-filter every pod event passes: a pull failure now, or a pod that had
    one (its recovery or deletion matters too)."""
    if (pod.get("metadata") or {}).get("uid") in known:
        return True
    status = pod.get("status") or {}
    return any(
        is_pull_reason(((cs.get("state") or {}).get("waiting") or {}).get("reason"))
        for _, f in STATUS_FIELDS
        for cs in status.get(f) or ()
    )
