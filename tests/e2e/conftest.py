"""End-to-end fixtures: the operator as a separate process against the real sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.kube import (
    OPERATOR_NAMESPACE,
    create_cluster_policy,
    dockerconfig_secret,
    install_crds,
    install_operator_identity,
)

REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    def __init__(self, kubeconfig: Path, registries: Any, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.registries = registries
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        from sandbox import procs

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), env.get("PYTHONPATH", "")])
        insecure = [a for r in self.registries.all() for a in ("--insecure-registry", r.host)]
        self.metrics_port = procs.free_port()
        self.liveness_port = procs.free_port()
        self.proc = procs.spawn(
            [
                sys.executable,
                "-m",
                "pullmedic",
                "run",
                "--kubeconfig",
                str(self.kubeconfig),
                "--standalone",
                "--log-format",
                "json",
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
                "--bind",
                "127.0.0.1",
                "--allow-address",
                "127.0.0.0/8",
                "--recheck-after",
                "5",
                "--operator-namespace",
                OPERATOR_NAMESPACE,
                "--secret-sync-interval",
                "1",
                *insecure,
                *extra,
            ],
            self.log,
            env=env,
        )

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels`` (0 if none)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def stop(self, kill: bool = False) -> None:
        import signal

        from sandbox import procs

        if self.proc is None:
            return
        if kill:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        else:
            procs.stop(self.proc)
        self.proc = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def leader_elect(lease: str, duration: int = 4) -> list[str]:
    """Flags for replicas that elect a leader on ``lease`` (a short lease: fast tests)."""
    return [
        "--leader-elect",
        "--lease-name",
        lease,
        "--lease-namespace",
        OPERATOR_NAMESPACE,
        "--lease-duration",
        str(duration),
    ]


@pytest.fixture(scope="session")
def operator_kubeconfig(
    sandbox: Any, api_client: Any, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The operator never runs as admin here: it gets the manifests' ServiceAccount token."""
    return install_operator_identity(
        api_client,
        tmp_path_factory.mktemp("identity") / "operator.kubeconfig",
        sandbox.cluster.api_url,
        sandbox.cluster.pki.ca_cert,
    )


@pytest.fixture(scope="module")
def operator(
    sandbox: Any, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        operator_kubeconfig,
        sandbox.registries,
        tmp_path_factory.mktemp("operator") / "operator.log",
    )
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture(scope="session")
def crds(api_client: Any) -> None:
    install_crds(api_client)


@pytest.fixture
def custom(api_client: Any, crds: None) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


@pytest.fixture
def cluster_policy(custom: Any) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(namespaces: list[str], **spec: Any) -> str:
        name = create_cluster_policy(custom, f"cp-{uuid.uuid4().hex[:8]}", namespaces, spec)
        made.append(name)
        return name

    yield make
    for name in made:
        custom.delete_cluster_custom_object(
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies", name
        )


@dataclass
class PrivateCase:
    image: str
    source_namespace: str
    policy: str = ""  # the ClusterPullPolicy naming the secret

    @property
    def copied_secret(self) -> str:
        return f"pullmedic.{self.source_namespace}.regcred"


@pytest.fixture
def private_case(
    registries: Any, core: Any, namespace: str, cluster_policy: Callable[..., str]
) -> Iterator[PrivateCase]:
    """A private image, its pull secret in another namespace, and a ClusterPullPolicy
    in Remediate mode naming that secret; the failing namespace has no secret at all."""
    from kubernetes import client

    from sandbox.images import push_image

    src = f"{namespace}-src"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=src)))
    reg = registries.bearer
    repo = f"private/app-{uuid.uuid4().hex[:6]}"
    push_image(reg, repo, "1.0")
    core.create_namespaced_secret(
        src, dockerconfig_secret("regcred", src, reg.host, "bob", reg.users["bob"])
    )
    policy = cluster_policy(
        [namespace],
        mode="Remediate",
        credentials={"secrets": [{"namespace": src, "name": "regcred"}]},
    )
    try:
        yield PrivateCase(f"{reg.host}/{repo}:1.0", src, policy)
    finally:
        core.delete_namespace(src)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing end-to-end test shows what the operator said."""
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    op = getattr(item, "funcargs", {}).get("operator")
    if rep.when == "call" and rep.failed and op is not None:
        lines = [ln for ln in op.logs().splitlines() if '"kopf.objects"' not in ln]
        rep.sections.append(("operator log (tail)", "\n".join(lines[-60:])))


def pull_secrets_for(core: Any, *hosts: str) -> list[str]:
    """Every pull secret in the cluster that holds credentials for one of ``hosts``
    (other tests' secrets for other registries do not count)."""
    import base64
    import json

    found = []
    for kind, key in (
        ("kubernetes.io/dockerconfigjson", ".dockerconfigjson"),
        ("kubernetes.io/dockercfg", ".dockercfg"),
    ):
        for s in core.list_secret_for_all_namespaces(field_selector=f"type={kind}").items:
            try:
                doc = json.loads(base64.b64decode((s.data or {}).get(key) or ""))
            except ValueError:
                continue
            auths = doc.get("auths", doc) if isinstance(doc, dict) else {}
            if any(h in str(k) for k in auths for h in hosts):
                found.append(f"{s.metadata.namespace}/{s.metadata.name}")
    return found
