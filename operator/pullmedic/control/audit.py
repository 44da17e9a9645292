"""Audit: would the images of running workloads still pull for a new pod?

A tag deleted upstream or a credential that expired only bites when a pod is rescheduled
or a node is added. The auditor checks the images of workload templates in the
namespaces a policy selects (``spec.audit.enabled``), each at most once per period and
within a per-registry-host budget (in the spirit of kube-image-keeper's 25 checks per
3 hours), with the credentials a new pod would have. Findings go to the policy status, an
Event on the workload when its result changes, and the gauge
``pullmedic_image_unavailable``. One check answers for every workload with the same image
and the same credentials (namespace, pull secrets, ServiceAccount): a thousand workloads
on a few images cost a few checks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pullmedic.control.diagnoser import Diagnoser
from pullmedic.control.reporting import Reporter
from pullmedic.core import policy as pol
from pullmedic.core import reference
from pullmedic.core.actions import ObjectRef
from pullmedic.core.admission import pod_spec_of
from pullmedic.core.diagnosis import Cause, Diagnosis
from pullmedic.core.inventory import Inventory
from pullmedic.core.platforms import Platform
from pullmedic.core.policystatus import UnavailableImage
from pullmedic.core.tokenmode import PodIdentity
from pullmedic.kube.client import COLLECTIONS, KubeApi, KubeError
from pullmedic.kube.lookups import Lookups
from pullmedic.telemetry import metrics

AUDITED_KINDS = tuple(COLLECTIONS)  # Deployment, StatefulSet, DaemonSet, CronJob


@dataclass(frozen=True)
class AuditSettings:
    checks_per_host: int = 25
    period: float = 3 * 3600.0  # each image is checked at most once per period
    platform: str = "linux/amd64"


class HostBudget:
    """At most ``n`` checks per registry host in any ``period`` (a sliding window): a
    thousand workloads on one registry never turn into a thousand requests at once."""

    def __init__(self, n: int, period: float) -> None:
        self.n = n
        self.period = period
        self._used: dict[str, list[float]] = {}

    def take(self, host: str, now: float) -> bool:
        used = [t for t in self._used.get(host, []) if now - t < self.period]
        if len(used) >= self.n:
            self._used[host] = used
            return False
        used.append(now)
        self._used[host] = used
        return True


@dataclass(frozen=True)
class Item:
    """One container image of one workload template."""

    workload: ObjectRef
    container: str
    image: str
    pull_secrets: tuple[str, ...]
    service_account: str

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.workload), self.container)

    @property
    def check_key(self) -> tuple[str, str, tuple[str, ...], str]:
        """Items with equal check keys get the same answer: one check serves them all."""
        return (self.image, self.workload.namespace, self.pull_secrets, self.service_account)


@dataclass
class Finding:
    item: Item
    cause: str
    summary: str
    checked: float  # wall clock

    @property
    def pullable(self) -> bool:
        return self.cause == str(Cause.ImageAvailable)

    def entry(self) -> UnavailableImage:
        return {
            "workload": str(self.item.workload),
            "container": self.item.container,
            "image": self.item.image,
            "cause": self.cause,
            "message": self.summary[:300],
            "lastChecked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.checked)),
        }


def items_of(obj: Mapping[str, Any]) -> list[Item]:
    view = pod_spec_of(obj)
    if view is None:
        return []
    meta = obj.get("metadata") or {}
    ref = ObjectRef(
        str(obj.get("kind", "")),
        str(meta.get("namespace", "")),
        str(meta.get("name", "")),
        str(meta.get("uid", "")),
    )
    return [
        Item(ref, c.name, c.image, view.pull_secrets, view.service_account) for c in view.containers
    ]


def host_of(image: str) -> str:
    try:
        return reference.parse(image).registry_host
    except reference.InvalidReference:
        return ""


@dataclass
class AuditRun:
    checked: int = 0
    deferred: int = 0  # due, but over a host's budget: checked in a later tick
    changed: list[Finding] = field(default_factory=list)


class Auditor:
    def __init__(
        self,
        kube: KubeApi,
        prober: Diagnoser,
        lookups: Lookups,
        settings: AuditSettings,
        *,
        on_change: Callable[[Finding, Finding | None], Any] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.prober = prober
        self.lookups = lookups
        self.s = settings
        self.platform = Platform.parse(settings.platform)
        self.budget = HostBudget(settings.checks_per_host, settings.period)
        self.findings: dict[tuple[str, str], Finding] = {}
        self._shared: dict[tuple[str, str, tuple[str, ...], str], Finding] = {}
        self.on_change = on_change
        self.wall = wall

    async def workloads(self, namespaces: Iterable[str] | None) -> list[Item]:
        """Template images in ``namespaces`` (None: all)."""
        wanted = set(namespaces) if namespaces is not None else None
        out: list[Item] = []
        for kind in AUDITED_KINDS:
            one = next(iter(wanted)) if wanted is not None and len(wanted) == 1 else ""
            for obj in await self.kube.list(kind, one):
                ns = (obj.get("metadata") or {}).get("namespace")
                if wanted is None or ns in wanted:
                    out.extend(items_of(obj))
        return out

    async def check(self, item: Item, tags: pol.TagCorrection | None = None) -> Finding:
        keyring = await self.lookups.template_keyring(
            item.workload.namespace, item.pull_secrets, item.service_account
        )
        # A new pod from this template runs as its ServiceAccount (a token-mode provider
        # gets that account's token; not bound: the pod does not exist yet).
        pod = PodIdentity(item.workload.namespace, item.service_account)
        d: Diagnosis = await self.prober.diagnose(
            item.image, keyring, self.platform, suggest=True, tag_policy=tags, pod=pod
        )
        return Finding(item, str(d.cause), d.summary, self.wall())

    async def run(self, items: Iterable[tuple[Item, pol.TagCorrection | None]]) -> AuditRun:
        """Check what is due, within the budget; forget workloads that are gone."""
        now = self.wall()
        run = AuditRun()
        seen: set[tuple[str, str]] = set()
        for item, tags in items:
            seen.add(item.key)
            old = self.findings.get(item.key)
            if (
                old is not None
                and old.item.image == item.image
                and now - old.checked < self.s.period
            ):
                continue
            shared = self._shared.get(item.check_key)
            if shared is not None and now - shared.checked < self.s.period:
                finding = Finding(item, shared.cause, shared.summary, shared.checked)
            elif not self.budget.take(host_of(item.image), now):
                run.deferred += 1
                continue
            else:
                finding = await self.check(item, tags)
                run.checked += 1
                self._shared[item.check_key] = finding
            self.findings[item.key] = finding
            changed = old is None or old.cause != finding.cause or old.item.image != item.image
            if changed and (old is not None or not finding.pullable):
                run.changed.append(finding)
                if self.on_change is not None:
                    await self.on_change(finding, old)
            _gauge(finding, old)
        for key in [k for k in self.findings if k not in seen]:
            gone = self.findings.pop(key)
            _gauge(None, gone)
        for ck in [k for k, f in self._shared.items() if now - f.checked >= 2 * self.s.period]:
            del self._shared[ck]
        return run

    def unavailable(self, namespaces: Iterable[str] | None = None) -> list[Finding]:
        ns = set(namespaces) if namespaces is not None else None
        return sorted(
            (
                f
                for f in self.findings.values()
                if not f.pullable and (ns is None or f.item.workload.namespace in ns)
            ),
            key=lambda f: f.item.key,
        )


def _gauge(new: Finding | None, old: Finding | None) -> None:
    if old is not None and not old.pullable:
        w = old.item.workload
        with contextlib.suppress(KeyError):  # never set (it was pullable before)
            metrics.IMAGE_UNAVAILABLE.remove(w.namespace, w.kind, w.name, old.cause)
    if new is not None and not new.pullable:
        w = new.item.workload
        metrics.IMAGE_UNAVAILABLE.labels(
            namespace=w.namespace, kind=w.kind, name=w.name, cause=new.cause
        ).set(1)


class PolicyAudit:
    """The operator's side: which policies audit which namespaces, and what to report."""

    def __init__(
        self,
        auditor: Auditor,
        inventory: Inventory,
        reporter_kube: KubeApi,
        operator_namespace: str | None,
        acting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.auditor = auditor
        self.inv = inventory
        self.reporter = Reporter(reporter_kube)
        self.operator_namespace = operator_namespace
        self.acting = acting
        auditor.on_change = self._changed

    def _scope(self) -> dict[str, pol.Policy]:
        """Namespace -> the auditing policy that selects it."""
        out: dict[str, pol.Policy] = {}
        policies = sorted(
            (p for p in self.inv.policies.values() if p.audit),
            key=lambda p: (not p.is_cluster, p.priority),
        )
        for p in policies:  # a PullPolicy, sorted last, overrides a ClusterPullPolicy
            for ns, labels in self.inv.namespaces.items():
                if p.selects_namespace(ns, labels, self.operator_namespace):
                    out[ns] = p
        return out

    async def tick(self) -> None:
        if not self.acting():
            return
        scope = self._scope()
        if not scope:
            return
        try:
            items = await self.auditor.workloads(scope)
        except KubeError:
            return  # next tick
        await self.auditor.run((i, scope[i.workload.namespace].tags) for i in items)
        for key, p in self.inv.policies.items():
            st = self.inv.stats.get(key)
            if st is None or not p.audit:
                continue
            mine = [ns for ns, q in scope.items() if q.key == key]
            entries = [f.entry() for f in self.auditor.unavailable(mine)][:100]
            if entries != st.audit:
                st.audit = entries
                st.dirty = True

    async def _changed(self, new: Finding, old: Finding | None) -> None:
        i = new.item
        if new.pullable:
            await self.reporter.image_available_again(i.workload, i.container, i.image)
        else:
            await self.reporter.image_unavailable(
                i.workload, i.container, i.image, new.cause, new.summary
            )
