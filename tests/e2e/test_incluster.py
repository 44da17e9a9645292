"""The operator's image running in-cluster on the real node, installed as a user would.

The image is built from the Dockerfile (scripts/build-image.sh), pushed to the sandbox's
registry, pulled by the real kubelet, and installed twice: with ``kubectl apply -k`` on an
overlay of ``manifests/`` and with ``helm install`` of ``charts/pullmedic``; both overlays
change only what the sandbox needs (sandbox/incluster.py says what and why). Each install
must become Ready through its startup, readiness and liveness probes, run as uid 65532 on
a read-only root with the ServiceAccount's projected token, hold the Lease, and heal a
broken Deployment on its own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from sandbox import incluster, paths
from sandbox.images import push_image
from sandbox.kube import (
    OPERATOR_NAMESPACE,
    create_cluster_policy,
    deployment,
    running_pods,
    wait_for,
)
from tests.integration.test_manifests import kubectl

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.image,
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah (vfs) and mmdebstrap run as root"),
]
CHART = Path(__file__).resolve().parents[2] / "charts" / "pullmedic"


@pytest.fixture(scope="module")
def image_ref(sandbox: Any, crds: None) -> str:
    if sandbox.node is None:
        pytest.skip(f"no real node on this machine: {sandbox.node_note or 'PULLMEDIC_NODE'}")
    tag = incluster.build_image()
    return incluster.push_image(tag, sandbox.registries.open)


def _operator_process(health_port: int) -> int:
    """The pid of the containerised operator, found by its own flag on this host."""
    flag = f"--liveness-port={health_port}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if flag in argv and any(a.endswith(b"pullmedic") for a in argv[:2]):
            return int(d.name)
    raise AssertionError(f"no operator process with {flag.decode()}")


def _status_ids(pid: int) -> tuple[str, str]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return fields["Uid"].split()[0], fields["Gid"].split()[0]


def _root_is_read_only(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        parts = line.split()
        if parts[4] == "/":
            return "ro" in parts[5].split(",")
    raise AssertionError("no root mount in the operator's mount namespace")


def _what_happened(core: Any, ns: str, selector: str) -> str:
    """The pod's states, its Events and its log: what a failing install needs shown."""
    lines = []
    for pod in core.list_namespaced_pod(ns, label_selector=selector).items:
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase}")
        for cs in pod.status.container_statuses or []:
            lines.append(f"  {cs.name}: {cs.state} restarts={cs.restart_count}")
        for ev in core.list_namespaced_event(
            ns, field_selector=f"involvedObject.name={pod.metadata.name}"
        ).items:
            lines.append(f"  event {ev.type}/{ev.reason}: {ev.message}")
        try:
            log = core.read_namespaced_pod_log(pod.metadata.name, ns, tail_lines=40)
        except client.ApiException as err:
            log = f"(no log: {err.status} {err.reason})"
        lines.append(f"  log:\n{log}")
    return "\n".join(lines) or f"no pods match {selector} in {ns}"


def _token_mount(pid: int) -> str:
    """Where the ServiceAccount volume is mounted, as the container's mount table says
    (``/var/run`` is a symlink in the image, so the host cannot follow the usual path)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        if mount_point.endswith("/secrets/kubernetes.io/serviceaccount"):
            return mount_point
    raise AssertionError("no ServiceAccount token volume in the operator's mounts")


def check_running_pod(
    core: Any, coordination: Any, ns: str, selector: str, where: incluster.Placement, lease: str
) -> None:
    """Ready through its probes, non-root on a read-only root, with a projected token."""

    def ready() -> Any:
        for pod in core.list_namespaced_pod(ns, label_selector=selector).items:
            conds = {c.type: c.status for c in pod.status.conditions or []}
            if conds.get("Ready") == "True":
                return pod
        return None

    try:
        pod = wait_for(ready, "the operator pod Ready (startup and readiness probes)", 180)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_what_happened(core, ns, selector)}") from None
    c = pod.spec.containers[0]
    assert c.startup_probe and c.liveness_probe and c.readiness_probe
    assert c.security_context.read_only_root_filesystem is True
    cs = pod.status.container_statuses[0]
    assert cs.restart_count == 0, "the liveness probe must not have restarted it"
    assert cs.image_id, "the kubelet pulled the image"

    health = httpx.get(f"http://127.0.0.1:{where.health_port}/healthz", timeout=5)
    assert health.status_code == 200
    metrics = httpx.get(f"http://127.0.0.1:{where.metrics_port}/metrics", timeout=5)
    assert "pullmedic_" in metrics.text

    pid = _operator_process(where.health_port)
    assert _status_ids(pid) == ("65532", "65532")
    assert _root_is_read_only(pid)
    token = (Path(f"/proc/{pid}/root{_token_mount(pid)}") / "token").read_text()
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    sa = pod.spec.service_account_name
    assert claims["sub"] == f"system:serviceaccount:{ns}:{sa}"
    assert "kubernetes.io" in claims and claims["kubernetes.io"]["pod"]["name"] == pod.metadata.name

    def holder() -> Any:
        got = coordination.read_namespaced_lease(lease, ns)
        return got.spec.holder_identity == pod.metadata.name

    wait_for(holder, f"the operator pod to hold Lease {ns}/{lease}", 60)


def check_heals(registries: Any, core: Any, apps: Any, custom: Any) -> None:
    """A tag typo on a Deployment, healed by the in-cluster operator alone."""
    ns = f"ic-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    policy = create_cluster_policy(
        custom, f"cp-{uuid.uuid4().hex[:8]}", [ns], {"mode": "Remediate"}
    )
    try:
        repo = f"team/app-{uuid.uuid4().hex[:6]}"
        for tag in ("2.3.0", "2.3.1"):
            push_image(registries.open, repo, tag)
        bad = f"{registries.open.host}/{repo}:2.3.7"
        apps.create_namespaced_deployment(ns, deployment("web", bad, replicas=2))

        def healed() -> bool:
            d = apps.read_namespaced_deployment("web", ns)
            pods = running_pods(core, ns, "app=web")
            return d.spec.template.spec.containers[0].image.endswith(":2.3.1") and len(pods) == 2

        wait_for(healed, "the Deployment patched to 2.3.1 by the in-cluster operator", 120)
        d = apps.read_namespaced_deployment("web", ns)
        record = json.loads(d.metadata.annotations["pullmedic.dev/last-remediation"])
        assert record["previousImage"] == bad and record["cause"] == "TagNotFound"
    finally:
        custom.delete_cluster_custom_object(
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies", policy
        )
        core.delete_namespace(ns, propagation_policy="Background")


def hosts(sandbox: Any) -> list[str]:
    return [r.host for r in sandbox.registries.all()]


def _gone(core: Any, ns: str, selector: str) -> bool:
    return not core.list_namespaced_pod(ns, label_selector=selector).items


@pytest.fixture
def coordination(api_client: Any) -> Any:
    return client.CoordinationV1Api(api_client)


@pytest.fixture
def kustomize_install(
    sandbox: Any, image_ref: str, core: Any, apps: Any, tmp_path: Path
) -> Iterator[incluster.Placement]:
    where = incluster.Placement.for_sandbox(sandbox.cluster.api_url, hosts(sandbox))
    overlay = incluster.kustomize_overlay(tmp_path / "overlay", image_ref, where)
    kc = sandbox.kubeconfig
    kubectl("apply", "-k", str(overlay), kubeconfig=kc)
    try:
        yield where
    finally:
        kubectl("-n", OPERATOR_NAMESPACE, "delete", "deployment", "pullmedic", kubeconfig=kc)
        selector = "app.kubernetes.io/name=pullmedic"
        wait_for(lambda: _gone(core, OPERATOR_NAMESPACE, selector), "the operator pod gone", 60)


def test_kubectl_apply_k_runs_the_image_and_heals(
    kustomize_install: incluster.Placement,
    sandbox: Any,
    core: Any,
    apps: Any,
    custom: Any,
    coordination: Any,
) -> None:
    rendered = kubectl("kustomize", str(paths.REPO / "manifests"), kubeconfig=None).stdout
    shipped = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    live = apps.read_namespaced_deployment("pullmedic", OPERATOR_NAMESPACE)
    assert (
        live.spec.template.spec.service_account_name
        == shipped["spec"]["template"]["spec"]["serviceAccountName"]
    )
    check_running_pod(
        core,
        coordination,
        OPERATOR_NAMESPACE,
        "app.kubernetes.io/name=pullmedic",
        kustomize_install,
        "pullmedic",
    )
    check_heals(sandbox.registries, core, apps, custom)


def check_helm_test(helm: list[str], core: Any, release: str, namespace: str, image: str) -> None:
    """`helm test`: the chart's hook pod runs `pullmedic diagnose` on the operator's own
    image from inside the cluster (the node's network, the release's prober settings) and
    succeeds because the image pulls; its log is the diagnosis. The pod stays after a run
    (for its log): deleted here, so the operator's label selects no pod after uninstall."""
    try:
        out = subprocess.run(
            [*helm, "test", release, "-n", namespace, "--logs", "--timeout", "180s"],
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_pod(
                f"{release}-pullmedic-test-diagnose", namespace, grace_period_seconds=0
            )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Succeeded" in out.stdout, out.stdout
    assert f"Image:      {image}" in out.stdout, out.stdout
    assert "Cause:      ImageAvailable" in out.stdout, out.stdout


def test_helm_install_runs_the_image_and_heals(
    sandbox: Any,
    image_ref: str,
    core: Any,
    apps: Any,
    custom: Any,
    coordination: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    where = incluster.Placement.for_sandbox(sandbox.cluster.api_url, hosts(sandbox))
    values = tmp_path / "values.yaml"
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    chosen = incluster.helm_values(image_ref, where)
    chosen["helmTest"] = {"platform": f"linux/{arch}"}  # the node's, for `helm test`
    values.write_text(yaml.safe_dump(chosen))
    release = f"pm{uuid.uuid4().hex[:6]}"
    helm = [str(paths.binary("helm")), "--kubeconfig", str(sandbox.kubeconfig)]
    out = subprocess.run(
        [*helm, "install", release, str(CHART), "-n", namespace, "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    selector = "app.kubernetes.io/name=pullmedic"
    try:
        check_running_pod(core, coordination, namespace, selector, where, "pullmedic")
        check_heals(sandbox.registries, core, apps, custom)
        check_helm_test(helm, core, release, namespace, image_ref)
    finally:
        subprocess.run(
            [*helm, "uninstall", release, "-n", namespace], capture_output=True, timeout=120
        )
        wait_for(lambda: _gone(core, namespace, selector), "the operator pod gone", 60)
