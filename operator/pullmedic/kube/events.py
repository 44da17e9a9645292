"""Kubernetes Events from pullmedic: what `kubectl describe` shows application teams.

Messages carry names (images, secrets, workloads), never credential material.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pullmedic.kube.client import KubeApi, KubeError

log = logging.getLogger(__name__)
COMPONENT = "pullmedic"
MAX_MESSAGE = 1024


@dataclass(frozen=True)
class Involved:
    api_version: str
    kind: str
    namespace: str | None
    name: str
    uid: str = ""


class Outbox:
    """Keyed Events whose create did not get through (the API server away, or the
    connection lost mid-request): kept and posted again until the API answers. A keyed
    Event's name is derived from its key, so a repeat of one that did land is a 409, never
    a second Event: announced exactly once, however long the outage."""

    MAX = 1000  # beyond this the oldest are dropped (logged): memory stays bounded
    MAX_AGE = 3600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.pending: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}

    def keep(self, ns: str, body: dict[str, Any]) -> None:
        key = (ns, str(body["metadata"]["name"]))
        self.pending.setdefault(key, (body, self.clock()))
        while len(self.pending) > self.MAX:
            (dns, dname), _ = next(iter(self.pending.items()))
            del self.pending[(dns, dname)]
            log.warning("event %s/%s dropped: too many waiting to be posted", dns, dname)

    async def flush(self, kube: KubeApi) -> int:
        """Post what is waiting; returns how many are still waiting."""
        for key, (body, since) in list(self.pending.items()):
            ns, name = key
            if self.clock() - since > self.MAX_AGE:
                self.pending.pop(key, None)
                log.warning("event %s/%s dropped: not posted within an hour", ns, name)
                continue
            try:
                await kube.create("Event", ns, body)
            except KubeError as e:
                if not _transient(e):
                    self.pending.pop(key, None)  # 409: it landed the first time
                    if e.status != 409:
                        log.warning("event %s/%s not posted: %s", ns, name, e)
                    continue
                break  # still away: try again next tick, in order
            self.pending.pop(key, None)  # (keep() may have dropped it meanwhile)
        return len(self.pending)


def _transient(e: KubeError) -> bool:
    return e.status == 0 or e.status == 429 or e.status >= 500


async def post(
    kube: KubeApi,
    obj: Involved,
    reason: str,
    message: str,
    type_: str = "Normal",
    *,
    key: str = "",
    outbox: Outbox | None = None,
) -> None:
    """Best effort: a failed Event must never fail a remediation. An unkeyed Event is
    never repeated after an unknown outcome (the client retries a create only when it was
    surely not sent); a keyed one goes to the ``outbox`` and is posted again until the
    API answers (its name makes the repeat a no-op), so an outcome is announced once."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ns = obj.namespace or "default"  # Events of cluster-scoped objects live in default
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{obj.name[:200]}.{_suffix(obj, reason, key)}", "namespace": ns},
        "involvedObject": {
            "apiVersion": obj.api_version,
            "kind": obj.kind,
            "name": obj.name,
            "namespace": obj.namespace,
            "uid": obj.uid or None,
        },
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "type": type_,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await kube.create("Event", ns, body)
    except KubeError as e:
        if e.status == 409 and key:
            return  # announced already (by this fix's earlier, interrupted run)
        if key and outbox is not None and _transient(e):
            outbox.keep(ns, body)
            log.info("event %s on %s/%s kept to post again: %s", reason, obj.kind, obj.name, e)
            return
        log.warning("could not post event %s on %s/%s: %s", reason, obj.kind, obj.name, e)


def _suffix(obj: Involved, reason: str, key: str) -> str:
    """A random name, or with ``key`` one derived from it: the same outcome announced twice
    (a restarted operator finishing a plan) is one Event."""
    if not key:
        return uuid.uuid4().hex[:12]
    return hashlib.sha256(
        f"{obj.kind}/{obj.namespace}/{obj.name}|{reason}|{key}".encode()
    ).hexdigest()[:16]
