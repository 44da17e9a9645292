"""The webhook with certificates the operator keeps itself (--webhook-tls=self): the real
API server calls it with the operator-managed CA, and short-lived serving certificates
rotate while requests keep coming, with no admission call lost."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client

from sandbox import procs
from sandbox.images import push_image
from sandbox.kube import OPERATOR_NAMESPACE, create_all, wait_for
from tests.e2e.conftest import REPO, OperatorProcess
from tests.e2e.test_admission import dep, policy, post, until_answered, warnings

pytestmark = pytest.mark.cluster
CONFIGURATION = "pullmedic"  # the name the overlay's RBAC allows
SECRET = "pullmedic-webhook-tls"
VALIDITY = 24  # seconds: renewed every 16 s


@pytest.fixture(scope="module")
def self_tls_operator(
    sandbox: Any,
    operator_kubeconfig: Path,
    api_client: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    port = procs.free_port()
    work = tmp_path_factory.mktemp("webhook-self")
    # The overlay's own RBAC for the caBundle, as installed.
    rbac = REPO / "manifests/overlays/webhook-self/rbac.yaml"
    create_all(api_client, yaml.safe_load_all(rbac.read_text()))
    adm = client.AdmissionregistrationV1Api(api_client)
    cfg = yaml.safe_load((REPO / "manifests/overlays/webhook/webhook.yaml").read_text())
    cfg["metadata"] = {"name": CONFIGURATION}
    (hook,) = cfg["webhooks"]
    hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/admit"}  # no caBundle yet
    adm.create_mutating_webhook_configuration(cfg)
    op = OperatorProcess(operator_kubeconfig, sandbox.registries, work / "op.log")
    op.start(
        "--webhook-port", str(port), "--webhook-tls", "self",
        "--webhook-cert", str(work / "certs" / "tls.crt"),
        "--webhook-address", "127.0.0.1", "--webhook-cert-validity", str(VALIDITY),
        "--webhook-budget", "1.5",
    )  # fmt: skip
    wait_for(lambda: "admission webhook listening" in op.logs(), "the webhook to listen", 30)
    try:
        yield op
    finally:
        op.stop()
        adm.delete_mutating_webhook_configuration(CONFIGURATION)
        client.CoreV1Api(api_client).delete_namespaced_secret(SECRET, OPERATOR_NAMESPACE)
        rbac_api = client.RbacAuthorizationV1Api(api_client)
        rbac_api.delete_cluster_role_binding("pullmedic-webhook-tls")
        rbac_api.delete_cluster_role("pullmedic-webhook-tls")


def serving_serial(core: Any) -> int:
    s = core.read_namespaced_secret(SECRET, OPERATOR_NAMESPACE)
    return int(x509.load_pem_x509_certificate(base64.b64decode(s.data["tls.crt"])).serial_number)


def test_api_server_calls_the_webhook_through_rotations(
    self_tls_operator: OperatorProcess,
    cluster: Any,
    registries: Any,
    namespace: str,
    cluster_policy: Any,
    core: Any,
    api_client: Any,
) -> None:
    adm = client.AdmissionregistrationV1Api(api_client)
    bundle = adm.read_mutating_webhook_configuration(CONFIGURATION).webhooks[0].client_config
    secret = core.read_namespaced_secret(SECRET, OPERATOR_NAMESPACE)
    assert bundle.ca_bundle == secret.data["ca.crt"]  # the caBundle is the Secret's CA
    assert "tls.key" in secret.data and "ca.key" in secret.data

    repo = f"team/tls-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, repo, "2.0.0")
    policy(cluster_policy, namespace, "Warn")
    typo = f"{registries.open.host}/{repo}:2.0.9"
    # The answer proves the API server reached the webhook over TLS: an unreachable or
    # untrusted webhook is ignored (failurePolicy Ignore) and would add no warning.
    until_answered(cluster, namespace, typo, "TagNotFound")

    serials = {serving_serial(core)}
    answered = lost = 0
    deadline = time.monotonic() + 2.5 * VALIDITY  # at least two rotations
    while time.monotonic() < deadline:
        r = post(cluster, namespace, dep(f"tls-{uuid.uuid4().hex[:6]}", typo), dry_run=True)
        assert r.status_code == 201, r.text
        if any("TagNotFound" in w or "2.0.0 exists" in w for w in warnings(r)):
            answered += 1
        else:
            lost += 1
        serials.add(serving_serial(core))
        time.sleep(0.2)
    print(f"[webhook-tls] {answered} answered, {lost} lost, {len(serials)} certificates")
    assert len(serials) >= 3, f"expected two rotations, saw {len(serials)} certificates"
    assert answered > 50 and lost == 0
    assert "webhook certificate renewed" in self_tls_operator.logs()
    assert self_tls_operator.metric("pullmedic_webhook_certificate_renewals_total") >= 1
