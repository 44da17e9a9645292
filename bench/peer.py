"""The peer: titansoft's imagepullsecret-patcher, built from its Go module if the proxy has it.

The patcher (``main.go``) only knows ``rest.InClusterConfig()``: it reads
``KUBERNETES_SERVICE_HOST``/``_PORT`` and ``/var/run/secrets/kubernetes.io/serviceaccount``.
To run it against the sandbox without touching the host, it is started in a private mount
namespace (``unshare -m``) whose ``/var/run`` is a tmpfs holding a ServiceAccount token
(TokenRequest API) and the sandbox CA. Every 10 s (its ``CONFIG_LOOP_DURATION`` default) it
creates its secret in every non-excluded namespace and adds it to the ``default``
ServiceAccount; it never recreates pods.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.common import Bench, namespace, say
from sandbox import procs

MODULE = "github.com/titansoft-pte-ltd/imagepullsecret-patcher"
BIN_DIR = Path(os.environ.get("PULLMEDIC_CACHE", Path.home() / ".cache" / "pullmedic")) / "bin"
BIN = BIN_DIR / "imagepullsecret-patcher" / "imagepullsecret-patcher"


def build() -> dict[str, Any]:
    """``go install MODULE@latest`` into the cache (never into the repo)."""
    cmd = ["go", "install", f"{MODULE}@latest"]
    shown = f"GOBIN={BIN.parent} " + " ".join(cmd)
    if BIN.exists():
        return {"built": True, "binary": str(BIN), "command": shown, "cached": True}
    if shutil.which("go") is None:
        return {"built": False, "command": shown, "error": "go is not installed"}
    BIN.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOBIN=str(BIN.parent), GOFLAGS="-mod=mod")
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=600, check=False, cwd="/tmp"
        )
    except subprocess.TimeoutExpired:
        return {"built": False, "command": shown, "error": "timed out after 600 s"}
    if p.returncode != 0 or not BIN.exists():
        return {
            "built": False,
            "command": shown,
            "exit_code": p.returncode,
            "error": (p.stderr or p.stdout).strip()[-1500:],
        }
    return {"built": True, "binary": str(BIN), "command": shown, "cached": False}


def prepare(b: Bench, ns: str, image: str, replicas: int) -> dict[str, Any]:
    """Build and start the patcher for namespace ``ns``; result has ``running`` and why."""
    result = build()
    if not result["built"]:
        result["running"] = False
        result["reason"] = (
            f"`{result['command']}` failed (exit {result.get('exit_code')}): {result['error']}"
        )
        say(f"peer: not built: {result['error'].splitlines()[0]}")
        return result
    if shutil.which("unshare") is None:
        result.update(running=False, reason="unshare(1) is missing: cannot fake in-cluster config")
        return result
    namespace(b, ns)
    creds = _service_account(b)
    reg = b.sb.registries.bearer
    auth = base64.b64encode(f"bob:{reg.users['bob']}".encode()).decode()
    dockerconfig = json.dumps({"auths": {reg.host: {"auth": auth}}})
    names = [str(n.metadata.name) for n in b.core.list_namespace().items if n.metadata]
    others = [n for n in names if n != ns]
    host, port = b.sb.cluster.api_url.removeprefix("https://").rsplit(":", 1)
    env = dict(
        os.environ,
        KUBERNETES_SERVICE_HOST=host,
        KUBERNETES_SERVICE_PORT=port,
        CONFIG_DOCKERCONFIGJSON=dockerconfig,
        CONFIG_SECRETNAME="bench-peer-regcred",
        CONFIG_EXCLUDED_NAMESPACES=",".join(others),
        CONFIG_LOOP_DURATION="10s",
    )
    run_dir = os.path.realpath("/var/run")
    script = (
        f"mount -t tmpfs tmpfs {run_dir} && "
        f"mkdir -p {run_dir}/secrets/kubernetes.io/serviceaccount && "
        f"cp {creds}/* {run_dir}/secrets/kubernetes.io/serviceaccount/ && "
        f"exec {BIN}"
    )
    proc = procs.spawn(
        ["unshare", "-m", "sh", "-c", script], b.state / "logs" / "peer.log", env=env
    )
    b.extra.append(lambda: procs.stop(proc))
    result.update(running=True, proc=proc, log=str(b.state / "logs" / "peer.log"))
    say("peer: imagepullsecret-patcher running")
    return result


def _service_account(b: Bench) -> Path:
    """A cluster-admin ServiceAccount token and the CA, as a pod would have them."""
    ns, name = "kube-system", "imagepullsecret-patcher"
    b.core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    client.RbacAuthorizationV1Api(b.api).create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="cluster-admin"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=ns)],
        )
    )
    tr = b.core.create_namespaced_service_account_token(
        name,
        ns,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    )
    d = b.state / "peer-sa"
    d.mkdir(parents=True, exist_ok=True)
    (d / "token").write_text(str(tr.status.token if tr.status else ""))
    shutil.copy(b.sb.cluster.pki.ca_cert, d / "ca.crt")
    (d / "namespace").write_text(ns)
    return d


def stop(result: dict[str, Any]) -> None:
    proc = result.get("proc")
    if proc is not None:
        procs.stop(proc)
