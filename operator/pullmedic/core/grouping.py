"""Which stuck pods belong together: failures keyed by (owner, container, image).

Pure and synchronous: pod events in, group membership out. 500 failing replicas of one
Deployment are one group, so they cost one diagnosis and one plan.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pullmedic.core.actions import ObjectRef
from pullmedic.core.detection import (
    StuckContainer,
    controller_of,
    is_terminating,
    parse_time,
    stuck_containers,
)
from pullmedic.core.diagnosis import Diagnosis

GroupKey = tuple[str, str, str]  # (owner "Kind/ns/name", container, image)


@dataclass
class PodState:
    ref: ObjectRef
    body: dict[str, Any]  # a trimmed copy: only what planning and keyrings need
    containers: list[StuckContainer]
    first_seen: float  # monotonic
    created: float  # apiserver clock (creationTimestamp), epoch seconds
    policy: str | None = None
    groups: set[GroupKey] = field(default_factory=set)
    checked: float = 0.0  # last time the sweep confirmed the pod still exists


@dataclass
class Group:
    key: GroupKey
    first_seen: float
    task: asyncio.Task[None] | None = None
    handled_at: float = 0.0
    cause: str = ""
    pods: set[str] = field(default_factory=set)
    posted: str = ""  # fingerprint of the last Event-worthy outcome: post only on change
    applied: str = ""  # fingerprint of the last plan applied, and when
    applied_at: float = 0.0
    again: bool = False  # new members arrived while a decision was running
    empty_since: float | None = None  # kept a while: its memory outlives its pods
    timer: asyncio.TimerHandle | None = None  # the one pending wake-up of this group
    failures: int = 0  # consecutive postponed/failed decisions: retries back off
    quiet: int = 0  # consecutive decisions that changed nothing: rechecks back off
    started_at: float = 0.0  # when the running decision began (monotonic)
    members_taken: bool = False  # the running decision has read its members (after debounce)
    # The diagnosis behind the group's applied fix, and the fix's wall time: a sibling
    # created before the fix that fails within the follow-up window has the same cause,
    # so it is handled at once without probing the registry again.
    fix_diagnosis: Diagnosis | None = None
    fixed_wall: float = 0.0

    def known_diagnosis(
        self, members: list[PodState], now: float, window: float
    ) -> Diagnosis | None:
        if self.fix_diagnosis is None or not self.applied or now - self.applied_at >= window:
            return None
        # creationTimestamp has whole seconds: only a pod made before the fix's own second
        # surely predates it (the fix's recreated pods, and pods its kubelet raced, do not).
        if any(m.created >= math.floor(self.fixed_wall) for m in members):
            return None  # a pod made after the fix: what fails it now is a new question
        return self.fix_diagnosis

    def recheck_in(self, base: float) -> float:
        """Like the kubelet: a failure nothing can fix is looked at less and less often."""
        return float(min(300.0, base * 2.0 ** min(self.quiet, 4)))

    def fresh(self, fingerprint: str) -> bool:
        """True once per distinct outcome: rechecks must not flood Events."""
        if self.posted == fingerprint:
            return False
        self.posted = fingerprint
        return True


@dataclass(frozen=True)
class Wake:
    """A group the scheduler must look at; ``force`` skips the recheck wait."""

    group: Group
    force: bool = False


def trim(pod: Mapping[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    return {
        "metadata": {
            k: meta.get(k)
            for k in ("name", "namespace", "uid", "labels", "ownerReferences", "creationTimestamp")
        },
        "spec": {
            "serviceAccountName": spec.get("serviceAccountName") or "default",
            "imagePullSecrets": spec.get("imagePullSecrets") or [],
            "nodeName": spec.get("nodeName"),
        },
    }


def owner_key(pod: Mapping[str, Any]) -> str:
    ref = controller_of(pod)
    meta = pod.get("metadata") or {}
    if ref is None:
        return f"Pod/{meta.get('namespace')}/{meta.get('name')}"
    return f"{ref.get('kind')}/{meta.get('namespace')}/{ref.get('name')}"


class Groups:
    """Stuck pods and their groups. Every method is synchronous: no await, no races."""

    def __init__(self, follow_up_window: float) -> None:
        self.pods: dict[str, PodState] = {}
        self.groups: dict[GroupKey, Group] = {}
        self.follow_up_window = follow_up_window

    def observe(
        self, event_type: str | None, body: Mapping[str, Any], now: float, wall: float
    ) -> tuple[list[Wake], PodState | None]:
        """A pod event: the groups to wake, and the pod's state if it stopped being stuck."""
        meta = body.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return [], None
        stuck = [] if event_type == "DELETED" or is_terminating(body) else stuck_containers(body)
        if not stuck:
            if uid in self.pods:
                return [], self.recovered(uid, now)
            return [], None
        state = self.pods.get(uid)
        if state is None:
            try:
                created = parse_time(meta.get("creationTimestamp")) or wall
            except ValueError:
                created = wall
            state = PodState(
                ref=ObjectRef("Pod", meta.get("namespace", ""), meta.get("name", ""), uid),
                body=trim(body),
                containers=stuck,
                first_seen=now,
                created=created,
            )
            self.pods[uid] = state
        else:
            state.containers = stuck
        owner = owner_key(body)
        keys = {(owner, c.name, c.image) for c in stuck}
        for old in state.groups - keys:  # the image changed: leave the old group
            self._leave(old, uid, now)
        state.groups = keys
        wakes = []
        for key in sorted(keys):
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Group(key, now)
            joined = uid not in group.pods
            group.pods.add(uid)
            group.empty_since = None
            # A sibling failing while the group is being decided, or just after its fix was
            # applied (it was created before the fix), is looked at as soon as that decision
            # ends, not after the recheck delay (the demo's 36 s missing-secret replica).
            deciding = group.task is not None and not group.task.done() and group.members_taken
            follow_up = joined and (
                deciding or (bool(group.applied) and now - group.applied_at < self.follow_up_window)
            )
            wakes.append(Wake(group, follow_up))
        return wakes, None

    def recovered(self, uid: str, now: float) -> PodState | None:
        state = self.pods.pop(uid, None)
        if state is not None:
            for key in state.groups:
                self._leave(key, uid, now)
        return state

    def members(self, group: Group) -> list[PodState]:
        return [self.pods[u] for u in sorted(group.pods) if u in self.pods]

    def _leave(self, key: GroupKey, uid: str, now: float) -> None:
        group = self.groups.get(key)
        if group is None:
            return
        group.pods.discard(uid)
        if not group.pods and group.empty_since is None:
            group.empty_since = now

    def forget_idle(self, horizon: float) -> list[GroupKey]:
        """Drop groups empty since before ``horizon`` (monotonic) and not deciding."""
        gone = [
            key
            for key, g in self.groups.items()
            if g.empty_since is not None
            and g.empty_since < horizon
            and (g.task is None or g.task.done())
        ]
        for key in gone:
            group = self.groups.pop(key)
            if group.timer is not None:
                group.timer.cancel()
        return gone

    def stuck_by_cause(self) -> dict[str, int]:
        by_cause: dict[str, int] = {}
        for g in self.groups.values():
            if g.cause:
                by_cause[g.cause] = by_cause.get(g.cause, 0) + len(g.pods)
        return by_cause
