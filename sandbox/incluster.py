"""The operator's own image as a pod on the sandbox's real node.

The image is built by ``scripts/build-image.sh``, pushed to the sandbox's open registry and
installed with ``kubectl apply -k`` on an overlay of ``manifests/`` or with ``helm install``
of ``charts/pullmedic``. The overlay and the Helm values change only what this sandbox
needs, and say why:

- the image: the sandbox registry's address;
- ``hostNetwork`` with ``KUBERNETES_SERVICE_HOST``/``_PORT``: the sandbox has no kube-proxy
  and no endpoints for the ``kubernetes`` Service, and its registries listen on the node's
  loopback, so the operator reaches the API server and the registries at the addresses the
  kubelet itself uses;
- one replica on free host ports for health and metrics (host networking shares the node's
  ports, and the sandbox has one node);
- ``--insecure-registry`` for each plain-http registry and ``--allow-address 127.0.0.0/8``;
- the namespace's Pod Security level ``privileged`` (host networking is outside the others).

Everything else is what ships: probes, read-only root, uid 65532, dropped capabilities, the
ServiceAccount's projected token and ``kube-root-ca.crt``, leader election on a Lease.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandbox import paths, procs
from sandbox.registries import Registry

REPO = Path(__file__).resolve().parents[1]
LOCAL_TAG = "localhost/pullmedic:0.1.0"
NAME = "pullmedic"


def buildah(*args: str, timeout: float = 600) -> str:
    store = paths.cache_dir() / "buildah"
    argv = [
        "buildah",
        "--root",
        str(store / "storage"),
        "--runroot",
        f"{os.environ.get('XDG_RUNTIME_DIR', '/tmp')}/pullmedic-buildah",
        "--storage-driver",
        "vfs",
        *args,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {out.stderr[-2000:]}")
    return out.stdout.strip()


def build_image(tag: str = LOCAL_TAG) -> str:
    """The image from the Dockerfile (reused when its inputs did not change)."""
    out = subprocess.run(
        [str(REPO / "scripts" / "build-image.sh"), "--tag", tag],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"scripts/build-image.sh failed:\n{out.stderr[-4000:]}")
    return tag


def push_image(tag: str, registry: Registry, repo: str = NAME) -> str:
    """Push the local image to a sandbox registry; returns the reference pods pull.

    The tag carries the image id, so a node that cached an earlier build never runs it.
    """
    image_id = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", tag)
    ref = f"{registry.host}/{repo}:0.1.0-{image_id.removeprefix('sha256:')[:12]}"
    args = ["push", "--tls-verify=false"]
    if registry.push_auth:
        args += ["--creds", ":".join(registry.push_auth)]
    buildah(*args, tag, f"docker://{ref}")
    return ref


@dataclass(frozen=True)
class Placement:
    """Where the operator pod listens and what it may reach, in this sandbox."""

    api_host: str
    api_port: int
    health_port: int
    metrics_port: int
    registries: tuple[str, ...]

    @classmethod
    def for_sandbox(cls, api_url: str, registry_hosts: Iterable[str]) -> Placement:
        hostport = api_url.removeprefix("https://")
        host, _, port = hostport.rpartition(":")
        return cls(
            api_host=host,
            api_port=int(port),
            health_port=procs.free_port(),
            metrics_port=procs.free_port(),
            registries=tuple(registry_hosts),
        )

    def args(self) -> list[str]:
        """The operator's flags: the shipped ones plus this sandbox's addresses."""
        out = [
            "--standalone",
            "--leader-elect",
            f"--liveness-port={self.health_port}",
            f"--metrics-port={self.metrics_port}",
            "--log-format=json",
            "--allow-address=127.0.0.0/8",
        ]
        out += [f"--insecure-registry={h}" for h in self.registries]
        return out

    def env(self) -> list[dict[str, str]]:
        return [
            {"name": "KUBERNETES_SERVICE_HOST", "value": self.api_host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(self.api_port)},
        ]


def kustomize_overlay(folder: Path, image: str, where: Placement) -> Path:
    """An overlay of ``manifests/`` for this sandbox; ``kubectl apply -k folder``."""
    name, _, tag = image.rpartition(":")
    c = "/spec/template/spec/containers/0"
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/replicas", "value": 1},
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "replace", "path": f"{c}/args", "value": where.args()},
        {"op": "replace", "path": f"{c}/ports/0/containerPort", "value": where.health_port},
        {"op": "replace", "path": f"{c}/ports/1/containerPort", "value": where.metrics_port},
    ]
    ops += [{"op": "add", "path": f"{c}/env/-", "value": e} for e in where.env()]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes a base outside the overlay only by a relative path.
        "resources": [os.path.relpath(REPO / "manifests", folder)],
        "images": [{"name": NAME, "newName": name, "newTag": tag}],
        "patches": [
            {
                "target": {"kind": "Deployment", "name": NAME},
                "patch": json.dumps(ops),
            },
            {
                # Host networking is outside every Pod Security level but privileged.
                "target": {"kind": "Namespace"},
                "patch": json.dumps(
                    [
                        {
                            "op": "replace",
                            "path": "/metadata/labels/pod-security.kubernetes.io~1enforce",
                            "value": "privileged",
                        }
                    ]
                ),
            },
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return folder


def helm_values(image: str, where: Placement) -> dict[str, Any]:
    """Values for ``helm install -f`` of ``charts/pullmedic`` in this sandbox."""
    repository, _, tag = image.rpartition(":")
    return {
        "image": {"repository": repository, "tag": tag},
        "replicas": 1,
        "hostNetwork": True,
        "extraEnv": where.env(),
        "operator": {
            "livenessPort": where.health_port,
            "metricsPort": where.metrics_port,
            "allowAddresses": ["127.0.0.0/8"],
            "insecureRegistries": list(where.registries),
        },
    }


def install_kustomize(kubectl: Path, kubeconfig: Path, overlay: Path) -> str:
    """``kubectl apply -k``, as the README installs it; returns kubectl's output."""
    out = subprocess.run(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "apply", "-k", str(overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl apply -k {overlay}: {out.stderr}")
    return out.stdout
