"""What a plan is made of: the failure it answers, its actions, and what applying one did.

Values only: :mod:`pullmedic.core.planning` decides them, the actuator applies them,
:mod:`pullmedic.core.kubectl` prints them as commands, records and accounting remember
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pullmedic.core.diagnosis import Cause
from pullmedic.core.policy import Mode, SecretRef

GITOPS_LABELS = (
    "app.kubernetes.io/managed-by=argocd",
    "argocd.argoproj.io/instance",
    "kustomize.toolkit.fluxcd.io/name",
    "helm.toolkit.fluxcd.io/name",
)
GITOPS_ANNOTATIONS = ("argocd.argoproj.io/tracking-id", "argocd.argoproj.io/instance")


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Failure:
    """One stuck container of one pod, with the owner chain already resolved."""

    pod: ObjectRef
    container: str
    container_kind: str  # "containers" | "initContainers" | "ephemeralContainers"
    container_index: int
    image: str
    reason: str
    service_account: str
    pod_pull_secrets: tuple[str, ...] = ()
    workload: ObjectRef | None = None  # Deployment/StatefulSet/DaemonSet/CronJob, or Job
    job: ObjectRef | None = None  # the Job between a CronJob and its pods
    workload_container_index: int | None = None
    workload_labels: tuple[tuple[str, str], ...] = ()
    workload_annotations: tuple[tuple[str, str], ...] = ()
    stuck_pods: tuple[ObjectRef, ...] = ()
    # Pull secrets the owner's pod template lists itself (None: no template known). When
    # it lists any, admission does not add the ServiceAccount's: the template must change.
    template_pull_secrets: tuple[str, ...] | None = None

    @property
    def gitops_managed(self) -> bool:
        labels = dict(self.workload_labels)
        annotations = dict(self.workload_annotations)
        for item in GITOPS_LABELS:
            k, _, v = item.partition("=")
            if k in labels and (not v or labels[k] == v):
                return True
        return any(a in annotations for a in GITOPS_ANNOTATIONS)


class ActionType(StrEnum):
    PATCH_WORKLOAD_IMAGE = "PatchWorkloadImage"
    PATCH_POD_IMAGE = "PatchPodImage"
    COPY_SECRET = "CopySecret"
    ATTACH_PULL_SECRET = "AttachPullSecret"
    ADD_TEMPLATE_PULL_SECRET = "AddTemplatePullSecret"
    RECREATE_PODS = "RecreatePods"
    REPORT = "Report"


@dataclass(frozen=True)
class Action:
    type: ActionType
    target: ObjectRef
    summary: str
    container: str = ""
    container_path: str = ""  # JSON pointer of the container's image field
    old_image: str = ""
    new_image: str = ""
    source: SecretRef | None = None
    secret: str = ""
    pods: tuple[ObjectRef, ...] = ()

    @property
    def mutating(self) -> bool:
        return self.type is not ActionType.REPORT


@dataclass(frozen=True)
class Plan:
    failure: Failure
    cause: Cause
    policy: str | None
    mode: Mode
    actions: tuple[Action, ...] = ()
    apply: bool = False
    note: str = ""
    suggestions: tuple[str, ...] = field(default=())

    @property
    def fixable(self) -> bool:
        return any(a.mutating for a in self.actions)

    def render(self) -> str:
        head = (
            f"{self.failure.workload or self.failure.pod} container {self.failure.container}: "
            f"{self.cause} -> {'apply' if self.apply else 'suggest'} ({self.mode}, "
            f"policy {self.policy or 'none'})"
        )
        lines = [head]
        lines += [f"  - {a.type}: {a.summary}" for a in self.actions]
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Result:
    """What applying one action did; ``unknown`` when the answer was lost in transit."""

    action: Action
    outcome: str  # "applied" | "unchanged" | "skipped" | "failed" | "dry-run"
    detail: str = ""
    unknown: bool = False  # failed in transit: the server may have applied it
