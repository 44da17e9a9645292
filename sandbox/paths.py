"""Where the sandbox finds its pinned, pre-built binaries and keeps its state."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def cache_dir() -> Path:
    return Path(os.environ.get("PULLMEDIC_CACHE", Path.home() / ".cache" / "pullmedic"))


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def binary(name: str) -> Path:
    """Path of a built component binary; builds it first when the cache is cold."""
    v = versions()
    folder = {
        "etcd": f"etcd-{v['ETCD_VERSION']}",
        "kube-apiserver": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "kube-controller-manager": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "kube-scheduler": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "kubelet": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "kubectl": f"kubernetes-{v['KUBERNETES_VERSION']}",
        "pause": f"pause-{v['PAUSE_VERSION']}",
        "registry": f"registry-{v['DISTRIBUTION_VERSION']}",
        "helm": f"helm-{v['HELM_VERSION']}",
        "ggcr": f"ggcr-{v['GGCR_VERSION']}",
        "promtool": f"promtool-{v['PROMETHEUS_VERSION']}",
        "ecr-credential-provider": f"ecr-credential-provider-{v['CLOUD_PROVIDER_AWS_VERSION']}",
        "moto_server": f"moto-{v['MOTO_VERSION']}/bin",
    }[name]
    path = cache_dir() / "bin" / folder / name
    if not path.exists():
        component = {"ecr-credential-provider": "ecr", "moto_server": "moto"}.get(name, name)
        component = "kubernetes" if name.startswith("kube") else component
        subprocess.run(["bash", str(HERE / "build.sh"), component], check=True)
    return path


def state_dir() -> Path:
    """Runtime state of the running sandbox (PKI, data, logs, kubeconfig)."""
    return Path(os.environ.get("PULLMEDIC_SANDBOX_DIR", REPO / ".sandbox"))
