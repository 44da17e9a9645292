"""Kubernetes object builders and waits shared by the tests, the demo and the benchmarks."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, utils

REPO = Path(__file__).resolve().parent.parent


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # the API may briefly 404 while things are created
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def create_all(api_client: Any, docs: Any) -> None:
    """Create each object, tolerating those that exist already (re-runs, shared clusters)."""
    for doc in docs:
        if not doc:
            continue
        try:
            utils.create_from_dict(api_client, doc)  # type: ignore[no-untyped-call]
        except utils.FailToCreateError as e:
            if not all(getattr(x, "status", 0) == 409 for x in e.api_exceptions):
                raise


def install_crds(api_client: Any) -> None:
    create_all(
        api_client,
        [yaml.safe_load(f.read_text()) for f in sorted((REPO / "crds").glob("*policies.yaml"))],
    )
    ext = client.ApiextensionsV1Api(api_client)

    def established(name: str) -> bool:
        status = ext.read_custom_resource_definition(name).status
        return (
            any(c.type == "Established" and c.status == "True" for c in (status.conditions or []))
            if status
            else False
        )

    for name in ("pullpolicies.pullmedic.dev", "clusterpullpolicies.pullmedic.dev"):
        wait_for(lambda n=name: established(n), f"CRD {name} established")  # type: ignore[misc]


def dockerconfig_secret(name: str, namespace: str, host: str, user: str, password: str) -> Any:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    cfg = {"auths": {host: {"username": user, "password": password, "auth": auth}}}
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        type="kubernetes.io/dockerconfigjson",
        data={".dockerconfigjson": base64.b64encode(json.dumps(cfg).encode()).decode()},
    )


def pod_template(image: str, labels: dict[str, str], **spec: Any) -> Any:
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="app", image=image, image_pull_policy=spec.pop("pull_policy", "Always")
                )
            ],
            termination_grace_period_seconds=0,
            **spec,
        ),
    )


def deployment(
    name: str, image: str, replicas: int = 3, labels: dict[str, str] | None = None, **spec: Any
) -> Any:
    sel = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=sel),
            template=pod_template(image, sel, **spec),
        ),
    )


def running_pods(core: Any, ns: str, selector: str) -> list[Any]:
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def events_for(core: Any, ns: str, name: str | None = None) -> list[Any]:
    evs = core.list_namespaced_event(ns).items
    return [e for e in evs if name is None or e.involved_object.name == name]


OPERATOR_NAMESPACE = "pullmedic-system"
OPERATOR_SERVICE_ACCOUNT = "pullmedic"


def install_operator_identity(api_client: Any, kubeconfig_out: Path, server: str, ca: Path) -> Path:
    """Apply the manifests' own Namespace, ServiceAccount and RBAC, and return a kubeconfig
    with a token of that ServiceAccount: the operator then runs exactly as installed."""
    from sandbox.cluster import write_kubeconfig

    base = REPO / "manifests" / "base"
    for name in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        create_all(api_client, yaml.safe_load_all((base / name).read_text()))
    core = client.CoreV1Api(api_client)
    wait_for(
        lambda: core.read_namespaced_service_account(OPERATOR_SERVICE_ACCOUNT, OPERATOR_NAMESPACE),
        "operator ServiceAccount",
    )
    req = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=24 * 3600)
    )
    tok = core.create_namespaced_service_account_token(
        OPERATOR_SERVICE_ACCOUNT, OPERATOR_NAMESPACE, req
    )
    return write_kubeconfig(
        kubeconfig_out,
        server,
        ca,
        token=tok.status.token if tok.status else None,
        user=f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}",
    )


def create_cluster_policy(
    custom: Any, name: str, namespaces: list[str], spec: dict[str, Any]
) -> str:
    """A ClusterPullPolicy selecting exactly ``namespaces`` (tests, demo and benchmarks)."""
    spec = dict(spec)
    spec["selector"] = {**(spec.get("selector") or {}), "namespaces": namespaces}
    custom.create_cluster_custom_object(
        "pullmedic.dev",
        "v1alpha1",
        "clusterpullpolicies",
        {
            "apiVersion": "pullmedic.dev/v1alpha1",
            "kind": "ClusterPullPolicy",
            "metadata": {"name": name},
            "spec": spec,
        },
    )
    return name
