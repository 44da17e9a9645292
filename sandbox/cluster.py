"""A real control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

The scheduler runs with the real node (:mod:`sandbox.node`); the emulator binds pods itself.

The behaviours pullmedic depends on (ServiceAccount admission copying pull secrets, the
controllers recreating pods, RBAC, CRD validation) come from the real programs.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx

from sandbox import paths, pki, procs

CONTROLLERS = ",".join(
    [
        "deployment-controller",
        "replicaset-controller",
        "statefulset-controller",
        "daemonset-controller",
        "job-controller",
        "cronjob-controller",
        "serviceaccount-controller",
        "serviceaccount-token-controller",
        "namespace-controller",
        "garbage-collector-controller",
        "root-ca-certificate-publisher-controller",
        "clusterrole-aggregation-controller",
    ]
)

# Static bearer tokens for test identities with no RBAC grants of their own.
STATIC_TOKENS = {"sandbox-nobody": ("nobody", "1001", "")}


@dataclass
class Cluster:
    state: Path
    api_url: str
    kubeconfig: Path
    pki: pki.Pki
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def restart(self, name: str, *, down_for: float = 0.0, timeout: float = 120.0) -> float:
        """Stop one control-plane process and start it again with the same flags, port and
        data (the fault tests); returns how long the apiserver was not ready."""
        old = self.procs[name]
        argv = [str(a) for a in cast(list[str], old.args)]  # spawn() always passes a list
        log = self.state / "logs" / f"{name}.log"
        t0 = time.monotonic()
        procs.stop(old)
        time.sleep(down_for)
        self.procs[name] = procs.spawn(argv, log)
        ctx = self.ssl_context()
        procs.wait_until(  # /readyz checks etcd too
            lambda: httpx.get(f"{self.api_url}/readyz", verify=ctx, timeout=2).status_code == 200,
            f"kube-apiserver ready after restarting {name}",
            timeout,
            self.procs[name],
            log,
        )
        return time.monotonic() - t0

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            p = self.procs.pop(name, None)
            if p is not None:
                procs.stop(p)


def write_kubeconfig(
    path: Path,
    api_url: str,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    user: str = "sandbox-admin",
) -> Path:
    """A kubeconfig kubectl and the Python client both read (JSON is valid YAML)."""
    creds: dict[str, str] = {}
    if cert and key:
        creds = {"client-certificate": str(cert), "client-key": str(key)}
    if token:
        creds = {"token": token}
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "sandbox", "cluster": {"server": api_url, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": user}}],
        "current-context": "sandbox",
    }
    path.write_text(json.dumps(cfg, indent=2))
    path.chmod(0o600)
    return path


def start_cluster(
    state: Path, *, tie: bool = True, extra_controllers: tuple[str, ...] = ()
) -> Cluster:
    """``extra_controllers``: e.g. the node-lifecycle controller a real kubelet needs."""
    state.mkdir(parents=True, exist_ok=True)
    logs = state / "logs"
    keys = pki.generate(state / "pki")
    etcd_port, etcd_peer, api_port, kcm_port = (procs.free_port() for _ in range(4))
    api_url = f"https://127.0.0.1:{api_port}"
    cluster = Cluster(
        state=state,
        api_url=api_url,
        kubeconfig=write_kubeconfig(
            state / "kubeconfig", api_url, keys.ca_cert, cert=keys.admin_cert, key=keys.admin_key
        ),
        pki=keys,
    )
    try:
        _start(cluster, logs, etcd_port, etcd_peer, api_port, kcm_port, tie, extra_controllers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start(
    cluster: Cluster,
    logs: Path,
    etcd_port: int,
    etcd_peer: int,
    api_port: int,
    kcm_port: int,
    tie: bool,
    extra_controllers: tuple[str, ...] = (),
) -> None:
    state, keys = cluster.state, cluster.pki
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    cluster.procs["etcd"] = procs.spawn(
        [
            str(paths.binary("etcd")),
            "--name=sandbox",
            f"--data-dir={state / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=sandbox=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ],
        logs / "etcd.log",
        tie=tie,
    )
    procs.wait_until(
        lambda: httpx.get(f"{etcd_url}/health", timeout=1).status_code == 200,
        "etcd",
        60,
        cluster.procs["etcd"],
        logs / "etcd.log",
    )

    token_file = state / "tokens.csv"
    token_file.write_text(
        "".join(f'{t},{u},{uid},"{g}"\n' for t, (u, uid, g) in STATIC_TOKENS.items())
    )
    cluster.procs["kube-apiserver"] = procs.spawn(
        [
            str(paths.binary("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={state / 'apiserver-certs'}",
            f"--tls-cert-file={keys.serving_cert}",
            f"--tls-private-key-file={keys.serving_key}",
            f"--client-ca-file={keys.ca_cert}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={keys.sa_pub}",
            f"--service-account-signing-key-file={keys.sa_key}",
            # Node + NodeRestriction: a real kubelet gets exactly a node's rights.
            "--authorization-mode=Node,RBAC",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={keys.admin_cert}",
            f"--kubelet-client-key={keys.admin_key}",
            f"--token-auth-file={token_file}",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,LimitRanger,"
            "DefaultStorageClass,ResourceQuota,NodeRestriction,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook",
            # Sharded list/watch (alpha in 1.36): `shardSelector=shardRange(...)` on pods.
            "--feature-gates=ShardedListAndWatch=true",
            "--v=1",
        ],
        logs / "kube-apiserver.log",
        tie=tie,
    )
    ctx = cluster.ssl_context()
    procs.wait_until(
        lambda: httpx.get(f"{cluster.api_url}/readyz", verify=ctx, timeout=2).status_code == 200,
        "kube-apiserver",
        120,
        cluster.procs["kube-apiserver"],
        logs / "kube-apiserver.log",
    )

    cluster.procs["kube-controller-manager"] = procs.spawn(
        [
            str(paths.binary("kube-controller-manager")),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--authentication-kubeconfig={cluster.kubeconfig}",
            f"--authorization-kubeconfig={cluster.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            f"--cert-dir={state / 'kcm-certs'}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            f"--service-account-private-key-file={keys.sa_key}",
            f"--root-ca-file={keys.ca_cert}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            f"--controllers={','.join([CONTROLLERS, *extra_controllers])}",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--v=1",
        ],
        logs / "kube-controller-manager.log",
        tie=tie,
    )
    procs.wait_until(
        lambda: (
            httpx.get(f"https://127.0.0.1:{kcm_port}/healthz", verify=False, timeout=2).status_code
            == 200
        ),
        "kube-controller-manager",
        120,
        cluster.procs["kube-controller-manager"],
        logs / "kube-controller-manager.log",
    )
    # Pods can only be created once the serviceaccount controller made `default`.
    procs.wait_until(
        lambda: (
            httpx.get(
                f"{cluster.api_url}/api/v1/namespaces/default/serviceaccounts/default",
                verify=ctx,
                timeout=2,
            ).status_code
            == 200
        ),
        "default ServiceAccount",
        60,
    )


def wait_ready(cluster: Cluster, timeout: float = 60) -> None:
    ctx = cluster.ssl_context()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{cluster.api_url}/readyz", verify=ctx, timeout=2).status_code == 200:
            return
        time.sleep(0.5)
    raise TimeoutError("apiserver not ready")
