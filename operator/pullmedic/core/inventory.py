"""What the operator knows of the cluster besides stuck pods: policies, namespace labels
and each policy's running figures. Filled by the watches, read by decisions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pullmedic.core import policy as pol
from pullmedic.core import reference
from pullmedic.core.accounting import PolicyStats


@dataclass
class Inventory:
    policies: dict[str, pol.Policy] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    stats: dict[str, PolicyStats] = field(default_factory=dict)
    terminating: set[str] = field(default_factory=set)  # namespaces being deleted

    def stats_of(self, policy: pol.Policy | None) -> PolicyStats | None:
        return self.stats.get(policy.key) if policy is not None else None

    def choose(
        self, ns: str, pod_labels: Mapping[str, str], image: str, operator_namespace: str | None
    ) -> pol.Policy | None:
        """The policy that acts on ``image`` in a pod of ``ns`` (the decision's and the
        admission webhook's choice alike), matching the image as normalised and as familiar."""
        try:
            ref = reference.parse(image)
            canonical, familiar = str(ref), ref.familiar()
        except reference.InvalidReference:
            canonical = familiar = image
        return pol.choose(
            list(self.policies.values()),
            namespace=ns,
            namespace_labels=self.namespaces.get(ns, {}),
            pod_labels=pod_labels,
            image=canonical,
            familiar_image=familiar,
            operator_namespace=operator_namespace,
        )
