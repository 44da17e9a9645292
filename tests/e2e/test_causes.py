"""Every cause pullmedic names is one the real kubelet hits: each case breaks a pod that way
on the real node and asserts both the kubelet's own Events and pullmedic's diagnosis."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from kubernetes import client

from sandbox import procs
from sandbox.damage import delete_blob, manifest
from sandbox.images import push_image
from sandbox.kube import dockerconfig_secret, events_for, pod_template, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def real_node(sandbox: Any) -> Any:
    if sandbox.node is None:
        pytest.skip(f"no real node on this machine: {sandbox.node_note or 'PULLMEDIC_NODE'}")
    return sandbox.node


def run_pod(core: Any, ns: str, image: str, secrets: tuple[str, ...] = ()) -> str:
    name = f"p-{uuid.uuid4().hex[:6]}"
    spec = pod_template(image, {}).spec
    if secrets:
        spec.image_pull_secrets = [client.V1LocalObjectReference(name=s) for s in secrets]
    core.create_namespaced_pod(ns, client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=spec))
    return name


def seen(core: Any, ns: str, pod: str) -> tuple[list[Any], list[Any]]:
    evs = events_for(core, ns, pod)
    kubelet = [e for e in evs if e.source.component == "kubelet"]
    ours = [e for e in evs if e.source.component == "pullmedic" and e.reason == "PullDiagnosed"]
    return kubelet, ours


def both(core: Any, ns: str, pod: str, cause: str, kubelet_text: str) -> None:
    def ready() -> bool:
        k, o = seen(core, ns, pod)
        return bool(o) and any(kubelet_text in (e.message or "") for e in k)

    wait_for(ready, f"the kubelet ({kubelet_text!r}) and pullmedic ({cause})", 60)
    kubelet, ours = seen(core, ns, pod)
    (diag,) = ours
    assert f"cause {cause}," in diag.message, diag.message
    assert any(e.reason == "Failed" for e in kubelet), [(e.reason, e.message) for e in kubelet]


def test_tag_not_found(
    real_node: Any, operator: Any, registries: Any, core: Any, namespace: str
) -> None:
    repo = f"team/c-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, repo, "1.0")
    pod = run_pod(core, namespace, f"{registries.open.host}/{repo}:9.9")
    both(core, namespace, pod, "TagNotFound", "not found")


def test_private_without_credentials(
    real_node: Any, operator: Any, registries: Any, core: Any, namespace: str
) -> None:
    repo = f"private/c-{uuid.uuid4().hex[:6]}"
    push_image(registries.bearer, repo, "1.0")
    pod = run_pod(core, namespace, f"{registries.bearer.host}/{repo}:1.0")
    wait_for(lambda: seen(core, namespace, pod)[1], "pullmedic's diagnosis", 60)
    (diag,) = seen(core, namespace, pod)[1]
    assert (
        "cause NotFoundOrPrivate," in diag.message
        or "cause AuthenticationRequired," in diag.message
    )
    both(core, namespace, pod, diag.message.split("cause ")[1].split(",")[0], "insufficient_scope")


def test_credentials_rejected(
    real_node: Any, operator: Any, registries: Any, core: Any, namespace: str
) -> None:
    reg = registries.basic
    repo = f"team/c-{uuid.uuid4().hex[:6]}"
    push_image(reg, repo, "1.0")
    user = next(iter(reg.users))
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("bad", namespace, reg.host, user, "wrong")
    )
    pod = run_pod(core, namespace, f"{reg.host}/{repo}:1.0", ("bad",))
    both(core, namespace, pod, "CredentialsRejected", "401 Unauthorized")


def test_platform_mismatch(
    real_node: Any, operator: Any, registries: Any, core: Any, namespace: str
) -> None:
    repo = f"team/c-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, repo, "1.0", platforms=("linux/s390x",), index="oci")
    pod = run_pod(core, namespace, f"{registries.open.host}/{repo}:1.0")
    both(core, namespace, pod, "PlatformMismatch", "no match for platform")


def test_registry_unreachable(real_node: Any, operator: Any, core: Any, namespace: str) -> None:
    pod = run_pod(core, namespace, f"127.0.0.1:{procs.free_port()}/team/app:1.0")
    both(core, namespace, pod, "RegistryUnreachable", "connection refused")


def test_image_incomplete(
    real_node: Any, operator: Any, registries: Any, core: Any, namespace: str
) -> None:
    """Listed, but a layer is gone (a half garbage-collected registry): the kubelet's pull
    fails on the blob, and pullmedic says which one instead of "pullable"."""
    repo = f"team/c-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, repo, "1.0")
    layer = manifest(registries.open, repo, "1.0")["layers"][-1]["digest"]  # its own data
    delete_blob(registries.open, repo, layer)
    pod = run_pod(core, namespace, f"{registries.open.host}/{repo}:1.0")
    both(core, namespace, pod, "ImageIncomplete", "not found")
    (diag,) = seen(core, namespace, pod)[1]
    assert layer in diag.message


def test_undecodable_pull_secret(
    real_node: Any, operator: Any, registries: Any, core: Any, namespace: str
) -> None:
    """The kubelet puts this in the waiting reason itself and never pulls."""
    reg = registries.basic
    cfg = {"auths": {reg.host: {"auth": base64.b64encode(b"no-colon-here").decode()}}}
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="broken"),
            type="kubernetes.io/dockerconfigjson",
            data={".dockerconfigjson": base64.b64encode(json.dumps(cfg).encode()).decode()},
        ),
    )
    pod = run_pod(core, namespace, f"{reg.host}/team/any:1.0", ("broken",))
    both(core, namespace, pod, "MalformedSecret", "unable to parse auth field")


def test_private_image_on_the_node_without_credentials_gets_the_secret(
    real_node: Any,
    operator: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    """Ensure-secret-pulled-images (Kubernetes 1.35+): the image is on the node, pulled by
    a pod with credentials, yet a Deployment without them fails on the real kubelet.
    pullmedic says why and fixes it on the credential path, not with a recreation."""
    from sandbox.kube import deployment, running_pods

    reg = registries.bearer
    repo = f"private/kep-{uuid.uuid4().hex[:6]}"
    push_image(reg, repo, "1.0")
    image = f"{reg.host}/{repo}:1.0"
    src = f"{namespace}-src"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=src)))
    try:
        for ns in (namespace, src):
            core.create_namespaced_secret(
                ns, dockerconfig_secret("regcred", ns, reg.host, "bob", reg.users["bob"])
            )
        owner = run_pod(core, namespace, image, ("regcred",))
        wait_for(
            lambda: core.read_namespaced_pod(owner, namespace).status.phase == "Running",
            "the pod with credentials running (the image is now on the node)",
            90,
        )
        node = core.read_namespaced_pod(owner, namespace).spec.node_name

        def on_node() -> bool:
            imgs = core.read_node(node).status.images or []
            return any(image in (i.names or []) for i in imgs)

        wait_for(on_node, "the node to report the image in its status", 60)
        cluster_policy(
            [namespace],
            mode="Remediate",
            credentials={"secrets": [{"namespace": src, "name": "regcred"}]},
        )
        apps.create_namespaced_deployment(
            namespace, deployment("borrower", image, replicas=1, pull_policy="IfNotPresent")
        )
        wait_for(
            lambda: len(running_pods(core, namespace, "app=borrower")) == 1,
            "the Deployment without credentials running after pullmedic's fix",
            120,
        )
        diags = [
            e
            for e in events_for(core, namespace)
            if e.source.component == "pullmedic" and e.reason == "PullDiagnosed"
        ]
        assert any("ensure-secret-pulled-images" in e.message for e in diags), [
            e.message for e in diags
        ]
        sa = core.read_namespaced_service_account("default", namespace)
        assert [s.name for s in sa.image_pull_secrets or []] == [f"pullmedic.{src}.regcred"]
    finally:
        core.delete_namespace(src)
