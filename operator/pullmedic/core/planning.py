"""Remediation planning: (failure, diagnosis, policy) -> a plan. Decides; never does.

A plan is a list of actions that can be printed, dry-run or applied idempotently by the
actuator. Every branch here is a policy decision a platform engineer can read.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TypeAlias

from pullmedic.core.actions import Action, ActionType, Failure, ObjectRef, Plan
from pullmedic.core.detection import PULL_REASONS
from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, Cause, Diagnosis
from pullmedic.core.kinds import KINDS, RECREATING, TEMPLATE_FIX
from pullmedic.core.kubectl import command
from pullmedic.core.policy import Mode, Policy, SecretRef

MANAGED_SECRET_LABEL = "pullmedic.dev/managed"
SOURCE_ANNOTATION = "pullmedic.dev/source"

# Causes a moved repository explains (the policy's alternatives are tried for them).
MOVE_CAUSES = frozenset(
    {Cause.TagNotFound, Cause.DigestNotFound, Cause.RepositoryNotFound, Cause.NotFoundOrPrivate}
)

# Views of the one table of kinds (kinds.py) that planning reads.
TEMPLATE_PATHS = {name: KINDS[name].pod_spec for name in TEMPLATE_FIX}

Remedy: TypeAlias = tuple[list[Action], str]  # the actions, and why (or why none)


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


def _image_actions(f: Failure, new_image: str, policy: Policy) -> Remedy:
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
    actions, note = _remedy(failure, diagnosis, policy, mirror_image, alternative)
    suggestions = tuple(c for c in map(command, actions) if c)
    apply = policy.mode is Mode.REMEDIATE and bool(actions)
    if apply and failure.gitops_managed and not policy.gitops_direct_patch:
        apply, note = False, "managed by GitOps: change the source repository instead"
    if apply and rate_limited:
        apply, note = False, "policy rate limit reached; suggesting only"
    return replace(base, actions=tuple(actions), apply=apply, note=note, suggestions=suggestions)


def _remedy(
    f: Failure,
    diagnosis: Diagnosis,
    policy: Policy,
    mirror_image: str | None,
    alternative: tuple[str, str] | None,
) -> Remedy:
    """What would fix this cause under this policy, before mode and guards decide."""
    cause, fix = diagnosis.cause, diagnosis.fix
    credential_fix = fix is not None and fix.kind == "secret"
    if alternative is not None and cause in MOVE_CAUSES and not credential_fix:
        # The same tag under the repository's new name: closer to what was asked for
        # than another tag of the old one.
        actions, note = _image_actions(f, alternative[0], policy)
        return actions, f"repository moved ({alternative[1]})" + (f"; {note}" if note else "")
    if cause is Cause.InvalidReference:
        return [], "an invalid image reference never recovers: fix the manifest"
    if cause is Cause.DigestNotFound:
        # Whoever pinned a digest chose that exact content: no other tag or digest is "the
        # same image", so it is never replaced; a verified candidate is only mentioned.
        return [], "a pinned digest is never re-pinned automatically: pin a digest that exists" + (
            f" (for example {fix.image})"
            if fix is not None and fix.kind == "tag" and fix.image
            else ""
        )
    if cause in (Cause.TagNotFound, Cause.PlatformMismatch):
        return _tag_actions(f, diagnosis, policy)
    if cause in CREDENTIAL_CAUSES:
        return _credential_actions(f, diagnosis, policy)
    if cause in (Cause.RegistryUnreachable, Cause.RateLimited):
        if mirror_image:
            return _image_actions(f, mirror_image, policy)
        return [], (
            "no mirror configured or the image is not on it; the kubelet keeps retrying"
            if policy.mirrors or cause is Cause.RegistryUnreachable
            else "the registry is rate-limiting; the kubelet retries after its back-off"
        )
    if cause is Cause.ImageIncomplete:
        # The pull fails the same way on every retry: never "recreate to skip back-off".
        if mirror_image:
            return _image_actions(f, mirror_image, policy)
        return [], "the registry cannot serve this image whole and no mirror has it; push it again"
    if cause is Cause.MalformedSecret:
        return [], _malformed_note(diagnosis)
    if cause is Cause.CredentialProviderFailed:
        return [], (
            "the node's credential provider gave no credentials: fix the plugin, its config "
            "or its cloud identity; a pull secret is not attached over it"
        )
    if cause is Cause.NodeCredentialsUnknown:
        return [], (
            "nodes hold the credentials for this registry: check the node's credential "
            "provider or config; a pull secret is not attached over it"
        )
    if cause is Cause.ImageAvailable:
        return _available(f, policy)
    return [], "no automatic remedy for this cause"


def _tag_actions(f: Failure, diagnosis: Diagnosis, policy: Policy) -> Remedy:
    """Switch to the verified replacement tag (pinned to its digest if the policy asks)."""
    fix = diagnosis.fix
    if not policy.tags.enabled:
        return [], "tag correction is disabled by the policy"
    if fix is None or fix.kind != "tag" or not fix.image:
        return [], "no verified replacement tag was found"
    new = fix.image
    if policy.tags.pin_digest and fix.digest and "@" not in new:
        new = f"{new}@{fix.digest}"
    return _image_actions(f, new, policy)


def _available(f: Failure, policy: Policy) -> Remedy:
    """The registry serves the image: only the kubelet's back-off is left to skip."""
    if f.reason == "ErrImageNeverPull":
        # The registry has it, but the kubelet will never pull: recreating changes nothing.
        return [], (
            "imagePullPolicy is Never and the node does not have the image (or the pod's "
            "credentials do not grant it); load it on the node or allow pulling"
        )
    if f.reason not in PULL_REASONS:
        # Not a pull failure the kubelet backs off from: a new pod would wait the same way.
        return [], (
            f"the registry serves the image; the container waits for another reason "
            f"({f.reason[:200]}): recreating the pod would not help"
        )
    if (
        f.workload is not None
        and f.workload.kind in RECREATING
        and policy.recreate_pods
        and f.stuck_pods
    ):
        return [_recreate(f)], "the image is pullable now; recreating skips the remaining back-off"
    return [], "the image is pullable now; the kubelet recovers at its next retry"


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


def _credential_actions(f: Failure, diagnosis: Diagnosis, policy: Policy) -> Remedy:
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
