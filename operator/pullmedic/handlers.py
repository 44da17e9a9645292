"""kopf wiring: events in, engine out. Nothing here decides anything.

Pods are watched with ``on.event`` only: no annotations, finalizers or status are ever
written on pods (kopf's on.create/on.update would annotate every pod in the cluster).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import kopf

from pullmedic.detection import PULL_REASONS
from pullmedic.engine import Engine
from pullmedic.policy import GROUP, VERSION

log = logging.getLogger("pullmedic")


class NoDiffBase(kopf.DiffBaseStorage):
    """pullmedic has only event handlers: kopf's per-event deep copy and diff of every pod
    (for change-detecting handlers it never calls) is pure overhead at thousands of pods."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def build_registry(make_engine: Callable[[], Engine]) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    holder: dict[str, Engine] = {}
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Our own registry does not inherit kopf's default login handlers.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our Events are explicit, never log lines
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        settings.persistence.finalizer = "pullmedic.dev/unused"  # no finalizers are added
        settings.persistence.diffbase_storage = NoDiffBase()
        engine = make_engine()
        holder["engine"] = engine
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(engine.run_status_flusher()))
        tasks.append(loop.create_task(engine.run_secret_sync()))
        tasks.append(loop.create_task(engine.run_sweeper()))
        log.info("pullmedic started")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for t in tasks:
            t.cancel()

    @kopf.on.probe(id="policies", registry=registry)
    def probe_policies(**_: Any) -> int:
        engine = holder.get("engine")
        return len(engine.policies) if engine else 0

    @kopf.on.event("v1", "pods", registry=registry)
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        engine = holder.get("engine")
        if engine is None:
            return
        # Cheap pre-filter: only pods that have, or had, a pull failure reach the engine.
        status = body.get("status") or {}
        interesting = body.get("metadata", {}).get("uid") in engine.pods or any(
            ((cs.get("state") or {}).get("waiting") or {}).get("reason") in PULL_REASONS
            for f in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
            for cs in status.get(f) or ()
        )
        if interesting:
            engine.on_pod(event.get("type"), body)

    @kopf.on.event("v1", "namespaces", registry=registry)
    async def namespace_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        engine = holder.get("engine")
        if engine is not None:
            engine.on_namespace(event.get("type"), body)

    for plural in ("pullpolicies", "clusterpullpolicies"):

        @kopf.on.event(GROUP, VERSION, plural, id=f"policy-{plural}", registry=registry)
        async def policy_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            engine = holder.get("engine")
            if engine is not None:
                await engine.on_policy(event.get("type"), body)

    return registry
