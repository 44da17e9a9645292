"""What the operator knows of the cluster besides stuck pods: policies, namespace labels
and each policy's running figures. Filled by the watches, read by decisions."""

from __future__ import annotations

from dataclasses import dataclass, field

from pullmedic.core import policy as pol
from pullmedic.core.accounting import PolicyStats


@dataclass
class Inventory:
    policies: dict[str, pol.Policy] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    stats: dict[str, PolicyStats] = field(default_factory=dict)
    terminating: set[str] = field(default_factory=set)  # namespaces being deleted

    def stats_of(self, policy: pol.Policy | None) -> PolicyStats | None:
        return self.stats.get(policy.key) if policy is not None else None
