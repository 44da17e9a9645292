"""What the control loops need of the prober (the ``Diagnoser`` seam: the decision, the
audit and the admission webhook take any object with this ``diagnose``), what a decision
adds to the prober's diagnosis (credentials the node holds itself), and the probes it
makes beyond the failing image: a copy on a mirror, or the same tag under a moved
repository's new name, each used only once found whole for the node's platform."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from pullmedic.core import policy as pol
from pullmedic.core import reference
from pullmedic.core.decision import alternative_candidate, mirror_candidate
from pullmedic.core.diagnosis import CREDENTIAL_CAUSES, Cause, Diagnosis
from pullmedic.core.dockerconfig import SecretProblem
from pullmedic.core.keyring import Keyring, NodeRegistries
from pullmedic.core.nodeview import node_view
from pullmedic.core.platforms import Platform
from pullmedic.core.tokenmode import PodIdentity

# Causes a copy of the same image elsewhere fixes (verified whole there first).


class Diagnoser(Protocol):
    async def diagnose(
        self,
        image: str,
        keyring: Keyring,
        platform: Platform,
        *,
        suggest: bool = True,
        candidate_keyrings: Mapping[str, Keyring] | None = None,
        tag_policy: pol.TagCorrection | None = None,
        secret_problems: Sequence[SecretProblem] = (),
        distrust_available: bool = False,
        pod: PodIdentity | None = None,
    ) -> Diagnosis: ...


def as_the_node_sees_it(
    d: Diagnosis,
    image: str,
    kubelet_message: str,
    node_registries: NodeRegistries,
    policy: pol.Policy | None,
) -> Diagnosis:
    """A credential diagnosis for a registry whose credentials the nodes hold (the
    operator's flag or the policy's ``nodeRegistries``): the kubelet's view, not ours."""
    if d.cause not in CREDENTIAL_CAUSES:
        return d
    try:
        ref = reference.parse(image)
    except reference.InvalidReference:
        return d
    nodes = node_registries
    if policy is not None and policy.node_registries:
        nodes = nodes | NodeRegistries.parse(policy.node_registries)[0]
    return node_view(d, kubelet_message, ref.registry_host) if nodes.provide(ref) else d


async def _pullable(
    prober: Diagnoser,
    image: str,
    keyring: Keyring,
    platform: Platform,
    pod: PodIdentity | None = None,
) -> bool:
    d = await prober.diagnose(image, keyring, platform, suggest=False, pod=pod)
    return d.cause is Cause.ImageAvailable


async def verified_mirror(
    prober: Diagnoser,
    image: str,
    policy: pol.Policy,
    keyring: Keyring,
    platform: Platform,
    pod: PodIdentity | None = None,
) -> str | None:
    """The policy's mirror copy of ``image``, when it is there whole."""
    candidate = mirror_candidate(image, policy)
    if candidate is None:
        return None
    return candidate if await _pullable(prober, candidate, keyring, platform, pod) else None


async def verified_alternative(
    prober: Diagnoser,
    image: str,
    policy: pol.Policy,
    keyring: Keyring,
    platform: Platform,
    pod: PodIdentity | None = None,
) -> tuple[str, str] | None:
    """The same tag (or digest) under a moved repository's new name, found whole for the
    node's platform there; and the move, for the Event and the record."""
    candidate = alternative_candidate(image, policy)
    if candidate is None:
        return None
    new, move = candidate
    return (new, move) if await _pullable(prober, new, keyring, platform, pod) else None
