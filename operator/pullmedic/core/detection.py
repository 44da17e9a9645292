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
# Waiting reasons the kubelet names itself that are not about getting the image: before
# the first pull (ContainerCreating, PodInitializing) or after the image is present
# (creating, starting or restarting the container, the pod sandbox). Any *other* reason on
# a container whose image never arrived is the text of an error the kubelet hit while
# preparing the pull: it puts Go error strings there verbatim ("illegal base64 data at
# input byte 0", "unable to parse auth field, ..." for a pull secret it cannot decode), so
# recognising them by their text alone would miss the next one.
NOT_PULL_REASONS = frozenset(
    {
        "ContainerCreating",
        "PodInitializing",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "PreCreateHookError",
        "CreateContainerError",
        "PreStartHookError",
        "PostStartHookError",
        "RunContainerError",
        "RunInitContainerError",
        "StartError",
        "KillContainerError",
        "VerifyNonRootError",
        "CreatePodSandboxError",
        "ConfigPodSandboxError",
        "KillPodSandboxError",
        "ContainerStatusUnknown",
        "no matching container",
    }
)


def stuck_pulling(reason: object, image_id: object) -> bool:
    """Is a container waiting with ``reason`` (and status ``imageID``) stuck getting its image?

    A pull reason always is. Any other non-empty reason that is not one of the kubelet's
    own non-pull states is too, as long as the image never arrived (no ``imageID``): the
    kubelet only fails there on the way to a pull.
    """
    if not isinstance(reason, str) or not reason:
        return False
    if reason in PULL_REASONS:
        return True
    return reason not in NOT_PULL_REASONS and not image_id


def _waiting(cs: Mapping[str, Any]) -> Mapping[str, Any]:
    return (cs.get("state") or {}).get("waiting") or {}


def _blocked(cs: Mapping[str, Any]) -> bool:
    return stuck_pulling(_waiting(cs).get("reason"), cs.get("imageID"))


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
            if not _blocked(cs):
                continue
            waiting = _waiting(cs)
            reason = waiting.get("reason")
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
    return any(_blocked(cs) for _, f in STATUS_FIELDS for cs in status.get(f) or ())
