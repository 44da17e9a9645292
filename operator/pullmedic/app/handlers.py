"""kopf wiring: namespace and policy events in, engine out. Nothing here decides anything.

Pods are not watched through kopf: kopf keeps per-object state for every pod it has seen,
healthy or not. The engine's own lean watch (podwatch.py) keeps nothing per healthy pod.
Nothing is written on pods (sharded replicas label a stuck pod to hand it over: handoff.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import kopf

from pullmedic.admission.tls import SelfManagedTLS
from pullmedic.admission.webhook import AdmissionWebhook, WebhookSettings
from pullmedic.control.engine import Engine
from pullmedic.control.health import HealthServer
from pullmedic.core.policy import GROUP, VERSION

log = logging.getLogger("pullmedic")


@dataclass(frozen=True)
class WatchTimeouts:
    """How fast a dead watch connection is noticed, whatever the network does to it.

    Each watch request asks the server to end it after ``server`` seconds and the client
    gives up after ``client``: a connection that silently died is replaced within
    ``client`` seconds. kopf also reconnects a stream silent for ``inactivity`` seconds
    (longer than ``server``: a healthy stream ends by then).
    """

    server: int = 20  # sent as timeoutSeconds: the API server wants an integer
    client: float = 30.0
    connect: float = 10.0
    inactivity: float = 35.0
    request: float = 30.0  # kopf's own non-watch requests (listing)
    # kopf's retries of a failed request sleep without waking (1, 1, 2, ... 21 s by
    # default): capped, so a watch is back within seconds of the API's return.
    error_backoffs: tuple[float, ...] = (0.5, 1.0, 1.0, *(2.0,) * 30)


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


def configure(settings: kopf.OperatorSettings, watch: WatchTimeouts) -> None:
    settings.posting.enabled = False  # our Events are explicit, never log lines
    settings.watching.server_timeout = watch.server
    settings.watching.client_timeout = watch.client
    settings.watching.connect_timeout = watch.connect
    settings.watching.inactivity_timeout = watch.inactivity
    settings.networking.request_timeout = watch.request
    settings.networking.connect_timeout = watch.connect
    settings.networking.error_backoffs = watch.error_backoffs
    settings.persistence.finalizer = "pullmedic.dev/unused"  # no finalizers are added
    settings.persistence.diffbase_storage = NoDiffBase()


def _own_certificates(tls: SelfManagedTLS, hook: AdmissionWebhook) -> Callable[[], Awaitable[None]]:
    """The webhook-tls loop: keep the Secret, the caBundle and the files current; the
    server starts once it has a certificate (until then the API server's failurePolicy
    Ignore admits everything)."""

    async def tick() -> None:
        await tls.ensure()
        if not hook.started:
            await hook.start()
        else:
            await hook.reload_certs()

    return tick


def build_registry(
    make_engine: Callable[[], Engine],
    *,
    health: tuple[str, int] | None = None,
    watch: WatchTimeouts | None = None,
    webhook: WebhookSettings | None = None,
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    holder: dict[str, Any] = {}
    watch = watch or WatchTimeouts()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Our own registry does not inherit kopf's default login handlers. The same order
        # as the operator's own client (runner.api_client): a kubeconfig when one is named,
        # else the pod's ServiceAccount at KUBERNETES_SERVICE_HOST/PORT as client-go's
        # InClusterConfig reads it (kopf's login_with_service_account assumes cluster DNS
        # for kubernetes.default.svc), else ~/.kube/config.
        if os.environ.get("KUBECONFIG"):
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, watch)
        engine = make_engine()
        holder["engine"] = engine
        if webhook is not None:
            served = webhook
            tls = SelfManagedTLS(engine.kube, webhook.tls) if webhook.tls else None
            if tls is not None:
                served = replace(webhook, cert_file=tls.cert_file, key_file=tls.key_file)
            hook = AdmissionWebhook(
                engine.remediator.prober, engine.inventory, engine.remediator.lookups, served
            )
            holder["webhook"] = hook
            if tls is None:  # files (cert-manager): reloaded when they change
                engine.supervisor.every("webhook-certs", 30.0, hook.reload_certs)
                await hook.start()
            else:
                engine.supervisor.every(
                    "webhook-tls", tls.s.check_interval(), _own_certificates(tls, hook)
                )
        engine.start()
        if health is not None:
            server = HealthServer(engine.liveness, engine.readiness)
            await server.start(*health)
            holder["health"] = server
        log.info("pullmedic started")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        engine = holder.get("engine")
        if engine is not None:
            await engine.stop()
        server = holder.get("health")
        if server is not None:
            await server.stop()
        hook = holder.get("webhook")
        if hook is not None:
            await hook.stop()

    @kopf.on.event("v1", "namespaces", registry=registry)
    async def namespace_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        engine: Engine | None = holder.get("engine")
        if engine is not None:
            engine.on_namespace(event.get("type"), body)

    for plural in ("pullpolicies", "clusterpullpolicies"):

        @kopf.on.event(GROUP, VERSION, plural, id=f"policy-{plural}", registry=registry)
        async def policy_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            engine: Engine | None = holder.get("engine")
            if engine is not None:
                await engine.on_policy(event.get("type"), body)

    return registry
