"""Liveness and readiness, with their reasons, for the kubelet's probes.

Liveness fails only when a restart would help: a background loop stopped ticking (the
pod watch's heartbeats, its events, bookmarks and request ends, count as its ticks), a
decision outlived its deadline, or stuck pods exist and no pod event arrived for longer
than the kubelet ever waits to rewrite their status (five minutes).
An unreachable API server makes the operator unready, never dead: a restart would not
bring it back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from pullmedic.control.scheduler import Scheduler
from pullmedic.control.supervision import Supervisor
from pullmedic.core.grouping import Groups
from pullmedic.kube.client import KubeApi, KubeError
from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problems: tuple[str, ...] = ()

    def body(self) -> str:
        return json.dumps({"ok": self.ok, "problems": list(self.problems)})


@dataclass(frozen=True)
class HealthSettings:
    ready_budget: float = 30.0  # unready when the API server has not answered for this long
    # Deaf pod watch: stuck pods get a status write from the kubelet at least every 300 s
    # (its longest back-off), so this long without any pod event means the watch is dead.
    pod_watch_budget: float = 420.0
    decision_slack: float = 30.0  # beyond the scheduler's own deadline
    api_check_interval: float = 5.0  # the probe's period while the API answers


class HealthChecks:
    """Reads the engine's parts; the API round trip is the only I/O it does."""

    def __init__(
        self,
        kube: KubeApi,
        supervisor: Supervisor,
        scheduler: Scheduler,
        groups: Groups,
        namespaces: Callable[[], int],
        settings: HealthSettings,
        clock: Callable[[], float] = time.monotonic,
        on_api_back: Callable[[], None] = lambda: None,
    ) -> None:
        self.kube = kube
        self.supervisor = supervisor
        self.scheduler = scheduler
        self.groups = groups
        self.namespaces = namespaces
        self.settings = settings
        self.clock = clock
        self.last_pod_event = clock()
        self.api_ok_at: float | None = None
        self.api_down = False
        self.on_api_back = on_api_back

    def saw_pod_event(self) -> None:
        self.last_pod_event = self.clock()

    async def check_api(self) -> None:
        """Called often (every second): probes every ``api_check_interval`` while the API
        answers, at every call while it does not, and reports its return at once so no
        back-off sleeps past it. A failed probe also drops the pooled connections."""
        now = self.clock()
        if (
            not self.api_down
            and self.api_ok_at is not None
            and now - self.api_ok_at < self.settings.api_check_interval
        ):
            return
        try:
            await self.kube.version()
        except KubeError as e:
            if e.status:  # it answered (429 from fairness, 403): there, only busy or strict
                self.api_ok_at = self.clock()
                return
            if not self.api_down:
                log.warning("API server does not answer (%s); probing every second", e)
            self.api_down = True
            return  # readiness reports it; nothing to restart
        self.api_ok_at = self.clock()
        if self.api_down:
            self.api_down = False
            log.info("API server answers again: retrying now what waited for it")
            self.on_api_back()

    def liveness(self) -> list[str]:
        problems = self.supervisor.stalled()
        s = self.scheduler.settings
        oldest = self.scheduler.oldest_running()
        if oldest > s.debounce + s.decision_timeout + self.settings.decision_slack:
            problems.append(f"a decision has been running for {oldest:.0f}s")
        silent = self.clock() - self.last_pod_event
        if self.groups.pods and silent > self.settings.pod_watch_budget:
            problems.append(
                f"no pod event for {silent:.0f}s while {len(self.groups.pods)} pods are stuck"
            )
        return problems

    def readiness(self) -> list[str]:
        problems = []
        if not self.namespaces():
            problems.append("namespace watch has not listed yet")
        now = self.clock()
        if self.api_ok_at is None or now - self.api_ok_at > self.settings.ready_budget:
            problems.append("API server has not answered recently")
        return problems


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
