"""The emulator's back-off and pull-secret behaviour, time-scaled (the real kubelet's is in
tests/integration/test_real_node.py)."""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from sandbox.faultproxy import FaultProxy
from sandbox.images import push_image
from sandbox.kube import dockerconfig_secret, pod_template, running_pods, wait_for
from tests.conftest import TIME_SCALE

pytestmark = pytest.mark.cluster


def test_emulated_pull_backoff_doubles_like_the_kubelet(
    registries: Any, core: Any, namespace: str, emulator: Any
) -> None:
    """Pull attempts, seen at the registry, are spaced 10, 20, 40, 80 s (x time scale).

    Counted at a proxy in front of the registry: the status alone does not show a retry
    whose outcome equals the previous one (the kubelet writes no unchanged status).
    """
    proxy = FaultProxy(registries.open.url)
    proxy.start()
    try:
        image = f"{proxy.host_port}/team/none-{uuid.uuid4().hex[:6]}:1"
        core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="bo"), spec=pod_template(image, {}).spec
            ),
        )

        def attempts() -> list[float]:
            return [r.at for r in proxy.requests if r.method == "HEAD" and "/manifests/" in r.path]

        wait_for(lambda: len(attempts()) >= 5, "five pull attempts", 40, every=0.1)
    finally:
        proxy.stop()
    gaps = [b - a for a, b in itertools.pairwise(attempts()[:5])]
    expected = [10 * TIME_SCALE * 2**i for i in range(len(gaps))]
    resync = 15 * TIME_SCALE + 0.3  # the kubelet looks at a failing pod every 10-15 s
    for gap, want in zip(gaps, expected, strict=True):
        assert want <= gap <= want + resync, (gaps, expected)


def test_sa_pull_secret_reaches_new_pods_only(
    registries: Any, core: Any, namespace: str, emulator: Any
) -> None:
    reg = registries.bearer
    r = f"private/sa-{uuid.uuid4().hex[:6]}"
    push_image(reg, r, "1.0")
    image = f"{reg.host}/{r}:1.0"
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("regcred", namespace, reg.host, "bob", reg.users["bob"])
    )
    old = client.V1Pod(metadata=client.V1ObjectMeta(name="old"), spec=pod_template(image, {}).spec)
    core.create_namespaced_pod(namespace, old)

    def failing(name: str) -> bool:
        p = core.read_namespaced_pod(name, namespace)
        st = (p.status.container_statuses or [None])[0]
        return bool(
            st
            and st.state.waiting
            and st.state.waiting.reason in ("ImagePullBackOff", "ErrImagePull")
        )

    wait_for(lambda: failing("old"), "old pod in back-off", 30)
    assert "insufficient_scope" in (
        core.read_namespaced_pod("old", namespace)
        .status.container_statuses[0]
        .state.waiting.message
    )
    core.patch_namespaced_service_account(
        "default", namespace, {"imagePullSecrets": [{"name": "regcred"}]}
    )
    new = client.V1Pod(metadata=client.V1ObjectMeta(name="new"), spec=pod_template(image, {}).spec)
    # Admission reads ServiceAccounts from an informer cache: wait (with dry runs) until it
    # has seen the patch, as a real client retrying would.
    wait_for(
        lambda: core.create_namespaced_pod(namespace, new, dry_run="All").spec.image_pull_secrets,
        "admission to see the ServiceAccount's pull secret",
        10,
        every=0.1,
    )
    created = core.create_namespaced_pod(namespace, new)
    assert [s.name for s in created.spec.image_pull_secrets] == ["regcred"]  # admission copied
    wait_for(lambda: running_pods(core, namespace, ""), "new pod running", 30)
    assert [p.metadata.name for p in running_pods(core, namespace, "")] == ["new"]
    time.sleep(30 * TIME_SCALE * 4)
    assert failing("old")  # immutable pull secrets: the old pod never recovers
    assert not core.read_namespaced_pod("old", namespace).spec.image_pull_secrets
