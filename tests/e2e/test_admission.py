"""The admission webhook called by the real API server over TLS: warnings `kubectl apply`
prints, refusals only for what never recovers, rewrites to a verified mirror, dry runs,
and a webhook that is down never blocks anyone (failurePolicy Ignore)."""

from __future__ import annotations

import base64
import json
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from sandbox import procs
from sandbox.images import push_image
from sandbox.kube import wait_for
from tests.e2e.conftest import REPO, OperatorProcess

pytestmark = pytest.mark.cluster
WEBHOOK = "pullmedic-e2e"


@pytest.fixture(scope="module")
def webhook_operator(
    sandbox: Any,
    operator_kubeconfig: Path,
    api_client: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    port = procs.free_port()
    pki = sandbox.cluster.pki
    op = OperatorProcess(
        operator_kubeconfig, sandbox.registries, tmp_path_factory.mktemp("webhook") / "op.log"
    )
    op.start(
        "--webhook-port", str(port), "--webhook-cert", str(pki.serving_cert),
        "--webhook-key", str(pki.serving_key), "--webhook-budget", "1.5",
    )  # fmt: skip
    adm = client.AdmissionregistrationV1Api(api_client)
    # The shipped configuration, pointed at this process instead of the in-cluster Service.
    cfg = yaml.safe_load((REPO / "manifests/overlays/webhook/webhook.yaml").read_text())
    cfg["metadata"] = {"name": WEBHOOK}
    (hook,) = cfg["webhooks"]
    hook["clientConfig"] = {
        "url": f"https://127.0.0.1:{port}/admit",
        "caBundle": base64.b64encode(pki.ca_cert.read_bytes()).decode(),
    }
    adm.create_mutating_webhook_configuration(cfg)
    wait_for(lambda: "admission webhook listening" in op.logs(), "the webhook to listen", 30)
    try:
        yield op
    finally:
        adm.delete_mutating_webhook_configuration(WEBHOOK)
        op.stop()


def post(cluster: Any, ns: str, body: dict[str, Any], dry_run: bool = False) -> httpx.Response:
    """As kubectl does: the API answer with its Warning headers."""
    pki = cluster.pki
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    with httpx.Client(verify=ctx, timeout=30) as c:
        return c.post(
            f"{cluster.api_url}/apis/apps/v1/namespaces/{ns}/deployments",
            params={"dryRun": "All"} if dry_run else None,
            json=body,
        )


def warnings(r: httpx.Response) -> list[str]:
    return [v for k, v in r.headers.multi_items() if k.lower() == "warning"]


def dep(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def policy(cluster_policy: Any, ns: str, mode: str, **spec: Any) -> None:
    cluster_policy([ns], mode="Suggest", admission={"mode": mode}, **spec)


def until_answered(cluster: Any, ns: str, image: str, expect: str) -> httpx.Response:
    """Dry runs until the webhook's answer shows (the operator learns the policy from its
    watch a moment after it is created); dry runs never persist anything."""
    last: list[httpx.Response] = []

    def answered() -> bool:
        r = post(cluster, ns, dep(f"probe-{uuid.uuid4().hex[:5]}", image), dry_run=True)
        last[:] = [r]
        return expect in r.text or any(expect in w for w in warnings(r))

    try:
        wait_for(answered, f"the webhook to answer {expect!r}", 30, every=0.5)
    except AssertionError as e:
        r = last[0] if last else None
        detail = f"{r.status_code} {warnings(r)} {r.text[:300]}" if r is not None else "none"
        raise AssertionError(f"{e}; last answer: {detail}") from None
    return last[0]


def test_warn_mode_warns_at_apply_and_admits(
    webhook_operator: Any,
    cluster: Any,
    registries: Any,
    namespace: str,
    cluster_policy: Any,
    apps: Any,
) -> None:
    r = f"team/adm-{uuid.uuid4().hex[:6]}"
    for tag in ("1.4.0", "1.4.2"):
        push_image(registries.open, r, tag)
    policy(cluster_policy, namespace, "Warn")
    typo = f"{registries.open.host}/{r}:1.4.3"
    until_answered(cluster, namespace, typo, "TagNotFound")
    resp = post(cluster, namespace, dep("web", typo))
    assert resp.status_code == 201, resp.text
    (w,) = [w for w in warnings(resp) if "pullmedic" in w]
    assert typo in w and f"{registries.open.host}/{r}:1.4.2 exists" in w
    assert apps.read_namespaced_deployment("web", namespace)  # admitted
    ok = post(cluster, namespace, dep("fine", f"{registries.open.host}/{r}:1.4.2"))
    assert ok.status_code == 201 and not [w for w in warnings(ok) if "pullmedic" in w]


def test_deny_mode_refuses_a_typo_but_admits_the_uncertain(
    webhook_operator: Any, cluster: Any, registries: Any, namespace: str, cluster_policy: Any
) -> None:
    r = f"team/adm-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, r, "2.0.0")
    policy(cluster_policy, namespace, "Deny")
    typo = f"{registries.open.host}/{r}:2.0.1"
    until_answered(cluster, namespace, typo, "refused by pullmedic")
    resp = post(cluster, namespace, dep("web", typo))
    assert resp.status_code == 403 and "refused by pullmedic" in resp.json()["message"]
    # Private and without credentials: maybe the author lacks access, maybe not. Admitted.
    private = f"{registries.bearer.host}/private/none-{uuid.uuid4().hex[:4]}:1"
    uncertain = post(cluster, namespace, dep("maybe", private))
    assert uncertain.status_code == 201, uncertain.text
    assert [w for w in warnings(uncertain) if "pullmedic" in w]


def test_mutate_mode_rewrites_an_unreachable_registry_to_a_verified_mirror(
    webhook_operator: Any,
    cluster: Any,
    registries: Any,
    namespace: str,
    cluster_policy: Any,
    apps: Any,
) -> None:
    r = f"library/adm-{uuid.uuid4().hex[:6]}"
    push_image(registries.mirror, r, "3.1")
    dead = f"127.0.0.1:{procs.free_port()}"  # nothing listens: unreachable
    policy(
        cluster_policy,
        namespace,
        "Mutate",
        mirrors=[{"registry": dead, "mirror": registries.mirror.host}],
    )
    image = f"{dead}/{r}:3.1"
    until_answered(cluster, namespace, image, "rewritten to the verified mirror")
    resp = post(cluster, namespace, dep("web", image))
    assert resp.status_code == 201, resp.text
    d = apps.read_namespaced_deployment("web", namespace)
    assert d.spec.template.spec.containers[0].image == f"{registries.mirror.host}/{r}:3.1"
    original = json.loads(d.metadata.annotations["pullmedic.dev/original-images"])
    assert original == {"containers/app": image}


def test_a_dead_webhook_never_blocks(
    webhook_operator: OperatorProcess,
    cluster: Any,
    registries: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    policy(cluster_policy, namespace, "Deny")
    typo = f"{registries.open.host}/team/nothing-{uuid.uuid4().hex[:4]}:0.0.1"
    until_answered(cluster, namespace, typo, "refused by pullmedic")
    webhook_operator.stop(kill=True)  # runs last in this module: nothing needs it after
    t0 = time.monotonic()
    resp = post(cluster, namespace, dep("web", typo))
    assert resp.status_code == 201, resp.text  # failurePolicy Ignore
    assert time.monotonic() - t0 < 5
