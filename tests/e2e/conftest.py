"""End-to-end fixtures: the operator as a separate process against the real sandbox."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # the API may briefly 404 while things are created
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


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
        self.proc = procs.spawn(
            [
                sys.executable, "-m", "pullmedic", "run",
                "--kubeconfig", str(self.kubeconfig),
                "--standalone", "--log-format", "json",
                "--metrics-port", str(self.metrics_port),
                "--liveness-port", str(procs.free_port()),
                "--bind", "127.0.0.1",
                "--allow-address", "127.0.0.0/8",
                "--recheck-after", "5",
                *insecure, *extra,
            ],
            self.log, env=env,
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


@pytest.fixture(scope="module")
def operator(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        sandbox.kubeconfig, sandbox.registries,
        tmp_path_factory.mktemp("operator") / "operator.log",
    )
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture(scope="session")
def crds(api_client: Any) -> None:
    from kubernetes import client, utils

    import yaml

    for f in sorted((REPO / "crds").glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        try:
            utils.create_from_dict(api_client, doc)
        except utils.FailToCreateError as e:
            if not all(getattr(x, "status", 0) == 409 for x in e.api_exceptions):
                raise
    ext = client.ApiextensionsV1Api(api_client)
    for name in ("pullpolicies.pullmedic.dev", "clusterpullpolicies.pullmedic.dev"):
        wait_for(
            lambda n=name: any(
                c.type == "Established" and c.status == "True"
                for c in (ext.read_custom_resource_definition(n).status.conditions or [])
            ),
            f"CRD {name} established",
        )


@pytest.fixture
def custom(api_client: Any, crds: None) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


@pytest.fixture
def cluster_policy(custom: Any) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def make(namespaces: list[str], **spec: Any) -> str:
        name = f"cp-{uuid.uuid4().hex[:8]}"
        spec.setdefault("selector", {})["namespaces"] = namespaces
        custom.create_cluster_custom_object(
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies",
            {"apiVersion": "pullmedic.dev/v1alpha1", "kind": "ClusterPullPolicy",
             "metadata": {"name": name}, "spec": spec},
        )
        made.append(name)
        return name

    yield make
    for name in made:
        custom.delete_cluster_custom_object("pullmedic.dev", "v1alpha1", "clusterpullpolicies",
                                            name)


def dockerconfig_secret(name: str, namespace: str, host: str, user: str, password: str) -> Any:
    from kubernetes import client

    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    cfg = {"auths": {host: {"username": user, "password": password, "auth": auth}}}
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        type="kubernetes.io/dockerconfigjson",
        data={".dockerconfigjson": base64.b64encode(json.dumps(cfg).encode()).decode()},
    )


def pod_template(image: str, labels: dict[str, str], **spec: Any) -> Any:
    from kubernetes import client

    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="app", image=image,
                                           image_pull_policy=spec.pop("pull_policy", "Always"))],
            termination_grace_period_seconds=0,
            **spec,
        ),
    )


def deployment(name: str, image: str, replicas: int = 3, labels: dict[str, str] | None = None,
               **spec: Any) -> Any:
    from kubernetes import client

    sel = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=sel),
            template=pod_template(image, sel, **spec),
        ),
    )


def running_pods(core: Any, ns: str, selector: str) -> list[Any]:
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def events_for(core: Any, ns: str, name: str | None = None) -> list[Any]:
    evs = core.list_namespaced_event(ns).items
    return [e for e in evs if name is None or e.involved_object.name == name]
