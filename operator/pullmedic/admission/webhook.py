"""The admission webhook: AdmissionReview in, AdmissionReview out, over TLS.

It must never hurt the cluster. It answers within its budget whatever the registry does
(a cold probe that would take longer admits with a warning and finishes in the
background, warming the cache for the next request); any error admits; it skips
kube-system, the operator's namespace and the operator's own pods; it uses exactly the
credentials the pod will have (its own pull secrets, else its ServiceAccount's, as the
ServiceAccount admission plugin injects them). The configuration pairs it with
``failurePolicy: Ignore`` and a short timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from pullmedic.admission.tls import TLSSettings
from pullmedic.control.diagnoser import Diagnoser
from pullmedic.core import policy as pol
from pullmedic.core.admission import (
    Answer,
    Checked,
    ContainerImage,
    PodSpecView,
    decide,
    pod_spec_of,
    to_check,
)
from pullmedic.core.decision import mirror_candidate
from pullmedic.core.diagnosis import MIRROR_CAUSES, Cause, Diagnosis
from pullmedic.core.inventory import Inventory
from pullmedic.core.keyring import Keyring
from pullmedic.core.platforms import Platform
from pullmedic.core.selection import choose
from pullmedic.core.tokenmode import PodIdentity
from pullmedic.kube.lookups import Lookups
from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")

PROTECTED = frozenset({"kube-system"})
OPERATOR_LABEL = ("app.kubernetes.io/name", "pullmedic")


@dataclass(frozen=True)
class WebhookSettings:
    port: int = 0  # 0: no webhook
    bind: str = "0.0.0.0"
    cert_file: str = ""
    key_file: str = ""
    budget: float = 1.5  # seconds of probing per request; the webhook timeout is 2 s
    default_platform: str = "linux/amd64"
    operator_namespace: str | None = None
    tls: TLSSettings | None = None  # the operator keeps its own certificates (no files)


class AdmissionWebhook:
    def __init__(
        self,
        prober: Diagnoser,
        inventory: Inventory,
        lookups: Lookups,
        settings: WebhookSettings,
    ) -> None:
        self.prober = prober
        self.inv = inventory
        self.lookups = lookups
        self.s = settings
        self.platform = Platform.parse(settings.default_platform)
        self._background: set[asyncio.Task[Diagnosis]] = set()
        self._runner: web.AppRunner | None = None
        self._ssl: ssl.SSLContext | None = None
        self._cert_mtime = 0.0

    # ---- the decision for one request ------------------------------------------------
    async def review(self, body: Mapping[str, Any]) -> dict[str, Any]:
        req = body.get("request") or {}
        uid = str(req.get("uid", ""))
        try:
            answer = await self._answer(req)
        except Exception:  # never block the cluster on our own bug
            log.exception("admission review failed; admitting")
            answer = Answer(warnings=("pullmedic could not check this object (pullmedic)",))
        metrics.ADMISSIONS.labels(
            decision="denied"
            if not answer.allowed
            else "mutated"
            if answer.patch
            else "warned"
            if answer.warnings
            else "allowed"
        ).inc()
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": answer.response(uid),
        }

    async def _answer(self, req: Mapping[str, Any]) -> Answer:
        ns = str(req.get("namespace") or "")
        if ns in PROTECTED or (self.s.operator_namespace and ns == self.s.operator_namespace):
            return Answer()
        obj = req.get("object") or {}
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(OPERATOR_LABEL[0]) == OPERATOR_LABEL[1]:
            return Answer()
        view = pod_spec_of(obj)
        if view is None:
            return Answer()
        if view.labels.get(OPERATOR_LABEL[0]) == OPERATOR_LABEL[1]:
            return Answer()
        images = to_check(view, pod_spec_of(req.get("oldObject")))
        if ns not in self.inv.namespaces:
            return Answer()  # labels unknown: never guess which policy applies
        chosen: list[tuple[ContainerImage, pol.Policy]] = []
        for c in images:
            p = self._policy(ns, view, c.image)
            if p is not None and p.admission is not pol.AdmissionMode.OFF:
                chosen.append((c, p))
        if not chosen:
            return Answer()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.budget
        keyring = await asyncio.wait_for(self._keyring(ns, view), self.s.budget)
        # The pod to be: its ServiceAccount (a token-mode credential provider gets its
        # token, KEP-4412); no uid yet, so the token is not bound to a pod.
        meta = obj.get("metadata") or {}
        who = PodIdentity(ns, view.service_account, str(meta.get("name") or ""))
        checked = await asyncio.gather(
            *(self._check(c, p, keyring, deadline, who) for c, p in chosen)
        )
        return decide(view, checked)

    def _policy(self, ns: str, view: PodSpecView, image: str) -> pol.Policy | None:
        return choose(
            self.inv,
            namespace=ns,
            pod_labels=view.labels,
            image=image,
            operator_namespace=self.s.operator_namespace,
        )

    async def _keyring(self, ns: str, view: PodSpecView) -> Keyring:
        return await self.lookups.template_keyring(ns, view.pull_secrets, view.service_account)

    async def _check(
        self,
        c: ContainerImage,
        p: pol.Policy,
        keyring: Keyring,
        deadline: float,
        who: PodIdentity | None = None,
    ) -> Checked:
        d = await self._within(c.image, keyring, p, deadline, who)
        mirror = None
        if d is not None and p.admission is pol.AdmissionMode.MUTATE and d.cause in MIRROR_CAUSES:
            mirror = await self._mirror(c.image, p, keyring, deadline, who)
        return Checked(c, d, p.admission, mirror)

    async def _within(
        self,
        image: str,
        keyring: Keyring,
        p: pol.Policy,
        deadline: float,
        who: PodIdentity | None = None,
    ) -> Diagnosis | None:
        task = asyncio.ensure_future(
            self.prober.diagnose(
                image, keyring, self.platform, suggest=True, tag_policy=p.tags, pod=who
            )
        )
        left = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, left))
        except TimeoutError:
            self._background.add(task)  # finishes later and warms the cache
            task.add_done_callback(self._settled)
            return None

    def _settled(self, task: asyncio.Task[Diagnosis]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("background probe failed: %s", type(task.exception()).__name__)

    async def _mirror(
        self,
        image: str,
        p: pol.Policy,
        keyring: Keyring,
        deadline: float,
        who: PodIdentity | None = None,
    ) -> str | None:
        candidate = mirror_candidate(image, p)
        if candidate is None:
            return None
        d = await self._within(candidate, keyring, p, deadline, who)
        return candidate if d is not None and d.cause is Cause.ImageAvailable else None

    # ---- the server --------------------------------------------------------------------
    def load_certs(self) -> bool:
        """(Re)load the serving certificate when its file changed (cert-manager rotates it
        in place); new handshakes use the new one. True when loaded."""
        path = Path(self.s.cert_file)
        mtime = path.stat().st_mtime
        if self._ssl is not None and mtime == self._cert_mtime:
            return False
        ctx = self._ssl or ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.s.cert_file, self.s.key_file)
        self._ssl = ctx
        self._cert_mtime = mtime
        return True

    async def reload_certs(self) -> None:
        if self.load_certs():
            log.info("webhook serving certificate loaded from %s", self.s.cert_file)

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "not an AdmissionReview"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "not an AdmissionReview"}, status=400)
        return web.json_response(await self.review(body))

    @property
    def started(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        self.load_certs()
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.add_routes([web.post("/admit", self._handle)])
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.s.bind, self.s.port, ssl_context=self._ssl).start()
        log.info("admission webhook listening on %s:%d", self.s.bind, self.s.port)

    async def stop(self) -> None:
        for t in list(self._background):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
