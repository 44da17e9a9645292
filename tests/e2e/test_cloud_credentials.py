"""A cloud registry whose credentials only the node has: ECR with the real plugin.

The real kubelet runs with ``--image-credential-provider-config`` and the real
``ecr-credential-provider`` (k8s.io/cloud-provider-aws, pinned in sandbox/versions.env),
which gets its token from a stand-in for the AWS API on loopback; the registry is served
under the ECR name to the node by containerd's ``hosts.toml``. There is no pull secret
anywhere in the cluster. pullmedic gets the same config file and plugin directory, and the
node's ``hosts.toml`` directory, so its probe authenticates the way the node does.

The shared sandbox's kubelet runs the plugin (tests/conftest.py ``cloud``), as an EKS node
does; it matches only ECR names.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.cloud import ECR_HOST, ECR_PASSWORD, CloudRegistry
from sandbox.images import push_image
from sandbox.kube import deployment, events_for, running_pods, wait_for
from tests.e2e.conftest import REPO, OperatorProcess, pull_secrets_for

pytestmark = pytest.mark.cluster
ANNOTATION = "pullmedic.dev/last-remediation"


@pytest.fixture
def cloud_operator(
    sandbox: Any,
    cloud: CloudRegistry,
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, sandbox.registries, tmp_path / "operator.log")
    op.start(*cloud.pullmedic_args(sandbox.node.certs_d))
    try:
        yield op
    finally:
        op.stop()
        log = op.logs()
        assert ECR_PASSWORD not in log, "a credential reached the operator's log"


def _kubelet_failure(core: Any, ns: str, label: str) -> str:
    for p in core.list_namespaced_pod(ns, label_selector=label).items:
        for cs in p.status.container_statuses or []:
            w = cs.state.waiting
            if w is not None and w.reason in ("ErrImagePull", "ImagePullBackOff"):
                return str(w.message or w.reason)
    return ""


def test_ecr_tag_typo_is_healed_with_the_nodes_own_credentials(
    cloud: CloudRegistry,
    cloud_operator: OperatorProcess,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    repo = "team/app"
    for tag in ("1.4.0", "1.4.2", "2.0.0"):
        push_image(cloud.registry, repo, tag)
    assert not pull_secrets_for(core, ECR_HOST, cloud.registry.host), (
        "no pull secret for this registry anywhere"
    )

    # First the kubelet alone: it authenticates with the plugin and the tag is missing.
    bad = cloud.image(repo, "1.4.9")
    apps.create_namespaced_deployment(namespace, deployment("web", bad, replicas=2))
    message = wait_for(
        lambda: _kubelet_failure(core, namespace, "app=web"), "the kubelet's pull to fail", 90
    )
    # containerd's "not found" (not 401): the node's pull was authenticated by the plugin.
    assert "not found" in message and "401" not in message, message

    policy = cluster_policy([namespace], mode="Remediate")

    def healed() -> bool:
        d = apps.read_namespaced_deployment("web", namespace)
        pods = running_pods(core, namespace, "app=web")
        return d.spec.template.spec.containers[0].image == cloud.image(repo, "1.4.2") and (
            len(pods) == 2
        )

    wait_for(healed, "the Deployment patched to 1.4.2 and both replicas running", 120)
    record = json.loads(
        apps.read_namespaced_deployment("web", namespace).metadata.annotations[ANNOTATION]
    )
    assert record["cause"] == "TagNotFound"
    assert record["previousImage"] == bad
    assert record["policy"] == f"ClusterPullPolicy/{policy}"
    diagnosed = [
        e.message
        for e in events_for(core, namespace)
        if e.source.component == "pullmedic" and e.reason == "PullDiagnosed"
    ]
    assert diagnosed and all(ECR_PASSWORD not in m for m in diagnosed)
    assert any("TagNotFound" in m for m in diagnosed), diagnosed
    st = custom.get_cluster_custom_object(
        "pullmedic.dev", "v1alpha1", "clusterpullpolicies", policy
    ).get("status")
    assert ECR_PASSWORD not in json.dumps(st)


def test_diagnose_cli_says_which_source_authenticated(
    cloud: CloudRegistry, sandbox: Any, tmp_path: Path
) -> None:
    push_image(cloud.registry, "team/cli", "1.0.0")
    common = ["--allow-address", "127.0.0.0/8", "--json"]
    env = {"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"}

    def diagnose(*extra: str) -> dict[str, Any]:
        r = subprocess.run(
            [sys.executable, "-m", "pullmedic", "diagnose", *extra, *common],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert ECR_PASSWORD not in r.stdout + r.stderr
        return dict(json.loads(r.stdout))

    args = cloud.pullmedic_args(sandbox.node.certs_d)
    d = diagnose(cloud.image("team/cli", "1.0.1"), *args)
    assert d["cause"] == "TagNotFound"
    assert d["details"]["credential"].startswith("credential provider ecr-credential-provider")
    assert d["fix"]["image"] == cloud.image("team/cli", "1.0.0")

    # Without the plugin, the same registry can only say it wants credentials.
    d = diagnose(cloud.image("team/cli", "1.0.1"), "--registry-config-dir", args[-1])
    assert d["cause"] == "AuthenticationRequired"


def test_expired_token_in_a_pull_secret_is_its_own_cause(
    cloud_operator: OperatorProcess, registries: Any, core: Any, apps: Any, namespace: str
) -> None:
    """An ECR token copied into a secret, twelve hours later: the registry refuses it and
    the token's own ``expiration`` says why; no policy needed for the diagnosis."""
    import base64
    import time

    from sandbox.kube import dockerconfig_secret

    reg = registries.basic
    push_image(reg, "team/expired", "1.0")
    doc = {"payload": "opaque", "datakey": "opaque", "version": "2", "type": "DATA_KEY"}
    doc["expiration"] = int(time.time()) - 3600
    token = base64.b64encode(json.dumps(doc).encode()).decode()
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("ecr-copy", namespace, reg.host, "AWS", token)
    )
    apps.create_namespaced_deployment(
        namespace,
        deployment(
            "old",
            f"{reg.host}/team/expired:1.0",
            replicas=1,
            image_pull_secrets=[{"name": "ecr-copy"}],
        ),
    )
    message = wait_for(
        lambda: _kubelet_failure(core, namespace, "app=old"), "the kubelet's pull to fail", 90
    )
    assert "401" in message, message

    def diagnosed() -> str:
        for e in events_for(core, namespace):
            if e.source.component == "pullmedic" and e.reason == "PullDiagnosed":
                return str(e.message)
        return ""

    said = wait_for(diagnosed, "pullmedic's diagnosis", 90)
    assert "CredentialsExpired" in said and "expired at" in said, said
    assert "pull secret " in said and token not in said
