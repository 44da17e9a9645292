"""Liveness and readiness, with their reasons, for the kubelet's probes.

Liveness fails only when a restart would help: a background loop stopped ticking, a
decision outlived its deadline, or the pod watch went deaf (stuck pods exist, and the
kubelet rewrites their status at least every five minutes, yet no pod event arrived).
An unreachable API server makes the operator unready, never dead: a restart would not
bring it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from pullmedic import metrics

log = logging.getLogger("pullmedic")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problems: tuple[str, ...] = ()

    def body(self) -> str:
        return json.dumps({"ok": self.ok, "problems": list(self.problems)})


class HealthServer:
    def __init__(
        self,
        liveness: Callable[[], list[str]],
        readiness: Callable[[], list[str]],
    ) -> None:
        self._liveness = liveness
        self._readiness = readiness
        self._runner: web.AppRunner | None = None

    def live(self) -> Verdict:
        problems = tuple(self._liveness())
        metrics.HEALTHY.set(0 if problems else 1)
        return Verdict(not problems, problems)

    def ready(self) -> Verdict:
        problems = tuple(self._readiness()) + tuple(self._liveness())
        metrics.READY.set(0 if problems else 1)
        return Verdict(not problems, problems)

    async def _handle(self, request: web.Request) -> web.Response:
        v = self.live() if request.path == "/healthz" else self.ready()
        if not v.ok:
            log.warning("%s failing: %s", request.path, "; ".join(v.problems))
        return web.Response(
            status=200 if v.ok else 503, text=v.body(), content_type="application/json"
        )

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.add_routes([web.get("/healthz", self._handle), web.get("/readyz", self._handle)])
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
