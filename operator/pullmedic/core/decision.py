"""The pure half of deciding one group: the failure as planning sees it, and whether a
plan repeats a fix already applied. No I/O, no clock of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pullmedic.core import reference
from pullmedic.core.actions import Action, ActionType, Failure, ObjectRef, Plan
from pullmedic.core.detection import StuckContainer
from pullmedic.core.diagnosis import Cause
from pullmedic.core.grouping import PodState
from pullmedic.core.kinds import pod_spec_of
from pullmedic.core.policy import Policy
from pullmedic.core.records import RemediationRecord


def template_pull_secrets(
    wobj: Mapping[str, Any] | None, workload: ObjectRef | None
) -> tuple[str, ...] | None:
    if not wobj or workload is None:
        return None
    refs = pod_spec_of(wobj, workload.kind).get("imagePullSecrets") or ()
    return tuple(str(r.get("name", "")) for r in refs if isinstance(r, Mapping))


def template_index(
    wobj: Mapping[str, Any], workload: ObjectRef | None, sc: StuckContainer
) -> int | None:
    if workload is None:
        return None
    for i, c in enumerate(pod_spec_of(wobj, workload.kind).get(sc.kind) or ()):
        if c.get("name") == sc.name:
            return i
    return None


def failure_of(
    rep: PodState,
    sc: StuckContainer,
    members: Sequence[PodState],
    workload: ObjectRef | None,
    job: ObjectRef | None,
    wobj: Mapping[str, Any] | None,
) -> Failure:
    pod = rep.body
    meta = (wobj or {}).get("metadata") or {}
    return Failure(
        pod=rep.ref,
        container=sc.name,
        container_kind=sc.kind,
        container_index=sc.index,
        image=sc.image,
        reason=sc.reason,
        service_account=pod["spec"]["serviceAccountName"],
        pod_pull_secrets=tuple(s.get("name", "") for s in pod["spec"]["imagePullSecrets"]),
        workload=workload,
        job=job,
        workload_container_index=template_index(wobj, workload, sc) if wobj else None,
        workload_labels=tuple(sorted((meta.get("labels") or {}).items())) if wobj else (),
        workload_annotations=tuple(sorted((meta.get("annotations") or {}).items())),
        stuck_pods=tuple(m.ref for m in members),
        template_pull_secrets=template_pull_secrets(wobj, workload),
    )


def fingerprint(p: Plan) -> str:
    """What a plan changes, recreations aside: equal fingerprints are the same fix."""
    parts = [
        f"{a.type}:{a.target}:{a.new_image}:{a.secret}"
        for a in p.actions
        if a.type is not ActionType.RECREATE_PODS
    ]
    return f"{p.cause}|" + "|".join(parts) if p.actions else ""


def main_action(p: Plan) -> Action:
    """The action a plan's record names: the secret it gives, else the image it sets."""
    return next(
        (
            a
            for a in p.actions
            if a.type in (ActionType.ATTACH_PULL_SECRET, ActionType.ADD_TEMPLATE_PULL_SECRET)
        ),
        next((a for a in p.actions if a.new_image), p.actions[-1]),
    )


def is_late_sibling(p: Plan, record: RemediationRecord | None, members: Sequence[PodState]) -> bool:
    """Every stuck pod predates the fix the workload's record describes, and the plan
    repeats that fix: they are late siblings of a fix already made, by this process or by
    the one before a restart or failover (their first failures came late: the kubelet
    pulls one image at a time). Recreating them is a follow-up, not a new remediation."""
    if record is None or not p.actions or not members:
        return False
    main = main_action(p)
    return (
        record.cause == str(p.cause)
        and record.container == p.failure.container
        and record.action == str(main.type)
        and (record.secret == main.secret if main.secret else record.new_image == main.new_image)
        # creationTimestamp has whole seconds, so a pod made in the fix's own second counts
        # as older; a pod that got the fix and still fails is the circuit breaker's (first).
        and max(m.created for m in members) < record.at
    )


CREDENTIAL_ACTIONS = frozenset(
    {str(ActionType.ATTACH_PULL_SECRET), str(ActionType.ADD_TEMPLATE_PULL_SECRET)}
)


def is_raced_sibling(p: Plan, record: RemediationRecord | None, now: float, window: float) -> bool:
    """A pod that failed although its credentials work now (the probe pulls with them)
    moments after a credential fix: its kubelet raced the new secret (the kubelet's secret
    cache syncs a secret it has not seen yet within about a second, and a pull that starts
    before that goes without it). Recreating it is a follow-up of that fix: not a new
    remediation, and never counted or announced again."""
    return (
        record is not None
        and p.cause is Cause.ImageAvailable
        and bool(p.actions)
        and all(a.type is ActionType.RECREATE_PODS for a in p.actions)
        and record.action in CREDENTIAL_ACTIONS
        and 0.0 <= now - record.at < window
    )


def is_follow_up(fp: str, applied: str, since_applied: float, window: float) -> bool:
    """The same fix as one applied moments ago: late siblings get it without it counting
    as a new remediation (one record, one Event, one rate-limit slot)."""
    return bool(fp) and applied == fp and since_applied < window


def mirror_candidate(image: str, policy: Policy) -> str | None:
    """The same image on the policy's mirror for its registry (to be verified there)."""
    try:
        ref = reference.parse(image)
    except reference.InvalidReference:
        return None
    host = policy.mirror_for(ref.domain) or policy.mirror_for(ref.registry_host)
    if not host:
        return None
    return (
        f"{host}/{ref.path}"
        + (f":{ref.tag}" if ref.tag else "")
        + (f"@{ref.digest}" if ref.digest else "")
    )


def alternative_candidate(image: str, policy: Policy) -> tuple[str, str] | None:
    """(the image under a moved repository's new name, "from -> to"), or None."""
    try:
        ref = reference.parse(image)
    except reference.InvalidReference:
        return None
    familiar = ref.familiar()
    for suffix in (f"@{ref.digest}" if ref.digest else "", f":{ref.tag}" if ref.tag else ""):
        if suffix and familiar.endswith(suffix):
            familiar = familiar[: -len(suffix)]
    moved = policy.moved_to([ref.name, familiar])
    if moved is None:
        return None
    alt, name = moved
    new = name + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")
    try:
        reference.parse(new)
    except reference.InvalidReference:
        return None
    return new, f"{alt.from_} -> {alt.to}"
