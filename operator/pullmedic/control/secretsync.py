"""Managed secret copies follow their source: a rotated registry password reaches every
namespace a ClusterPullPolicy copied it to, without watching all secrets."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pullmedic.control.reporting import Reporter
from pullmedic.core import policy as pol
from pullmedic.core.actions import Action, ActionType, ObjectRef
from pullmedic.core.inventory import Inventory
from pullmedic.kube.actuator import Actuator
from pullmedic.kube.client import KubeError
from pullmedic.telemetry import metrics

log = logging.getLogger("pullmedic")


class SecretSync:
    def __init__(
        self,
        actuator: Actuator,
        inventory: Inventory,
        reporter: Reporter,
        operator_namespace: str | None,
        acting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.acting = acting
        self.actuator = actuator
        self.inv = inventory
        self.reporter = reporter
        self.operator_namespace = operator_namespace

    async def sync(self) -> None:
        if not self.acting():
            return
        for key, st in list(self.inv.stats.items()):
            policy = self.inv.policies.get(key)
            if policy is None or not policy.is_cluster:
                continue
            for src, dst in sorted(st.copies):
                await self.refresh(policy, src, dst)

    async def refresh(self, policy: pol.Policy, src: str, dst: str) -> str:
        """The outcome of refreshing one copy ("applied", "unchanged", "dry-run", ...)."""
        src_ns, _, src_name = src.partition("/")
        dst_ns, _, dst_name = dst.partition("/")
        if pol.SecretRef(src_ns, src_name) not in policy.secrets:
            return "skipped"  # no longer a candidate of this policy: leave the copy alone
        if dst_ns not in self.inv.namespaces or not policy.selects_namespace(
            dst_ns, self.inv.namespaces[dst_ns], self.operator_namespace
        ):
            return "skipped"  # never write into a namespace the policy does not select
        action = Action(
            ActionType.COPY_SECRET,
            ObjectRef("Secret", dst_ns, dst_name),
            f"refresh {dst} from {src}",
            source=pol.SecretRef(src_ns, src_name),
            secret=dst_name,
        )
        try:
            result = await self.actuator.apply_action(action)
        except KubeError as e:
            log.warning("could not refresh %s from %s: %s", dst, src, e)
            return "failed"
        metrics.ACTIONS.labels(action="RefreshSecret", outcome=result.outcome).inc()
        if result.outcome == "applied":
            await self.reporter.secret_refreshed(policy, src, dst)
        return result.outcome
