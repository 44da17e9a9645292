"""The sandbox control plane is the real thing: controllers, admission, RBAC."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.cluster import STATIC_TOKENS
from sandbox.images import push_image
from sandbox.kube import deployment, running_pods, wait_for

pytestmark = pytest.mark.cluster


def test_deployment_gets_replicaset_and_running_pods(
    registries: Any, core: Any, apps: Any, namespace: str, node: str
) -> None:
    r = f"team/ok-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, r, "1.0")
    apps.create_namespaced_deployment(
        namespace, deployment("ok", f"{registries.open.host}/{r}:1.0", replicas=3)
    )
    wait_for(lambda: len(running_pods(core, namespace, "app=ok")) == 3, "3 running pods", 60)
    (rs,) = apps.list_namespaced_replica_set(namespace).items
    assert rs.metadata.owner_references[0].kind == "Deployment"
    pods = core.list_namespaced_pod(namespace).items
    assert all(p.metadata.owner_references[0].name == rs.metadata.name for p in pods)
    assert all(p.spec.node_name == "sandbox-node" for p in pods)
    assert all(p.spec.service_account_name == "default" for p in pods)  # admission default
    wait_for(
        lambda: apps.read_namespaced_deployment("ok", namespace).status.available_replicas == 3,
        "deployment available",
    )


def test_identities_are_refused_what_rbac_does_not_grant(
    cluster: Any, core: Any, namespace: str, token_client: Any, api_client: Any
) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pods-read"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="pods-read"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pods-read"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
            ],
        ),
    )
    sa = client.CoreV1Api(token_client(namespace, "reader"))
    wait_for(lambda: sa.list_namespaced_pod(namespace) is not None, "granted list", 10)
    for call in (
        lambda: sa.list_namespaced_secret(namespace),
        lambda: sa.list_namespaced_pod("default"),
        lambda: sa.delete_namespaced_pod("x", namespace),
    ):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403
    # A static-token identity with no bindings at all.
    token = next(iter(STATIC_TOKENS))
    cfg = client.Configuration()
    cfg.host = cluster.api_url
    cfg.ssl_ca_cert = str(cluster.pki.ca_cert)
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(client.ApiClient(cfg)).list_namespaced_pod(namespace)
    assert err.value.status == 403
