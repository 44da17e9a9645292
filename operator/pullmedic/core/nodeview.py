"""What the node's side changes in a credential diagnosis.

The probe asks the registry with the pod's pull secrets; a node may authenticate by
itself (a credential provider, node config) or hold the image already. These revise a
diagnosis with that knowledge, from what the kubelet reported.
"""

from __future__ import annotations

import dataclasses

from pullmedic.core.diagnosis import (
    CREDENTIAL_CAUSES,
    Cause,
    Confidence,
    Diagnosis,
    Evidence,
    JSONValue,
)

# The runtime's words for "the credentials did not grant this" and "it does not exist",
# as containerd reports them through the kubelet (supporting evidence only: the probe
# decides, this text only says what the node saw).
_NODE_DENIED = (
    "401 unauthorized",
    "403 forbidden",
    "authorization failed",
    "pull access denied",
    "failed to authorize",
    "insufficient_scope",
)
_NODE_NOT_FOUND = (": not found", "code = notfound", "manifest unknown")


def node_view(d: Diagnosis, kubelet_message: str, registry_host: str) -> Diagnosis:
    """A credential diagnosis for a registry whose credentials live on the nodes.

    The probe ran without the node's credentials, so its "unauthorized" is not the node's
    answer. What the kubelet reported is the only evidence of what the node saw.
    """
    if d.cause not in CREDENTIAL_CAUSES:
        return d
    text = kubelet_message.lower()
    quoted = kubelet_message.strip()[:300]
    if any(k in text for k in _NODE_NOT_FOUND):
        conf: Confidence = "medium"
        saw = (
            "the kubelet's pull, with the node's credentials, reports the image not found: "
            "check the image name and tag"
        )
    elif any(k in text for k in _NODE_DENIED):
        conf = "medium"
        saw = (
            "the kubelet's pull was refused too: the node's credential provider (or node "
            "config) has no valid credentials for this repository"
        )
    else:
        conf = "low"
        saw = "what the node's credentials would get is unknown"
    summary = (
        f"The probe of {d.image} without credentials got {d.cause}, but nodes provide "
        f"their own credentials for {registry_host}; {saw}."
    )
    details: dict[str, JSONValue] = dict(d.details)
    details["probeCause"] = str(d.cause)
    if quoted:
        details["kubeletMessage"] = quoted
    evidence = d.evidence + (
        (Evidence("kubelet", note=f"kubelet reported: {quoted}"),) if quoted else ()
    )
    return Diagnosis(
        d.image, Cause.NodeCredentialsUnknown, conf, summary, evidence, details, d.digest
    )


def held_by_node(d: Diagnosis, node: str) -> Diagnosis:
    """A credential failure for an image the node already holds (ensure-secret-pulled-
    images, on by default since Kubernetes 1.35): the kubelet gives a cached private image
    only to pods whose own credentials grant it, so this pod pulls, and fails, with its
    own. The credential fix is the right one; say why the cached copy did not help."""
    if d.cause not in CREDENTIAL_CAUSES:
        return d
    details: dict[str, JSONValue] = dict(d.details)
    details["imageOnNode"] = node
    summary = (
        d.summary.rstrip(".")
        + f". The image is already on node {node}, but the kubelet only lets pods whose own "
        "pull credentials grant it use a cached private image (ensure-secret-pulled-images)."
    )
    return dataclasses.replace(d, summary=summary, details=details)
