"""Hand-off: a stuck pod this shard watches, of a failure group another shard owns.

The pod gets the owner's hand-off label (``sharding.HANDOFF`` owns its format; this module
applies its patches); the owner watches pods with its label value and so sees the pod's
failure, recovery and deletion itself. Kept
here: only the stuck pods still to be labelled (at most one entry per such pod). Only the
acting replica of this shard writes; a standby keeps the list warm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pullmedic.core.metadata import labels_of
from pullmedic.core.sharding import HANDOFF, Shard
from pullmedic.kube.client import KubeApi, KubeError

log = logging.getLogger("pullmedic")


@dataclass(frozen=True)
class Pending:
    namespace: str
    name: str
    target: Shard
    ops: list[dict[str, Any]]


class HandOff:
    def __init__(self, kube: KubeApi, acting: Callable[[], bool] = lambda: True) -> None:
        self.kube = kube
        self.acting = acting
        self.pending: dict[str, Pending] = {}
        self.handed = 0  # pods labelled by this process

    def note(self, pod: Mapping[str, Any], target: Shard | None) -> None:
        """A stuck pod of another shard's group (``target``), or None: forget it."""
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if target is None or HANDOFF.fetch(labels_of(pod)) == target:
            self.pending.pop(uid, None)
            return
        if uid in self.pending:
            return
        meta = pod.get("metadata") or {}
        self.pending[uid] = Pending(
            str(meta.get("namespace") or ""),
            str(meta.get("name") or ""),
            target,
            HANDOFF.store(pod, target),
        )

    def forget(self, uid: str) -> None:
        self.pending.pop(uid, None)

    async def flush(self) -> None:
        if not self.acting():
            return
        for uid, p in list(self.pending.items()):
            try:
                await self.kube.json_patch("Pod", p.namespace, p.name, p.ops)
                self.handed += 1
            except KubeError as e:
                if e.status not in (404, 409, 422):
                    log.info("hand-off of pod %s/%s not written yet: %s", p.namespace, p.name, e)
                    continue  # next tick
                # Gone, or another pod under that name now, or labelled meanwhile: nothing
                # to hand over (a labelled pod's next event confirms it).
            if self.pending.get(uid) is p:
                del self.pending[uid]
