"""The control loop, assembled: watch events in, supervised decisions and status out.

This module only wires the parts together and routes inputs: grouping (which pods belong
together), the scheduler (when a group is decided), remediation (how), status and the
background loops. Each part is in a module of its own name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pullmedic.control.audit import Auditor, AuditSettings, PolicyAudit
from pullmedic.control.diagnoser import Diagnoser
from pullmedic.control.health import HealthChecks, HealthSettings
from pullmedic.control.remediation import Clocks, Remediator
from pullmedic.control.reporting import Reporter
from pullmedic.control.scheduler import Scheduler, SchedulerSettings
from pullmedic.control.secretsync import SecretSync
from pullmedic.control.status import PolicyStatus
from pullmedic.control.supervision import Supervisor
from pullmedic.control.sweeper import Sweeper
from pullmedic.core.circuit import CircuitBreaker
from pullmedic.core.detection import is_terminating, might_be_stuck, stuck_containers
from pullmedic.core.grouping import Groups, PodState
from pullmedic.core.inventory import Inventory
from pullmedic.core.keyring import NodeRegistries
from pullmedic.core.sharding import HANDOFF, Shard, group_shard, handoff_target
from pullmedic.kube import events
from pullmedic.kube.actuator import Actuator
from pullmedic.kube.client import KubeApi
from pullmedic.kube.handoff import HandOff
from pullmedic.kube.leadership import LeaseElector, LeaseSettings
from pullmedic.kube.podwatch import PodWatch, PodWatchSettings, Source


@dataclass(frozen=True)
class EngineSettings:
    operator_namespace: str | None = None
    default_platform: str = "linux/amd64"
    debounce: float = 0.25  # gather sibling pods of one owner before deciding
    recheck_after: float = 30.0  # re-diagnose a group still stuck after this long
    decision_timeout: float = 120.0  # a decision still running after this is cancelled
    retry_base: float = 2.5  # first retry of a failed decision; doubles up to 300 s
    circuit_window: float = 3600.0
    status_interval: float = 1.0
    secret_sync_interval: float = 60.0  # how often managed copies follow their source
    sweep_interval: float = 60.0
    sweep_max_age: float = 300.0
    journal_grace: float = 10.0  # a restarted process's chance to continue a fix itself
    api_check_interval: float = 5.0  # while down: every second
    ready_budget: float = 30.0  # see health.HealthSettings
    pod_watch_budget: float = 420.0
    node_registries: tuple[str, ...] = ()  # nodes authenticate here themselves
    lease: LeaseSettings | None = None  # leader election; None: this replica always acts
    audit: AuditSettings = field(default_factory=AuditSettings)
    audit_interval: float = 60.0
    dry_run: bool = False
    shard: Shard = field(default_factory=Shard)  # which pods this replica watches and owns


class Engine:
    def __init__(
        self,
        kube: KubeApi,
        prober: Diagnoser,
        settings: EngineSettings,
        clocks: Clocks | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clocks = clocks or Clocks()
        self.inventory = Inventory()
        self.groups = Groups(follow_up_window=settings.recheck_after)
        self.circuit = CircuitBreaker(settings.circuit_window)
        self.outbox = events.Outbox(self.clocks.monotonic)  # keyed Events to post again
        self.remediator = Remediator(
            kube=kube,
            prober=prober,
            groups=self.groups,
            inventory=self.inventory,
            circuit=self.circuit,
            operator_namespace=settings.operator_namespace,
            follow_up_window=settings.recheck_after,
            default_platform=settings.default_platform,
            dry_run=settings.dry_run,
            clocks=self.clocks,
            node_registries=NodeRegistries.parse(settings.node_registries)[0],
            acting=self.acting,
            journal=lambda key: self.status.journal(key),
            outbox=self.outbox,
        )
        self.scheduler = Scheduler(
            self.groups,
            self.remediator.decide,
            SchedulerSettings(
                debounce=settings.debounce,
                recheck_after=settings.recheck_after,
                decision_timeout=settings.decision_timeout,
                postpone_base=min(0.5, settings.retry_base),
                retry_base=settings.retry_base,
            ),
            clock=self.clocks.monotonic,
        )
        self.elector = (
            LeaseElector(
                kube, settings.lease, on_change=self._leadership, clock=self.clocks.monotonic
            )
            if settings.lease is not None
            else None
        )
        self.scheduler.paused = self.elector is not None  # standby until elected
        reporter = Reporter(kube, self.outbox)
        self.shard = settings.shard
        self.status = PolicyStatus(
            kube,
            self.inventory,
            self.groups,
            reporter,
            self.clocks.monotonic,
            self.acting,
            lead=self.acting_for_all,
            part=self.shard.name if self.shard.sharded else "",
        )
        self.secret_sync = SecretSync(
            Actuator(kube, dry_run=settings.dry_run),
            self.inventory,
            reporter,
            settings.operator_namespace,
            self.acting,
        )
        self.sweeper = Sweeper(
            kube,
            self.groups,
            self._recovered,
            max_age=settings.sweep_max_age,
            clock=self.clocks.monotonic,
        )
        self.supervisor = Supervisor(self.clocks.monotonic)
        self.supervisor.every("status", settings.status_interval, self._status_tick)
        self.supervisor.every(
            "secret-sync", settings.secret_sync_interval, self.secret_sync.sync, deadline=300
        )
        self.supervisor.every("sweeper", settings.sweep_interval, self.sweeper.sweep, deadline=600)
        self.health = HealthChecks(
            kube,
            self.supervisor,
            self.scheduler,
            self.groups,
            lambda: len(self.inventory.namespaces),
            HealthSettings(
                settings.ready_budget,
                settings.pod_watch_budget,
                api_check_interval=settings.api_check_interval,
            ),
            self.clocks.monotonic,
            on_api_back=self._api_back,
        )
        self.supervisor.every(
            "api-check", min(1.0, settings.api_check_interval), self.health.check_api
        )
        if self.elector is not None:
            self.supervisor.every("lease", self.elector.s.retry, self.elector.tick, deadline=30)
        self.audit = PolicyAudit(
            Auditor(kube, prober, self.remediator.lookups, settings.audit),
            self.inventory,
            kube,
            settings.operator_namespace,
            self.acting_for_all,
        )
        self.supervisor.every("audit", settings.audit_interval, self.audit.tick, deadline=900)
        self._resuming: set[asyncio.Task[None]] = set()
        self.pod_watch: PodWatch | None = None
        self.handoff_watch: PodWatch | None = None  # pods other shards hand to this one
        self.handoff = HandOff(kube, self.acting)
        if self.shard.sharded:
            self.supervisor.every("handoff", 0.2, self.handoff.flush, deadline=60)

    def acting(self) -> bool:
        """True on the one replica (of this shard) that decides and writes."""
        return self.elector is None or self.elector.leader

    def acting_for_all(self) -> bool:
        """Duties of the whole cluster, not of a shard's pods (policy conditions, the
        status's top-level sum, the audit): the acting replica of shard 0 only."""
        return self.shard.index == 0 and self.acting()

    def _leadership(self, leader: bool) -> None:
        if not leader:
            self.scheduler.pause()
            return
        self.scheduler.resume()
        task = asyncio.get_running_loop().create_task(self.status.resume())
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    # ---- inputs -------------------------------------------------------------------------

    @property
    def pods(self) -> dict[str, PodState]:
        return self.groups.pods

    def on_namespace(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name")
        if not name:
            return
        if event_type == "DELETED":
            self.inventory.namespaces.pop(name, None)
            self.inventory.terminating.discard(name)
            return
        meta = body.get("metadata") or {}
        self.inventory.namespaces[name] = dict(meta.get("labels") or {})
        phase = (body.get("status") or {}).get("phase")
        if phase == "Terminating" or meta.get("deletionTimestamp"):
            self.inventory.terminating.add(name)  # its pods are going; nothing to heal
        else:
            self.inventory.terminating.discard(name)

    async def on_policy(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        await self.status.on_policy(event_type, body)

    def on_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Cheap: runs for every pod event that might concern a pull failure."""
        now = self.clocks.monotonic()
        self.health.saw_pod_event()
        wakes, recovered = self.groups.observe(event_type, body, now, self.clocks.wall())
        if recovered is not None:
            self._recovered(recovered)
        for w in wakes:
            self.scheduler.schedule(w.group, force=w.force)

    def attach_pod_watch(
        self,
        source: Source,
        settings: PodWatchSettings | None = None,
        handoff_source: Source | None = None,
    ) -> None:
        """Watch pods with our own lean watch (before start()). A sharded replica's second
        watch (the pods handed to it) needs a source of its own: a failing watch closes
        its source's connections, and must not take the other watch's stream with it."""
        s = replace(settings or PodWatchSettings(), shard_selector=self.shard.selector())
        shard = self.shard
        self.pod_watch = PodWatch(
            source,
            self._pod_event,
            # Each watch re-lists only its own pods: it may declare only those gone.
            lambda: [u for u in self.groups.pods if shard.holds(u)],
            settings=s,
            on_heartbeat=lambda: self._pod_heartbeat("pod-watch"),
            clock=self.clocks.monotonic,
        )
        self.supervisor.forever("pod-watch", self.pod_watch.run, silence=2 * s.read_timeout + 30)
        if not shard.sharded:
            return
        h = replace(s, shard_selector="", label_selector=HANDOFF.selector(shard))
        self.handoff_watch = PodWatch(
            handoff_source or source,
            self._handed_event,
            lambda: [u for u in self.groups.pods if not shard.holds(u)],
            settings=h,
            on_heartbeat=lambda: self._pod_heartbeat("pod-handoff-watch"),
            clock=self.clocks.monotonic,
        )
        self.supervisor.forever(
            "pod-handoff-watch", self.handoff_watch.run, silence=2 * h.read_timeout + 30
        )

    def _pod_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        self.health.saw_pod_event()
        if not self.shard.sharded:
            if might_be_stuck(body, self.groups.pods):
                self.on_pod(event_type, body)
            return
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not self.shard.holds(uid):
            return  # another shard's pod (the API server did not filter)
        if event_type == "DELETED":
            self.handoff.forget(uid)
        target = handoff_target(self.shard, body)
        if target is None:
            if might_be_stuck(body, self.groups.pods):
                self.on_pod(event_type, body)
            return
        if event_type != "DELETED" and might_be_stuck(body, ()):
            stuck = not is_terminating(body) and bool(stuck_containers(body))
            self.handoff.note(body, target if stuck else None)
        else:
            self.handoff.forget(uid)

    def _handed_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A pod another shard watches and handed over: its group is ours."""
        self.health.saw_pod_event()
        if group_shard(self.shard, body) == self.shard.index and (
            event_type == "DELETED" or might_be_stuck(body, self.groups.pods)
        ):
            self.on_pod(event_type, body)

    def _pod_heartbeat(self, name: str) -> None:
        self.supervisor.beat(name)
        self.health.saw_pod_event()

    def saw_pod_event(self) -> None:
        """Any pod event at all, failing or not: the watch is alive."""
        self.health.saw_pod_event()

    def _api_back(self) -> None:
        """The API server answers again: restart the loops and retry the decisions that
        failed while it was away, now rather than at the end of their back-off."""
        self.supervisor.wake()
        self.scheduler.retry_now()

    def _recovered(self, state: PodState) -> None:
        self.status.pod_recovered(state)

    # ---- background ---------------------------------------------------------------------

    async def _status_tick(self) -> None:
        await self.status.resolve(self.settings.journal_grace)
        await self.status.flush()
        if self.outbox.pending:  # even after losing the lead: a keyed Event is idempotent
            await self.outbox.flush(self.kube)
        self.circuit.forget_before(self.clocks.wall() - self.settings.circuit_window)
        self.groups.forget_idle(
            self.clocks.monotonic() - max(120.0, 2 * self.settings.recheck_after)
        )

    def start(self) -> None:
        self.supervisor.start()

    async def stop(self) -> None:
        self.scheduler.cancel_all()
        await self.supervisor.stop()
        if self.elector is not None:
            await self.elector.release()
        if self.pod_watch is not None:
            await self.pod_watch.source.aclose()
        if self.handoff_watch is not None:
            await self.handoff_watch.source.aclose()

    def liveness(self) -> list[str]:
        return self.health.liveness()

    def readiness(self) -> list[str]:
        problems = self.health.readiness()
        if self.pod_watch is not None and not self.pod_watch.listed:
            problems.append("pod watch has not listed yet")
        if self.handoff_watch is not None and not self.handoff_watch.listed:
            problems.append("hand-off pod watch has not listed yet")
        return problems


__all__ = ["Engine", "EngineSettings"]
