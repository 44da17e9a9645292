"""`helm install` of charts/pullmedic into the sandbox's real API server.

The operator pod itself runs in tests/e2e/test_incluster.py; what this
checks without one: a real apiserver accepts every object of the default render, the
ServiceAccount gets exactly the grants it needs (and no secret listing), and
`helm uninstall` removes the cluster-scoped objects again.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from sandbox import paths
from tests.integration.test_manifests import kubectl

pytestmark = pytest.mark.cluster
CHART = Path(__file__).resolve().parents[2] / "charts" / "pullmedic"


def helm(kubeconfig: Path, *args: str) -> str:
    out = subprocess.run(
        [str(paths.binary("helm")), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def can(kubeconfig: Path, ns: str, sa: str, verb: str, resource: str) -> bool:
    out = kubectl(
        "auth",
        "can-i",
        verb,
        resource,
        "-n",
        ns,
        f"--as=system:serviceaccount:{ns}:{sa}",
        kubeconfig=kubeconfig,
        check=False,
    )
    return out.stdout.strip() == "yes"


def test_helm_install_and_uninstall(cluster: Any, apps: Any, crds: None, namespace: str) -> None:
    kc = cluster.kubeconfig
    release = f"pm{uuid.uuid4().hex[:6]}"
    helm(kc, "install", release, str(CHART), "-n", namespace, "--set", "replicas=1")
    try:
        name = f"{release}-pullmedic"
        dep = apps.read_namespaced_deployment(name, namespace)
        assert dep.spec.replicas == 1
        assert "--leader-elect" in dep.spec.template.spec.containers[0].args
        assert dep.spec.template.spec.service_account_name == "pullmedic"
        assert can(kc, namespace, "pullmedic", "watch", "pods")
        assert can(kc, namespace, "pullmedic", "patch", "deployments.apps")
        assert can(kc, namespace, "pullmedic", "create", "leases.coordination.k8s.io")
        assert can(kc, namespace, "pullmedic", "get", "secrets")
        assert not can(kc, namespace, "pullmedic", "list", "secrets")
        assert not can(kc, namespace, "pullmedic", "update", "deployments.apps")
        assert not can(kc, "default", "pullmedic", "create", "leases.coordination.k8s.io")
        status = helm(kc, "status", release, "-n", namespace)
        assert "STATUS: deployed" in status
    finally:
        helm(kc, "uninstall", release, "-n", namespace)
    gone = kubectl("get", "clusterrole", name, kubeconfig=kc, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
