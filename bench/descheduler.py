"""The descheduler peer: ``sigs.k8s.io/descheduler`` with PodLifeTime on image pull states.

What a user would otherwise install to get pods stuck in ``ImagePullBackOff`` recreated: the
descheduler's PodLifeTime plugin, limited to pods waiting in ``ImagePullBackOff`` or
``ErrImagePull``, evicts them (eviction API) and their ReplicaSet creates fresh pods, which
have no back-off history and are admitted with the ServiceAccount's pull secrets as they are
now. It fixes nothing itself: it is paired with a human fix (tag or ServiceAccount).

It runs as a local process (``sandbox/peers.sh descheduler`` builds it into the cache)
against a kubeconfig holding a ServiceAccount token bound to the ClusterRole its own
manifests ship (``kubernetes/base/rbac.yaml``, without the metrics and secrets rules it
does not use here): least privilege, not the sandbox's admin certificate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.common import Bench, build_peer, last_line, say
from sandbox import procs
from sandbox.cluster import write_kubeconfig
from sandbox.env import start_emulator
from sandbox.kube import wait_for

PULL_STATES = ("ImagePullBackOff", "ErrImagePull")
NAME = "descheduler"
SA_NAMESPACE = "kube-system"
# The descheduler skips every cycle with fewer than two Ready nodes ("requires >=2 nodes").
STANDBY_NODE = "descheduler-standby"

# descheduler v0.36.0 kubernetes/base/rbac.yaml, minus metrics.k8s.io and secrets.
RULES: list[tuple[str, str, tuple[str, ...]]] = [
    ("events.k8s.io", "events", ("create", "update")),
    ("", "nodes", ("get", "watch", "list")),
    ("", "namespaces", ("get", "watch", "list")),
    ("", "pods", ("get", "watch", "list", "delete")),
    ("", "pods/eviction", ("create",)),
    ("scheduling.k8s.io", "priorityclasses", ("get", "watch", "list")),
    ("policy", "poddisruptionbudgets", ("get", "watch", "list")),
    ("coordination.k8s.io", "leases", ("create", "update", "get", "patch", "delete")),
    ("", "persistentvolumeclaims", ("get", "watch", "list")),
]


def policy(
    namespaces: list[str],
    max_pod_lifetime_s: int,
    states: tuple[str, ...] = PULL_STATES,
) -> dict[str, Any]:
    """A v1alpha2 DeschedulerPolicy: one profile, PodLifeTime only, on ``namespaces``."""
    if max_pod_lifetime_s < 0:
        raise ValueError("maxPodLifeTimeSeconds must not be negative")
    if not namespaces:
        raise ValueError("name the namespaces: an empty include list selects every namespace")
    return {
        "apiVersion": "descheduler/v1alpha2",
        "kind": "DeschedulerPolicy",
        "profiles": [
            {
                "name": "image-pull-stuck",
                "pluginConfig": [
                    {"name": "DefaultEvictor", "args": {}},
                    {
                        "name": "PodLifeTime",
                        "args": {
                            "maxPodLifeTimeSeconds": max_pod_lifetime_s,
                            "states": list(states),
                            "namespaces": {"include": list(namespaces)},
                        },
                    },
                ],
                "plugins": {"deschedule": {"enabled": ["PodLifeTime"]}},
            }
        ],
    }


def write_policy(path: Path, doc: dict[str, Any]) -> Path:
    """The policy file (JSON is valid YAML, which the descheduler reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def build() -> dict[str, Any]:
    """``sandbox/peers.sh descheduler``: its path, or why there is none."""
    return build_peer("descheduler")


def start(
    b: Bench, namespaces: list[str], *, max_pod_lifetime_s: int, interval_s: int
) -> dict[str, Any]:
    """Build and start the descheduler; result has ``running`` and, if not, ``reason``."""
    result = build()
    if not result["built"]:
        first = last_line(str(result["error"]))
        result.update(
            running=False,
            reason=f"`{result['command']}` failed (exit {result.get('exit_code')}): {first}",
        )
        say(f"descheduler: not built: {first}")
        return result
    _standby_node(b)
    doc = policy(namespaces, max_pod_lifetime_s)
    policy_file = write_policy(b.state / "descheduler-policy.yaml", doc)
    kubeconfig = _least_privilege_kubeconfig(b)
    log = b.state / "logs" / "descheduler.log"
    argv = [
        result["binary"],
        "--client-connection-kubeconfig",
        str(kubeconfig),
        "--policy-config-file",
        str(policy_file),
        "--descheduling-interval",
        f"{interval_s}s",
        "--secure-port",
        "0",
        "--disable-metrics",
        "--v",
        "3",
    ]
    proc = procs.spawn(argv, log)
    b.extra.append(lambda: procs.stop(proc))
    result.update(
        running=True,
        proc=proc,
        log=str(log),
        policy=doc,
        interval_s=interval_s,
        max_pod_lifetime_s=max_pod_lifetime_s,
        rbac=f"ServiceAccount {SA_NAMESPACE}/{NAME}, ClusterRole {NAME} (its shipped rules)",
    )
    say(f"descheduler: running (PodLifeTime {max_pod_lifetime_s} s, every {interval_s} s)")
    return result


def _standby_node(b: Bench) -> None:
    """A second emulated node, cordoned before it exists: Ready, but no pod lands on it.

    The sandbox has one node and the descheduler refuses to run a cycle on fewer than two.
    """
    if any(n.metadata and n.metadata.name == STANDBY_NODE for n in b.core.list_node().items):
        return
    b.core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=STANDBY_NODE),
            spec=client.V1NodeSpec(unschedulable=True),
        )
    )
    proc = start_emulator(
        b.sb.kubeconfig, b.state / "logs" / "standby-node.log", time_scale=1.0, node=STANDBY_NODE
    )
    b.extra.append(lambda: procs.stop(proc))

    def ready() -> bool:
        status = b.core.read_node(STANDBY_NODE).status
        conds = (status.conditions if status else None) or []
        return any(c.type == "Ready" and c.status == "True" for c in conds)

    wait_for(ready, f"node {STANDBY_NODE} Ready", 60)


def _least_privilege_kubeconfig(b: Bench) -> Path:
    rbac = client.RbacAuthorizationV1Api(b.api)
    b.core.create_namespaced_service_account(
        SA_NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=NAME))
    )
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=NAME),
            rules=[
                client.V1PolicyRule(api_groups=[g], resources=[r], verbs=list(v))
                for g, r, v in RULES
            ],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=NAME),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=NAME
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name=NAME, namespace=SA_NAMESPACE)
            ],
        )
    )
    tr = b.core.create_namespaced_service_account_token(
        NAME,
        SA_NAMESPACE,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    token = str(tr.status.token if tr.status else "")
    return write_kubeconfig(
        b.state / "descheduler.kubeconfig",
        b.sb.cluster.api_url,
        b.sb.cluster.pki.ca_cert,
        token=token,
        user=NAME,
    )


def evictions(result: dict[str, Any]) -> int | None:
    """How many evictions its log reports (``"Evicted pod"`` lines), None if not run."""
    log = result.get("log")
    if not log or not Path(log).exists():
        return None
    return sum(1 for line in Path(log).read_text().splitlines() if "Evicted pod" in line)


def stop(result: dict[str, Any]) -> None:
    proc = result.get("proc")
    if proc is not None:
        procs.stop(proc)
