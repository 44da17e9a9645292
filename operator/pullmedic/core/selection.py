"""Which policy governs an image in a pod: the one choice remediation and admission make.

A policy applies when it selects the namespace, the pod's labels and the image (its
globs match either spelling of the name: ``docker.io/library/nginx:1`` or ``nginx:1``);
of those that apply, a namespaced policy wins over a cluster-wide one, then the higher
priority, then the name, so the answer never depends on the order policies arrived in.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from pullmedic.core import reference
from pullmedic.core.inventory import Inventory
from pullmedic.core.policy import Policy


def spellings(image: str) -> tuple[str, str]:
    """(canonical, familiar) spellings of ``image``; as written when it does not parse."""
    try:
        ref = reference.parse(image)
    except reference.InvalidReference:
        return image, image
    return str(ref), ref.familiar()


def selects_image(p: Policy, canonical: str, familiar: str) -> bool:
    """The policy's include/exclude globs, over both spellings; no include: every image."""

    def hit(globs: Iterable[str]) -> bool:
        return any(
            fnmatch.fnmatchcase(canonical, g) or fnmatch.fnmatchcase(familiar, g) for g in globs
        )

    if p.exclude and hit(p.exclude):
        return False
    return not p.include or hit(p.include)


def applies(
    p: Policy,
    *,
    namespace: str,
    namespace_labels: Mapping[str, str] | None,
    pod_labels: Mapping[str, str] | None,
    image: str,
    familiar_image: str,
    operator_namespace: str | None = None,
) -> bool:
    """Whether ``p`` selects this namespace, these pod labels and this image."""
    return (
        p.selects_namespace(namespace, namespace_labels, operator_namespace)
        and p.pod_selector.matches(pod_labels)
        and selects_image(p, image, familiar_image)
    )


def precedence(p: Policy) -> tuple[int, int, str]:
    """Namespaced before cluster-wide, then higher priority, then name for determinism."""
    return (0 if not p.is_cluster else 1, -p.priority, p.key)


def choose(
    inv: Inventory,
    *,
    namespace: str,
    pod_labels: Mapping[str, str] | None,
    image: str,
    operator_namespace: str | None,
) -> Policy | None:
    """The one policy that governs ``image`` in a pod of ``namespace``, or None (observe
    only)."""
    canonical, familiar = spellings(image)
    hits = [
        p
        for p in inv.policies.values()
        if applies(
            p,
            namespace=namespace,
            namespace_labels=inv.namespaces.get(namespace, {}),
            pod_labels=pod_labels,
            image=canonical,
            familiar_image=familiar,
            operator_namespace=operator_namespace,
        )
    ]
    return min(hits, key=precedence) if hits else None
