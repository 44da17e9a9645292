"""The one table of the object kinds pullmedic reads or writes: where each lives in the
API, what kubectl calls it, where a workload keeps its pod spec, and what a fix may do to it.

Every module asks here instead of keeping its own list, so adding a kind (or learning a
fact about one) changes one row, and the API client, the planner, the circuit breaker,
the admission webhook and `kubectl pullmedic explain` cannot disagree about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    name: str  # as in an object's `kind`
    api_version: str  # group/version ("v1" for the core group)
    plural: str
    namespaced: bool = True
    kubectl: str = ""  # the resource name kubectl takes ("" when pullmedic prints none)
    aliases: tuple[str, ...] = ()  # more names a user may type (`kubectl pullmedic explain`)
    # JSON pointer to the pod spec in an object of this kind ("" when it holds none).
    pod_spec: str = ""
    template_fix: bool = False  # its pod template may be patched to fix an image for good
    recreates: bool = False  # it replaces a deleted pod with an equivalent one
    annotatable: bool = False  # pullmedic's ClusterRole may write its annotations
    audited: bool = False  # its templates are listed and checked by the audit

    @property
    def api_base(self) -> str:
        core = "/" not in self.api_version
        return f"/api/{self.api_version}" if core else f"/apis/{self.api_version}"

    def path(self, ns: str, name: str = "") -> str:
        """The object's URL path (the collection's without ``name``)."""
        scope = f"/namespaces/{ns}" if self.namespaced else ""
        base = f"{self.api_base}{scope}/{self.plural}"
        return f"{base}/{name}" if name else base


KINDS: Mapping[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "Deployment",
            "apps/v1",
            "deployments",
            kubectl="deployment",
            aliases=("deploy",),
            template_fix=True,
            recreates=True,
            pod_spec="/spec/template/spec",
            annotatable=True,
            audited=True,
        ),
        Kind(
            "StatefulSet",
            "apps/v1",
            "statefulsets",
            kubectl="statefulset",
            aliases=("sts",),
            template_fix=True,
            recreates=True,
            pod_spec="/spec/template/spec",
            annotatable=True,
            audited=True,
        ),
        Kind(
            "DaemonSet",
            "apps/v1",
            "daemonsets",
            kubectl="daemonset",
            aliases=("ds",),
            template_fix=True,
            recreates=True,
            pod_spec="/spec/template/spec",
            annotatable=True,
            audited=True,
        ),
        Kind(
            "CronJob",
            "batch/v1",
            "cronjobs",
            kubectl="cronjob",
            aliases=("cj",),
            pod_spec="/spec/jobTemplate/spec/template/spec",
            template_fix=True,
            annotatable=True,
            audited=True,
        ),
        # Owned by a Deployment, or bare: its template is not what makes new pods right.
        Kind(
            "ReplicaSet",
            "apps/v1",
            "replicasets",
            kubectl="replicaset",
            aliases=("rs",),
            pod_spec="/spec/template/spec",
            recreates=True,
        ),
        # A Job's template is immutable; deleting its pod may count as a failure.
        Kind("Job", "batch/v1", "jobs", kubectl="job", pod_spec="/spec/template/spec"),
        Kind("Pod", "v1", "pods", kubectl="pod", aliases=("po",), pod_spec="/spec"),
        Kind("ServiceAccount", "v1", "serviceaccounts", kubectl="serviceaccount"),
        Kind("Secret", "v1", "secrets", kubectl="secret"),
        Kind("Event", "v1", "events"),
        Kind("Node", "v1", "nodes", namespaced=False, kubectl="node"),
        Kind("Lease", "coordination.k8s.io/v1", "leases"),
        # The webhook's own configuration: its caBundle, with --webhook-tls=self.
        Kind(
            "MutatingWebhookConfiguration",
            "admissionregistration.k8s.io/v1",
            "mutatingwebhookconfigurations",
            namespaced=False,
        ),
        Kind("PullPolicy", "pullmedic.dev/v1alpha1", "pullpolicies", kubectl="pullpolicy"),
        Kind(
            "ClusterPullPolicy",
            "pullmedic.dev/v1alpha1",
            "clusterpullpolicies",
            namespaced=False,
            kubectl="clusterpullpolicy",
        ),
    )
}

# Derived views, for the questions modules ask most.
TEMPLATE_FIX = frozenset(k.name for k in KINDS.values() if k.template_fix)
# (Deleting a Job's pod can count as a failure; a Tekton TaskRun's or Argo Workflow's pod
# deletion fails the run: none of them recreates.)
RECREATING = frozenset(k.name for k in KINDS.values() if k.recreates)
ANNOTATABLE = frozenset(k.name for k in KINDS.values() if k.annotatable)
AUDITED = tuple(k.name for k in KINDS.values() if k.audited)
WITH_POD_SPEC = {k.name: k.pod_spec for k in KINDS.values() if k.pod_spec}


def kubectl_name(kind: str) -> str:
    k = KINDS.get(kind)
    return k.kubectl if k is not None and k.kubectl else kind.lower()


def by_user_name(name: str) -> str | None:
    """The kind a user means by ``deployment``, ``deployments``, ``deploy``, ``Deployment``."""
    low = name.lower()
    for k in KINDS.values():
        if low in (k.name.lower(), k.kubectl, k.plural, *k.aliases):
            return k.name
    return None


def pod_spec_of(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The pod spec inside an object of ``kind`` (empty when it has none)."""
    cur: Any = obj
    for part in WITH_POD_SPEC.get(kind, "").strip("/").split("/"):
        if not part:
            return {}
        cur = (cur or {}).get(part) if isinstance(cur, Mapping) else None
    return cur if isinstance(cur, Mapping) else {}
