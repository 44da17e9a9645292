"""The peer: titansoft's imagepullsecret-patcher, built from a checkout of its source.

The module is not on the Go module proxy, so ``sandbox/peers.sh patcher`` builds it from a
checkout of https://github.com/titansoft-pte-ltd/imagepullsecret-patcher (``PATCHER_SRC``,
default: cloned from GitHub into the cache) with its dependencies from the proxy. Without a
checkout it is not run, and its result says why (``ready=False``, ``reason``).

The patcher (``main.go``) only knows ``rest.InClusterConfig()``: it reads
``KUBERNETES_SERVICE_HOST``/``_PORT`` and ``/var/run/secrets/kubernetes.io/serviceaccount``.
To run it against the sandbox without touching the host, it is started in a private mount
namespace (``unshare -m``) whose ``/var/run`` is a tmpfs holding a ServiceAccount token
(TokenRequest API) and the sandbox CA. Every 10 s (its ``CONFIG_LOOP_DURATION`` default) it
creates its secret in every non-excluded namespace and adds it to the ``default``
ServiceAccount; it never recreates pods and never touches image references.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.common import Bench, build_peer, last_line, say
from sandbox import procs

SECRET_NAME = "bench-peer-regcred"
SOURCE = "a checkout of https://github.com/titansoft-pte-ltd/imagepullsecret-patcher"


def build() -> dict[str, Any]:
    """``sandbox/peers.sh patcher`` (cache, never the repo): its path, or why there is none."""
    return build_peer("patcher")


def setup(b: Bench) -> dict[str, Any]:
    """Build the patcher and mint its ServiceAccount token, once for any number of ``prepare``
    calls (a failed build, a clone attempt, is not repeated per namespace).

    The result has ``ready`` and, if not, ``reason``.
    """
    result = build()
    if not result["built"]:
        first = last_line(str(result["error"]))
        src = "" if os.environ.get("PATCHER_SRC") else f"PATCHER_SRC is not set ({SOURCE}); "
        result.update(
            ready=False,
            reason=f"{src}`{result['command']}` failed (exit {result.get('exit_code')}): {first}",
        )
        say(f"peer: not built: {first}")
        return result
    if shutil.which("unshare") is None:
        result.update(ready=False, reason="unshare(1) is missing: cannot fake in-cluster config")
        return result
    result.update(ready=True, _creds=str(_service_account(b)))
    return result


def prepare(b: Bench, ns: str, base: dict[str, Any]) -> dict[str, Any]:
    """The patcher ready to run for namespace ``ns`` (which exists), from ``base`` (the
    ``setup`` result).

    Every other namespace that exists now is excluded (its list is read once, at start).
    ``launch`` starts it; the result has ``ready`` and, if not, ``reason``.
    """
    result = dict(base)
    if not result["ready"]:
        return result
    creds = result["_creds"]
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
        CONFIG_SECRETNAME=SECRET_NAME,
        CONFIG_EXCLUDED_NAMESPACES=",".join(others),
        CONFIG_LOOP_DURATION="10s",
    )
    run_dir = os.path.realpath("/var/run")
    script = (
        f"mount -t tmpfs tmpfs {run_dir} && "
        f"mkdir -p {run_dir}/secrets/kubernetes.io/serviceaccount && "
        f"cp {creds}/* {run_dir}/secrets/kubernetes.io/serviceaccount/ && "
        f"exec {result['binary']}"
    )
    result.update(
        ready=True, running=False, namespace=ns, argv=["unshare", "-m", "sh", "-c", script]
    )
    result["_env"] = env
    return result


def launch(b: Bench, result: dict[str, Any]) -> None:
    """Start the prepared patcher, and note when it has patched the ServiceAccount.

    Not after ``stop``: a late trigger must not leave it running into the next run.
    """
    if result.get("stopped"):
        return
    log = b.state / "logs" / f"peer-{result['namespace']}.log"
    result["started_at"] = time.time()
    proc = procs.spawn(result["argv"], log, env=result.pop("_env"))
    b.extra.append(lambda: procs.stop(proc))
    result.update(running=True, proc=proc, log=str(log))
    threading.Thread(target=_watch_sa, args=(b, result), name="peer-sa-watch", daemon=True).start()
    say("peer: imagepullsecret-patcher running")


def _watch_sa(b: Bench, result: dict[str, Any]) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and result.get("running"):
        try:
            sa = b.core.read_namespaced_service_account("default", result["namespace"])
        except Exception:
            sa = None
        names = [s.name for s in (sa.image_pull_secrets or [])] if sa else []
        if SECRET_NAME in names:
            result["service_account_patched_at"] = time.time()
            return
        time.sleep(0.1)


def _service_account(b: Bench) -> Path:
    """A ServiceAccount token and the CA, as a pod would have them.

    Its RBAC is the ClusterRole of its example deployment
    (``deploy-example/kubernetes-manifest/1_rbac.yaml``).
    """
    ns, name = "kube-system", "imagepullsecret-patcher"
    rbac = client.RbacAuthorizationV1Api(b.api)
    b.core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=name),
            rules=[
                client.V1PolicyRule(
                    api_groups=[""],
                    resources=["secrets", "serviceaccounts"],
                    verbs=["list", "patch", "create", "get", "delete"],
                ),
                client.V1PolicyRule(
                    api_groups=[""], resources=["namespaces"], verbs=["list", "get"]
                ),
            ],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=name),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name
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
    result.update(running=False, stopped=True)
    proc = result.get("proc")
    if proc is not None:
        procs.stop(proc)
