"""Forget stuck pods that vanished while a watch was down: a re-list after 410 delivers
the living, never a DELETED for the dead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pullmedic.core.grouping import Groups, PodState
from pullmedic.kube.client import KubeApi, KubeError


class Sweeper:
    def __init__(
        self,
        kube: KubeApi,
        groups: Groups,
        on_gone: Callable[[PodState], None],
        *,
        max_age: float = 300.0,
        pause: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.groups = groups
        self.on_gone = on_gone
        self.max_age = max_age
        self.pause = pause  # at most ~20 GETs a second
        self.clock = clock

    async def sweep(self) -> int:
        """Check pods not confirmed for ``max_age``; returns how many were gone."""
        gone = 0
        now = self.clock()
        for uid, state in list(self.groups.pods.items()):
            if now - max(state.checked, state.first_seen) < self.max_age:
                continue
            state.checked = now
            try:
                obj = await self.kube.get("Pod", state.ref.namespace, state.ref.name)
            except KubeError:
                continue
            if (obj is None or (obj.get("metadata") or {}).get("uid") != uid) and (
                self.groups.pods.get(uid) is state
            ):
                popped = self.groups.recovered(uid, self.clock())
                if popped is not None:
                    self.on_gone(popped)
                    gone += 1
            await asyncio.sleep(self.pause)
        return gone
