"""Shared fixtures: one real sandbox per test session, a fresh namespace per test."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "operator"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# The emulator's back-off under test runs 50x faster than the kubelet's (10 s -> 0.2 s);
# the real node (the default) always runs at the kubelet's own timing.
TIME_SCALE = float(os.environ.get("PULLMEDIC_TEST_TIME_SCALE", "0.02"))


@pytest.fixture(scope="session")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An ECR registry offline (sandbox/cloud.py): the AWS API stand-in, the registry under
    its ECR name, the real ecr-credential-provider and its CredentialProviderConfig; in the
    same config a KEP-4412 token-mode provider of the sandbox's own for a second registry
    (sandbox/tokenprovider.py, ``cloud.token``)."""
    from sandbox.cloud import start_ecr

    c = start_ecr(tmp_path_factory.mktemp("cloud"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def sandbox(cloud: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sandbox import env

    # No silent fallback: without a real node the suite fails with the reason, unless
    # PULLMEDIC_NODE=emulator asks for the emulator (and the summary then says so). The
    # real kubelet runs the ECR credential provider, as an EKS node does; it matches only
    # ECR names, so every other test pulls as before.
    sb = env.start(
        tmp_path_factory.mktemp("sandbox"),
        time_scale=TIME_SCALE,
        fallback=False,
        kubelet_args=cloud.kubelet_args(),
    )
    try:
        if sb.node is not None:
            cloud.serve_on_node(sb.node.certs_d)
        cloud.connect(sb.cluster)  # the token-mode provider's TokenReview, nodes' audience
        yield sb
    finally:
        sb.stop()


@pytest.fixture(scope="session")
def cluster(sandbox: Any) -> Any:
    return sandbox.cluster


@pytest.fixture(scope="session")
def registries(sandbox: Any) -> Any:
    return sandbox.registries


@pytest.fixture(scope="session")
def emulator(sandbox: Any) -> Any:
    return sandbox.emulator


@pytest.fixture(scope="session")
def node(sandbox: Any) -> str:
    """Which node runs the pods: "real" (kubelet) or "emulator" (fallback, or chosen)."""
    return str(sandbox.node_kind)


def pytest_report_header(config: pytest.Config) -> str:
    choice = os.environ.get("PULLMEDIC_NODE") or "real (PULLMEDIC_NODE=emulator to change)"
    return f"sandbox node: {choice}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The last lines say when the end-to-end tests ran without the real kubelet."""
    if os.environ.get("PULLMEDIC_NODE") == "emulator":
        terminalreporter.write_line(
            "sandbox node: EMULATOR (PULLMEDIC_NODE=emulator): no test ran on a real kubelet",
            yellow=True,
        )


@pytest.fixture(scope="session")
def api_client(cluster: Any) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def apps(api_client: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api_client)


@pytest.fixture
def namespace(core: Any) -> Iterator[str]:
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def token_client(cluster: Any, core: Any) -> Callable[[str, str], Any]:
    """An API client that authenticates as a ServiceAccount (TokenRequest API), not admin."""
    from kubernetes import client

    def make(namespace: str, service_account: str) -> Any:
        req = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        tok = core.create_namespaced_service_account_token(service_account, namespace, req)
        cfg = client.Configuration()
        cfg.host = cluster.api_url
        cfg.ssl_ca_cert = str(cluster.pki.ca_cert)
        cfg.api_key = {"authorization": f"Bearer {tok.status.token}"}
        return client.ApiClient(cfg)

    return make
