"""Kubernetes Events from pullmedic: what `kubectl describe` shows application teams.

Messages carry names (images, secrets, workloads), never credential material.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass

from pullmedic.kube import KubeApi, KubeError

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


async def post(
    kube: KubeApi,
    obj: Involved,
    reason: str,
    message: str,
    type_: str = "Normal",
    *,
    key: str = "",
) -> None:
    """Best effort: a failed Event must never fail a remediation. Never repeated after an
    unknown outcome (the client retries a create only when it was surely not sent), so an
    outcome is announced at most once."""
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
        log.warning("could not post event %s on %s/%s: %s", reason, obj.kind, obj.name, e)


def _suffix(obj: Involved, reason: str, key: str) -> str:
    """A random name, or with ``key`` one derived from it: the same outcome announced twice
    (a restarted operator finishing a plan) is one Event."""
    if not key:
        return uuid.uuid4().hex[:12]
    return hashlib.sha256(
        f"{obj.kind}/{obj.namespace}/{obj.name}|{reason}|{key}".encode()
    ).hexdigest()[:16]
