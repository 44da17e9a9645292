"""The audit end to end: a workload runs; its tag is deleted upstream; pullmedic notices
before any pod fails (Event, gauge, policy status), and `pullmedic audit` says so."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.images import delete_tag, push_image
from sandbox.kube import deployment, events_for, running_pods, wait_for
from tests.e2e.conftest import REPO, OperatorProcess

pytestmark = pytest.mark.cluster


@pytest.fixture
def auditing_operator(
    sandbox: Any, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, sandbox.registries, tmp_path / "op.log")
    op.start("--audit-period", "2")
    try:
        yield op
    finally:
        op.stop()


def test_a_tag_deleted_under_a_running_workload_is_found(
    auditing_operator: OperatorProcess,
    sandbox: Any,
    registries: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    repo = f"team/audit-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, repo, "1.0")
    image = f"{registries.open.host}/{repo}:1.0"
    apps.create_namespaced_deployment(namespace, deployment("web", image, replicas=1))
    wait_for(lambda: len(running_pods(core, namespace, "app=web")) == 1, "web running", 90)
    policy = cluster_policy([namespace], mode="Observe", audit={"enabled": True})

    delete_tag(registries.open, repo, "1.0")  # upstream deletes the tag; nothing fails yet

    def event() -> Any:
        return [
            e
            for e in events_for(core, namespace, "web")
            if e.source.component == "pullmedic" and e.reason == "ImageUnavailable"
        ]

    (ev,) = wait_for(event, "the ImageUnavailable Event on the Deployment", 60)
    assert "TagNotFound" in ev.message and image in ev.message
    assert len(running_pods(core, namespace, "app=web")) == 1  # it found out before a pod failed

    def gauge() -> bool:
        text = httpx.get(f"http://127.0.0.1:{auditing_operator.metrics_port}/metrics").text
        return any(
            line.startswith("pullmedic_image_unavailable{")
            and f'namespace="{namespace}"' in line
            and 'name="web"' in line
            and 'cause="TagNotFound"' in line
            and line.endswith(" 1.0")
            for line in text.splitlines()
        )

    wait_for(gauge, "the pullmedic_image_unavailable gauge", 30)

    def listed() -> Any:
        st = (
            custom.get_cluster_custom_object(
                "pullmedic.dev", "v1alpha1", "clusterpullpolicies", policy
            ).get("status")
            or {}
        )
        return [e for e in st.get("unavailableImages") or () if e["workload"].endswith("/web")]

    (entry,) = wait_for(listed, "the finding in the policy status", 30)
    assert entry["cause"] == "TagNotFound" and entry["image"] == image

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), env.get("PYTHONPATH", "")])
    insecure = [a for r in registries.all() for a in ("--insecure-registry", r.host)]
    out = subprocess.run(
        [
            sys.executable, "-m", "pullmedic", "audit", "-n", namespace,
            "--kubeconfig", str(sandbox.kubeconfig), "--allow-address", "127.0.0.0/8", *insecure,
        ],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["NAMESPACE", "WORKLOAD", "CONTAINER", "IMAGE", "STATUS", "CAUSE"]
    assert row.split() == [namespace, "Deployment/web", "app", image, "WOULD-FAIL", "TagNotFound"]
