"""Generate crds/*.yaml from one spec schema, so PullPolicy and ClusterPullPolicy never drift.

Run `python scripts/gen_crds.py`; a test checks the committed files match.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parent.parent / "crds"
# Helm installs CRDs only from the chart's own crds/ directory: the same files, copied.
CHART_CRDS = OUT.parent / "charts" / "pullmedic" / "crds"
GROUP = "pullmedic.dev"

LABEL_SELECTOR: dict[str, Any] = {
    "type": "object",
    "description": "A standard Kubernetes label selector.",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "maxItems": 32,
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string", "maxLength": 317},
                    "operator": {
                        "type": "string",
                        "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                    },
                    "values": {"type": "array", "maxItems": 64, "items": {"type": "string"}},
                },
            },
        },
    },
}

GLOBS = {
    "type": "array",
    "maxItems": 64,
    "items": {"type": "string", "minLength": 1, "maxLength": 512},
}
K8S_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": 253,
    "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
}
HOST = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/[a-z0-9._/-]+)?$",
}


def spec_schema(cluster: bool) -> dict[str, Any]:
    secret_ref: dict[str, Any] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": K8S_NAME},
    }
    selection: dict[str, Any] = {
        "type": "object",
        "description": "Which failing pods this policy acts on.",
        "properties": {
            "podSelector": LABEL_SELECTOR,
            "images": {
                "type": "object",
                "description": "Image globs matched against the normalised reference "
                "(docker.io/library/nginx:1.27). Exclude wins over include.",
                "properties": {"include": GLOBS, "exclude": GLOBS},
            },
        },
    }
    if cluster:
        secret_ref["required"] = ["name", "namespace"]
        secret_ref["properties"] = {"name": K8S_NAME, "namespace": {**K8S_NAME, "maxLength": 63}}
        selection["properties"]["namespaceSelector"] = LABEL_SELECTOR
        selection["properties"]["namespaces"] = {
            "type": "array",
            "maxItems": 256,
            "description": "Namespaces named explicitly (also the only way to include "
            "kube-system or the operator's own namespace).",
            "items": {**K8S_NAME, "maxLength": 63},
        }
    return {
        "type": "object",
        "properties": {
            "mode": {
                "type": "string",
                "enum": ["Observe", "Suggest", "Remediate"],
                "default": "Suggest",
                "description": "Observe: Events and metrics only. Suggest: also publish the "
                "exact fix. Remediate: apply it.",
            },
            "priority": {
                "type": "integer",
                "minimum": -1000,
                "maximum": 1000,
                "default": 0,
                "description": "Higher wins among policies of the same kind; a namespaced "
                "PullPolicy always wins over a ClusterPullPolicy.",
            },
            "selector": selection,
            "tagCorrection": {
                "type": "object",
                "properties": {
                    "enabled": {"type": "boolean", "default": True},
                    "strategy": {
                        "type": "string",
                        "default": "HighestPatch",
                        "enum": ["HighestPatch", "SemverRange", "ClosestMatch"],
                    },
                    "range": {
                        "type": "string",
                        "maxLength": 128,
                        "description": (
                            "Semver constraint for SemverRange, e.g. '^1.4' or '>=1.2 <2'."
                        ),
                    },
                    "allowMajorChange": {"type": "boolean", "default": False},
                    "allowLatest": {"type": "boolean", "default": False},
                    "pinDigest": {"type": "boolean", "default": False},
                },
            },
            "credentials": {
                "type": "object",
                "properties": {
                    "enabled": {"type": "boolean", "default": True},
                    "secrets": {
                        "type": "array",
                        "maxItems": 32,
                        "items": secret_ref,
                        "description": "Candidate pull secrets; the one that authenticates for "
                        "the failing image is attached to the pod's ServiceAccount (or added to "
                        "the owner's pod template when that lists its own pull secrets)"
                        + (
                            " (copied into the pod's namespace first)."
                            if cluster
                            else ". Only secrets of this policy's namespace."
                        ),
                    },
                    "nodeRegistries": {
                        "type": "array",
                        "maxItems": 32,
                        "items": {"type": "string", "maxLength": 253},
                        "description": "Registries whose credentials the nodes hold (kubelet "
                        "credential provider plugins or node config), in the kubelet's "
                        "matchImages syntax, e.g. '*.dkr.ecr.*.amazonaws.com'. pullmedic cannot "
                        "see those credentials: an unauthorized probe there is reported as "
                        "NodeCredentialsUnknown with the kubelet's own message, never fixed "
                        "with a pull secret.",
                    },
                },
            },
            "mirrors": {
                "type": "array",
                "maxItems": 32,
                "description": "Used when the registry is unreachable or rate-limited, only "
                "after the image was found on the mirror.",
                "items": {
                    "type": "object",
                    "required": ["registry", "mirror"],
                    "properties": {"registry": HOST, "mirror": HOST},
                },
            },
            "alternatives": {
                "type": "array",
                "maxItems": 32,
                "description": "Moved repositories: when an image is not found where it was, "
                "the same tag (or digest) under the new name is used, only after it was found "
                "whole there for the node's platform. 'from' is a glob over the image name "
                "('*' one path segment, '**' any), 'to' the new name with $1... for the "
                "captures, e.g. from docker.io/bitnami/* to docker.io/bitnamilegacy/$1.",
                "items": {
                    "type": "object",
                    "required": ["from", "to"],
                    "properties": {
                        "from": {"type": "string", "maxLength": 255},
                        "to": {"type": "string", "maxLength": 255},
                    },
                },
            },
            "recovery": {
                "type": "object",
                "properties": {
                    "recreatePods": {
                        "type": "boolean",
                        "default": True,
                        "description": "Delete stuck pods owned by a Deployment, StatefulSet, "
                        "DaemonSet or ReplicaSet once the cause is fixed, so they skip the "
                        "back-off (Job pods are never deleted).",
                    },
                    "patchBarePods": {
                        "type": "boolean",
                        "default": True,
                        "description": "Patch the image of a pod that has no owner (a bare "
                        "pod's only fix; its pull secrets are immutable).",
                    },
                },
            },
            "gitops": {
                "type": "object",
                "properties": {
                    "allowDirectPatch": {
                        "type": "boolean",
                        "default": False,
                        "description": "Patch Argo CD / Flux managed workloads directly "
                        "(they usually revert it); otherwise only suggest.",
                    },
                },
            },
            "rateLimit": {
                "type": "object",
                "properties": {
                    "remediationsPerHour": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 10000,
                        "default": 60,
                    },
                },
            },
            "audit": {
                "type": "object",
                "description": "Check, within a per-registry budget, that the images of the "
                "workload templates in the selected namespaces would still pull for a new pod "
                "(tag deleted, credentials expired, platform dropped, blobs gone).",
                "properties": {"enabled": {"type": "boolean", "default": False}},
            },
            "admission": {
                "type": "object",
                "description": "Prevention at kubectl apply, for Pods and the pod templates of "
                "workloads this policy selects (needs the admission webhook installed).",
                "properties": {
                    "mode": {
                        "type": "string",
                        "enum": ["Off", "Warn", "Deny", "Mutate"],
                        "default": "Off",
                        "description": "Off: nothing. Warn: admission warnings with the cause "
                        "and the fix. Deny: refuse only what never recovers by itself (an "
                        "invalid reference, a tag or repository that does not exist for "
                        "credentials that can see it); warn for the rest. Mutate: like Warn, "
                        "and rewrite to a verified mirror when the registry is unreachable, "
                        "rate-limited or cannot serve the image whole (the original image is "
                        "kept in the pullmedic.dev/original-images annotation).",
                    },
                },
            },
        },
    }


# The status the operator writes: the shape is core/policystatus.py's TypedDicts (the one
# description of it); tests/unit/test_crds.py checks this schema against them field by field.
STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "observedGeneration": {"type": "integer"},
        "conditions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "observedGeneration": {"type": "integer"},
                },
            },
        },
        "counts": {
            "type": "object",
            "properties": {
                k: {"type": "integer"}
                for k in ("detected", "suggested", "remediated", "failed", "stuck")
            },
        },
        "backoff": {
            "type": "object",
            "description": "Kubelet back-off accounting for the workloads this policy saw.",
            "properties": {
                "pullAttempts": {"type": "integer"},
                "secondsLostWaiting": {"type": "number"},
                "secondsSavedByRecreation": {"type": "number"},
            },
        },
        "managedSecrets": {
            "type": "array",
            "description": "Secret copies this policy made and keeps in sync with their source.",
            "items": {
                "type": "object",
                "properties": {"source": {"type": "string"}, "copy": {"type": "string"}},
            },
        },
        "lastActions": {
            "type": "array",
            "maxItems": 20,
            "items": {
                "type": "object",
                "properties": {
                    k: {"type": "string"}
                    for k in ("time", "workload", "cause", "action", "result", "detail")
                },
            },
        },
        "unavailableImages": {
            "type": "array",
            "maxItems": 100,
            "description": "Audit: workload images that would not pull for a new pod.",
            "items": {
                "type": "object",
                "properties": {
                    k: {"type": "string"}
                    for k in ("workload", "container", "image", "cause", "message", "lastChecked")
                },
            },
        },
        "pendingActions": {
            "type": "array",
            "maxItems": 1000,
            "description": "Remediations begun and not yet counted: the operator's journal, "
            "so a restart in the middle of one finishes it once.",
            "items": {
                "type": "object",
                "properties": {k: {"type": "string"} for k in ("workload", "cause", "since")},
            },
        },
    },
}


# With --shards, each shard's acting replica writes its own part under status.shards
# ("<I>-of-<N>"); shard 0 also writes the sum at the top level.
SHARD_PART_FIELDS = (
    "counts",
    "backoff",
    "managedSecrets",
    "lastActions",
    "unavailableImages",
    "pendingActions",
)
STATUS["properties"]["shards"] = {
    "type": "object",
    "description": "Sharded replicas (--shards): each shard's own figures and journal, by "
    "shard (<index>-of-<count>); the top level is their sum.",
    "additionalProperties": {
        "type": "object",
        "properties": {k: copy.deepcopy(STATUS["properties"][k]) for k in SHARD_PART_FIELDS},
    },
}


def crd(kind: str, plural: str, short: list[str], scope: str) -> dict[str, Any]:
    cluster = scope == "Cluster"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
                "shortNames": short,
                "categories": ["pullmedic"],
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {
                            "name": "Detected",
                            "type": "integer",
                            "jsonPath": ".status.counts.detected",
                        },
                        {
                            "name": "Remediated",
                            "type": "integer",
                            "jsonPath": ".status.counts.remediated",
                        },
                        {
                            "name": "Suggested",
                            "type": "integer",
                            "jsonPath": ".status.counts.suggested",
                            "priority": 1,
                        },
                        {
                            "name": "Failed",
                            "type": "integer",
                            "jsonPath": ".status.counts.failed",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "Cluster-wide remediation policy for image pull failures; selects "
                                "namespaces."
                                if cluster
                                else "Remediation policy for image pull failures in this namespace."
                            ),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": copy.deepcopy(spec_schema(cluster)),
                                "status": copy.deepcopy(STATUS),
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


def render() -> dict[str, str]:
    docs = {
        "pullpolicies.yaml": crd("PullPolicy", "pullpolicies", ["pullpol"], "Namespaced"),
        "clusterpullpolicies.yaml": crd(
            "ClusterPullPolicy", "clusterpullpolicies", ["cpullpol"], "Cluster"
        ),
    }
    head = "# Generated by scripts/gen_crds.py; edit that file, not this one.\n"
    return {
        name: head + yaml.safe_dump(doc, sort_keys=False, width=100) for name, doc in docs.items()
    }


if __name__ == "__main__":
    check = "--check" in sys.argv
    bad = 0
    for name, text in render().items():
        for path in (OUT / name, CHART_CRDS / name):
            if check:
                if not path.exists() or path.read_text() != text:
                    print(f"{path} is stale: run python scripts/gen_crds.py", file=sys.stderr)
                    bad = 1
            else:
                path.write_text(text)
    sys.exit(bad)
