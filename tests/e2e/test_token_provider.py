"""KEP-4412 on the real kubelet: a credential provider in ServiceAccount token mode.

The shared sandbox's kubelet runs, next to the ECR provider, a provider of the sandbox's
own (sandbox/tokenprovider.py) with ``tokenAttributes``: the kubelet mints the pod's
ServiceAccount token for the provider's audience, bound to the pod; the plugin checks it
with a TokenReview and gives credentials for its registry to the ServiceAccount ``puller``
only. The same image pulls for a pod running as ``puller`` and fails for another
ServiceAccount, and pullmedic, given the same CredentialProviderConfig, says exactly that:
pullable for ``puller``, and for the other a credential cause naming the provider and the
ServiceAccount it refused. No pull secret anywhere; the token shows nowhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.cloud import CloudRegistry
from sandbox.images import push_image
from sandbox.kube import deployment, events_for, running_pods, wait_for
from sandbox.tokenprovider import TOKEN_HOST, TOKEN_PASSWORD, TOKEN_PLUGIN
from tests.e2e.conftest import REPO, OperatorProcess, pull_secrets_for
from tests.e2e.test_cloud_credentials import _kubelet_failure, cloud_operator

pytestmark = pytest.mark.cluster
__all__ = ["cloud_operator"]  # the fixture, shared with the ECR tests


def _service_accounts(core: Any, namespace: str, *names: str) -> None:
    from kubernetes import client

    for name in names:
        core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )


def _diagnosed(core: Any, namespace: str, name_prefix: str) -> str:
    for e in events_for(core, namespace):
        if (
            e.source.component == "pullmedic"
            and e.reason == "PullDiagnosed"
            and e.involved_object.name.startswith(name_prefix)
        ):
            return str(e.message)
    return ""


def test_token_mode_provider_as_the_kubelet_runs_it_for_each_service_account(
    cloud: CloudRegistry,
    cloud_operator: OperatorProcess,
    sandbox: Any,
    core: Any,
    apps: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    token = cloud.token
    assert token is not None, "the shared sandbox runs the token-mode provider"
    push_image(token.registry, "team/app", "1.0.0")
    image = token.image("team/app", "1.0.0")
    _service_accounts(core, namespace, "puller", "other")
    assert not pull_secrets_for(core, TOKEN_HOST, token.registry.host), (
        "no pull secret for this registry anywhere"
    )

    # The real kubelet: puller's pod pulls, the other ServiceAccount's pod does not.
    apps.create_namespaced_deployment(
        namespace, deployment("allowed", image, replicas=1, service_account_name="puller")
    )
    apps.create_namespaced_deployment(
        namespace, deployment("refused", image, replicas=1, service_account_name="other")
    )
    wait_for(
        lambda: len(running_pods(core, namespace, "app=allowed")) == 1,
        "the pod running as puller to pull and run",
        120,
    )
    message = wait_for(
        lambda: _kubelet_failure(core, namespace, "app=refused"),
        "the kubelet's pull for the other ServiceAccount to fail",
        120,
    )
    # The plugin refused, so the kubelet pulled without credentials: the registry's 401.
    assert "401" in message, message

    # pullmedic, with the same config: the failing pod's diagnosis names the provider and
    # the ServiceAccount it was run for (the operator minted that pod's token).
    said = wait_for(lambda: _diagnosed(core, namespace, "refused"), "pullmedic's diagnosis", 120)
    assert "CredentialProviderFailed" in said, said
    assert TOKEN_PLUGIN in said and f"ServiceAccount {namespace}/other" in said, said
    assert TOKEN_PASSWORD not in said
    assert not _diagnosed(core, namespace, "allowed"), "puller's pod never failed"

    # `pullmedic diagnose --service-account`: the same answers for either account.
    env = {"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"}
    args = cloud.pullmedic_args(sandbox.node.certs_d)

    def diagnose(service_account: str) -> dict[str, Any]:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pullmedic",
                "diagnose",
                image,
                *args,
                "--service-account",
                f"{namespace}/{service_account}",
                "--kubeconfig",
                str(sandbox.cluster.kubeconfig),
                "--allow-address",
                "127.0.0.0/8",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert TOKEN_PASSWORD not in r.stdout + r.stderr
        assert "eyJ" not in r.stdout + r.stderr, "a ServiceAccount token was printed"
        return dict(json.loads(r.stdout))

    ok = diagnose("puller")
    assert ok["cause"] == "ImageAvailable", ok
    assert ok["details"]["credential"].startswith(f"credential provider {TOKEN_PLUGIN}")
    no = diagnose("other")
    assert no["cause"] == "CredentialProviderFailed", no
    assert f"ServiceAccount {namespace}/other" in no["summary"]
    # Tokens minted for the provider go to its stdin only (a JWT starts with "eyJ").
    log = cloud_operator.logs()
    assert "eyJ" not in log and TOKEN_PASSWORD not in log
