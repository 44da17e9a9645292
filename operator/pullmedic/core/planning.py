"""Remediation planning: (failure, diagnosis, policy) -> a plan. Decides; never does.

A plan is a list of actions that can be printed, dry-run or applied idempotently by the
actuator. Every branch here is a policy decision a platform engineer can read.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field, replace
from enum import StrEnum

from pullmedic.core.detection import PULL_REASONS
from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, Cause, Diagnosis
from pullmedic.core.kinds import KINDS, RECREATING, TEMPLATE_FIX, kubectl_name
from pullmedic.core.policy import Mode, Policy, SecretRef

GITOPS_LABELS = (
    "app.kubernetes.io/managed-by=argocd",
    "argocd.argoproj.io/instance",
    "kustomize.toolkit.fluxcd.io/name",
    "helm.toolkit.fluxcd.io/name",
)
GITOPS_ANNOTATIONS = ("argocd.argoproj.io/tracking-id", "argocd.argoproj.io/instance")
MANAGED_SECRET_LABEL = "pullmedic.dev/managed"
SOURCE_ANNOTATION = "pullmedic.dev/source"

# Causes a moved repository explains (the policy's alternatives are tried for them).
MOVE_CAUSES = frozenset(
    {Cause.TagNotFound, Cause.DigestNotFound, Cause.RepositoryNotFound, Cause.NotFoundOrPrivate}
)

# Views of the one table of kinds (kinds.py) that planning reads.
TEMPLATE_PATHS = {name: KINDS[name].pod_spec for name in TEMPLATE_FIX}


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

    def kubectl(self) -> str:
        """The command a human could run instead (Suggest mode publishes it)."""
        t = self.target
        if self.type in (ActionType.PATCH_WORKLOAD_IMAGE, ActionType.PATCH_POD_IMAGE):
            patch = [{"op": "replace", "path": self.container_path, "value": self.new_image}]
            return (
                f"kubectl -n {t.namespace} patch {kubectl_name(t.kind)} "
                f"{t.name} --type=json -p {shlex.quote(json.dumps(patch))}"
            )
        if self.type is ActionType.COPY_SECRET and self.source is not None:
            return (
                f"kubectl -n {self.source.namespace} get secret {self.source.name} -o json | "
                f'jq \'.metadata={{name:"{self.secret}",namespace:"{t.namespace}"}}\' | '
                "kubectl apply -f -"
            )
        if self.type is ActionType.ADD_TEMPLATE_PULL_SECRET:
            add = [{"op": "add", "path": self.container_path, "value": {"name": self.secret}}]
            return (
                f"kubectl -n {t.namespace} patch {kubectl_name(t.kind)} "
                f"{t.name} --type=json -p {shlex.quote(json.dumps(add))}"
            )
        if self.type is ActionType.ATTACH_PULL_SECRET:
            sa_patch = {"imagePullSecrets": [{"name": self.secret}]}
            return (
                f"kubectl -n {t.namespace} patch serviceaccount {t.name} --type=strategic "
                f"-p {shlex.quote(json.dumps(sa_patch))}"
            )
        if self.type is ActionType.RECREATE_PODS:
            names = " ".join(p.name for p in self.pods)
            return f"kubectl -n {t.namespace} delete pod {names}"
        return ""


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


def managed_secret_name(source: SecretRef) -> str:
    """Stable, collision-free name for a copied secret (a DNS-1123 subdomain).

    Namespace names are DNS labels (no dots), so the first dot after the prefix separates
    namespace from name unambiguously: ``a-b/c`` and ``a/b-c`` get different copies. Names
    too long for 253 characters end in a hash of the full source instead.
    """
    name = f"pullmedic.{source.namespace}.{source.name}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(f"{source.namespace}/{source.name}".encode()).hexdigest()[:16]
    return f"{name[:236].rstrip('.-')}.{digest}"


def _image_actions(f: Failure, new_image: str, policy: Policy) -> tuple[list[Action], str]:
    """Where to change an image so the fix lasts: the owner template, else the pod."""
    actions: list[Action] = []
    w = f.workload
    if w is not None and w.kind in TEMPLATE_PATHS and f.workload_container_index is not None:
        path = f"{TEMPLATE_PATHS[w.kind]}/{f.container_kind}/{f.workload_container_index}/image"
        actions.append(
            Action(
                ActionType.PATCH_WORKLOAD_IMAGE,
                w,
                f"set {w.kind} {w.name} container {f.container} image {f.image} -> {new_image}",
                container=f.container,
                container_path=path,
                old_image=f.image,
                new_image=new_image,
            )
        )
    pod_fix_needed = w is None or w.kind == "CronJob" or w.kind == "Job"
    if pod_fix_needed and f.container_kind != "ephemeralContainers":
        # Job templates are immutable and a bare pod has no template: the pod's own image
        # is the only field that makes the pods already running recover.
        if not policy.patch_bare_pods and w is None:
            return actions, "bare pod patching is disabled by the policy"
        for p in f.stuck_pods or (f.pod,):
            actions.append(
                Action(
                    ActionType.PATCH_POD_IMAGE,
                    p,
                    f"set pod {p.name} container {f.container} image {f.image} -> {new_image}",
                    container=f.container,
                    container_path=f"/spec/{f.container_kind}/{f.container_index}/image",
                    old_image=f.image,
                    new_image=new_image,
                )
            )
    elif w is not None and w.kind == "StatefulSet" and policy.recreate_pods and f.stuck_pods:
        # A StatefulSet rollout waits for the stuck ordinal to become Ready: it never does.
        actions.append(_recreate(f))
    return actions, ""


def _recreate(f: Failure) -> Action:
    pods = f.stuck_pods or (f.pod,)
    return Action(
        ActionType.RECREATE_PODS,
        ObjectRef("Pod", f.pod.namespace, "*"),
        f"recreate {len(pods)} stuck pod(s) so they skip the back-off: "
        + ", ".join(p.name for p in pods[:5])
        + (" ..." if len(pods) > 5 else ""),
        pods=pods,
    )


def plan(
    failure: Failure,
    diagnosis: Diagnosis,
    policy: Policy | None,
    *,
    mirror_image: str | None = None,
    alternative: tuple[str, str] | None = None,
    circuit_open: bool = False,
    rate_limited: bool = False,
) -> Plan:
    """Decide what to do about one failure. ``mirror_image`` and ``alternative`` (the
    image under a moved repository's new name, and the move) are set only when verified."""
    cause = diagnosis.cause
    if policy is None:
        return Plan(failure, cause, None, Mode.OBSERVE, note="no policy selects this pod")
    base = Plan(failure, cause, policy.key, policy.mode)
    if circuit_open:
        return replace(
            base,
            note="circuit breaker open: the same cause came back after a "
            "remediation; not acting again until the workload changes",
        )
    actions: list[Action] = []
    note = ""
    fix = diagnosis.fix

    credential_fix = fix is not None and fix.kind == "secret"
    if alternative is not None and cause in MOVE_CAUSES and not credential_fix:
        # The same tag under the repository's new name: closer to what was asked for
        # than another tag of the old one.
        actions, note = _image_actions(failure, alternative[0], policy)
        note = f"repository moved ({alternative[1]})" + (f"; {note}" if note else "")
    elif cause is Cause.InvalidReference:
        note = "an invalid image reference never recovers: fix the manifest"
    elif cause is Cause.DigestNotFound:
        # Whoever pinned a digest chose that exact content: no other tag or digest is "the
        # same image", so it is never replaced; a verified candidate is only mentioned.
        note = "a pinned digest is never re-pinned automatically: pin a digest that exists" + (
            f" (for example {fix.image})"
            if fix is not None and fix.kind == "tag" and fix.image
            else ""
        )
    elif cause in (Cause.TagNotFound, Cause.PlatformMismatch):
        if not policy.tags.enabled:
            note = "tag correction is disabled by the policy"
        elif fix is None or fix.kind != "tag" or not fix.image:
            note = "no verified replacement tag was found"
        else:
            new = fix.image
            if policy.tags.pin_digest and fix.digest and "@" not in new:
                new = f"{new}@{fix.digest}"
            actions, note = _image_actions(failure, new, policy)
    elif cause in CREDENTIAL_CAUSES:
        actions, note = _credential_actions(failure, diagnosis, policy)
    elif cause in (Cause.RegistryUnreachable, Cause.RateLimited):
        if mirror_image:
            actions, note = _image_actions(failure, mirror_image, policy)
        else:
            note = (
                "no mirror configured or the image is not on it; the kubelet keeps retrying"
                if policy.mirrors or cause is Cause.RegistryUnreachable
                else "the registry is rate-limiting; the kubelet retries after its back-off"
            )
    elif cause is Cause.ImageIncomplete:
        # The pull fails the same way on every retry: never "recreate to skip back-off".
        if mirror_image:
            actions, note = _image_actions(failure, mirror_image, policy)
        else:
            note = "the registry cannot serve this image whole and no mirror has it; push it again"
    elif cause is Cause.MalformedSecret:
        note = _malformed_note(diagnosis)
    elif cause is Cause.CredentialProviderFailed:
        note = (
            "the node's credential provider gave no credentials: fix the plugin, its config "
            "or its cloud identity; a pull secret is not attached over it"
        )
    elif cause is Cause.NodeCredentialsUnknown:
        note = (
            "nodes hold the credentials for this registry: check the node's credential "
            "provider or config; a pull secret is not attached over it"
        )
    elif cause is Cause.ImageAvailable and failure.reason == "ErrImageNeverPull":
        # The registry has it, but the kubelet will never pull: recreating changes nothing.
        note = (
            "imagePullPolicy is Never and the node does not have the image (or the pod's "
            "credentials do not grant it); load it on the node or allow pulling"
        )
    elif cause is Cause.ImageAvailable and failure.reason not in PULL_REASONS:
        # Not a pull failure the kubelet backs off from: a new pod would wait the same way.
        note = (
            f"the registry serves the image; the container waits for another reason "
            f"({failure.reason[:200]}): recreating the pod would not help"
        )
    elif cause is Cause.ImageAvailable:
        if (
            failure.workload is not None
            and failure.workload.kind in RECREATING
            and policy.recreate_pods
            and failure.stuck_pods
        ):
            actions = [_recreate(failure)]
            note = "the image is pullable now; recreating skips the remaining back-off"
        else:
            note = "the image is pullable now; the kubelet recovers at its next retry"
    else:
        note = "no automatic remedy for this cause"

    suggestions = tuple(a.kubectl() for a in actions if a.kubectl())
    apply = policy.mode is Mode.REMEDIATE and bool(actions)
    if apply and failure.gitops_managed and not policy.gitops_direct_patch:
        apply, note = False, "managed by GitOps: change the source repository instead"
    if apply and rate_limited:
        apply, note = False, "policy rate limit reached; suggesting only"
    return replace(base, actions=tuple(actions), apply=apply, note=note, suggestions=suggestions)


def _malformed_note(diagnosis: Diagnosis) -> str:
    """A pull secret the kubelet cannot use is its owner's to fix: only they know what it
    should hold. Copying another secret over it would hide the mistake, so never."""
    names = str(diagnosis.details.get("malformedSecrets") or "the pod's pull secret")
    fix = diagnosis.fix
    verified = (
        f"; secret {fix.secret} grants pull, attach it only if that is the intent"
        if fix is not None and fix.kind == "secret" and fix.secret
        else ""
    )
    return f"fix pull secret {names}: the kubelet cannot use it as it is{verified}"


def _credential_actions(
    f: Failure, diagnosis: Diagnosis, policy: Policy
) -> tuple[list[Action], str]:
    fix = diagnosis.fix
    if not policy.credentials_enabled:
        return [], "credential remediation is disabled by the policy"
    if fix is None or fix.kind != "secret" or not fix.secret:
        return [], "none of the policy's candidate secrets grants pull of this image"
    if f.workload is None:
        return [], (
            "a bare pod's pull secrets are immutable: recreate it after adding "
            f"secret {fix.secret} to ServiceAccount {f.service_account}"
        )
    ns, _, name = fix.secret.partition("/")
    source = SecretRef(ns, name)
    actions: list[Action] = []
    target_name = name
    if ns != f.pod.namespace:
        if not policy.is_cluster:
            return [], "a PullPolicy may only use secrets of its own namespace"
        target_name = managed_secret_name(source)
        actions.append(
            Action(
                ActionType.COPY_SECRET,
                ObjectRef("Secret", f.pod.namespace, target_name),
                f"copy secret {source} to {f.pod.namespace}/{target_name} (managed, kept in sync)",
                source=source,
                secret=target_name,
            )
        )
    w = f.workload
    if f.template_pull_secrets and w.kind not in TEMPLATE_PATHS:
        # Admission ignores the ServiceAccount when the pod lists secrets, and this owner's
        # template is not one pullmedic patches: attaching or recreating would change nothing.
        return [], (
            f"the {w.kind}'s pod template lists its own pull secrets; add {fix.secret} "
            "to it (pullmedic patches Deployment, StatefulSet, DaemonSet and CronJob templates)"
        )
    if f.template_pull_secrets:
        # The template names its own pull secrets, so admission ignores the ServiceAccount's:
        # add ours to the template (the rollout replaces the pods).
        actions.append(
            Action(
                ActionType.ADD_TEMPLATE_PULL_SECRET,
                w,
                f"add pull secret {target_name} to {w.kind} {w.name}'s pod template",
                container_path=f"{TEMPLATE_PATHS[w.kind]}/imagePullSecrets/-",
                secret=target_name,
            )
        )
        if w.kind == "StatefulSet" and policy.recreate_pods and f.stuck_pods:
            actions.append(_recreate(f))
        return actions, ""
    sa = ObjectRef("ServiceAccount", f.pod.namespace, f.service_account)
    actions.append(
        Action(
            ActionType.ATTACH_PULL_SECRET,
            sa,
            f"add pull secret {target_name} to ServiceAccount {f.service_account}",
            secret=target_name,
        )
    )
    if policy.recreate_pods and f.stuck_pods and f.workload.kind in RECREATING:
        actions.append(_recreate(f))
        return actions, ""
    return actions, (
        ""
        if f.workload.kind in RECREATING or not f.stuck_pods
        else f"{f.workload.kind} pods are not recreated; its next pods get the secret"
    )


@dataclass(frozen=True)
class Result:
    """What applying one action did; ``unknown`` when the answer was lost in transit."""

    action: Action
    outcome: str  # "applied" | "unchanged" | "skipped" | "failed" | "dry-run"
    detail: str = ""
    unknown: bool = False  # failed in transit: the server may have applied it
