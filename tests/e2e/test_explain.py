"""`kubectl pullmedic explain` end to end, as an application team runs it.

The caller is a ServiceAccount bound to the built-in `view` ClusterRole in one namespace:
it can read pods, workloads and Events but no Secrets and no nodes. kubectl itself finds
the plugin (`kubectl-pullmedic` on PATH) and runs it with that kubeconfig.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from sandbox import paths
from sandbox.images import push_image
from sandbox.kube import deployment, dockerconfig_secret, events_for, running_pods, wait_for

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def viewer_kubeconfig(core: Any, rbac: Any, cluster: Any, ns: str, path: Path) -> Path:
    """A kubeconfig for a namespace-only reader (RoleBinding to `view`, no secrets)."""
    core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="dev"))
    )
    rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="dev-view"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"
            ),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="dev", namespace=ns)],
        ),
    )
    req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token("dev", ns, req).status.token
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sandbox",
                "cluster": {
                    "server": cluster.api_url,
                    "certificate-authority": str(cluster.pki.ca_cert),
                },
            }
        ],
        "users": [{"name": "dev", "user": {"token": token}}],
        "contexts": [
            {"name": "dev", "context": {"cluster": "sandbox", "user": "dev", "namespace": ns}}
        ],
        "current-context": "dev",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def kubectl_pullmedic(kubeconfig: Path, registries: Any, *args: str) -> Any:
    """`kubectl pullmedic explain ...`: kubectl resolves the plugin from PATH."""
    kubectl = paths.binary("kubectl")
    assert (BIN / "kubectl-pullmedic").exists(), "pip install -e . installs the plugin"
    env = dict(
        os.environ, KUBECONFIG=str(kubeconfig), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"
    )
    insecure = [a for r in registries.all() for a in ("--insecure-registry", r.host)]
    return subprocess.run(
        [str(kubectl), "pullmedic", "explain", *args, "--allow-address", "127.0.0.0/8", *insecure],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_explain_a_suggested_tag_fix_and_apply_its_command(
    operator: Any,
    registries: Any,
    cluster: Any,
    core: Any,
    apps: Any,
    api_client: Any,
    namespace: str,
    cluster_policy: Any,
    tmp_path: Path,
) -> None:
    r = f"team/app-{uuid.uuid4().hex[:6]}"
    for tag in ("1.4.0", "1.4.2"):
        push_image(registries.open, r, tag)
    cluster_policy([namespace], mode="Suggest")
    bad = f"{registries.open.host}/{r}:1.4.9"
    apps.create_namespaced_deployment(namespace, deployment("web", bad, replicas=1))
    kubeconfig = viewer_kubeconfig(
        core, client.RbacAuthorizationV1Api(api_client), cluster, namespace, tmp_path / "kc"
    )

    def suggested() -> Any:
        out = kubectl_pullmedic(kubeconfig, registries, "deployment/web", "--json")
        if out.returncode != 1:
            return None
        rep = json.loads(out.stdout)
        reasons = {e["reason"] for e in rep["operatorEvents"]}
        return rep if {"PullDiagnosed", "SuggestedFix"} <= reasons else None

    rep = wait_for(suggested, "explain to show the operator's diagnosis and suggestion", 90)
    assert rep["workload"] == "Deployment/web"
    assert [s["image"] for s in rep["stuck"]] == [bad]
    assert rep["stuck"][0]["reason"] in ("ErrImagePull", "ImagePullBackOff")
    (diag,) = rep["diagnoses"]
    assert diag["cause"] == "TagNotFound"
    assert diag["fix"]["image"].endswith(":1.4.2")
    # The viewer cannot read nodes: the platform is assumed, and said to be.
    assert rep["platform"].startswith("linux/amd64 (assumed")
    fixed = f"{registries.open.host}/{r}:1.4.2"
    # The operator's own command: the one its SuggestedFix Event gives.
    (cmd,) = rep["commands"]
    assert fixed in cmd and cmd.startswith(f"kubectl -n {namespace} "), cmd
    suggestion = next(
        e.message for e in events_for(core, namespace, "web") if e.reason == "SuggestedFix"
    )
    assert cmd in suggestion, (cmd, suggestion)

    text = kubectl_pullmedic(kubeconfig, registries, "deploy/web")
    assert text.returncode == 1, text.stderr
    assert "Cause: TagNotFound" in text.stdout
    assert "SuggestedFix:" in text.stdout
    assert rep["commands"][0] in text.stdout

    # The printed command is the fix: run it (as admin) and the workload heals.
    admin = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    subprocess.run(
        shlex.split(rep["commands"][0].replace("kubectl", str(paths.binary("kubectl")), 1)),
        check=True,
        env=admin,
        capture_output=True,
        timeout=60,
    )
    wait_for(lambda: running_pods(core, namespace, "app=web"), "the fixed replica running", 90)
    done = kubectl_pullmedic(kubeconfig, registries, "deployment/web")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No container is stuck" in done.stdout


def test_explain_says_when_it_cannot_read_the_pull_secret(
    operator: Any,
    registries: Any,
    cluster: Any,
    core: Any,
    api_client: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The viewer's probe is anonymous and labelled so; the operator, which read the
    secret, saw the credentials rejected: explain shows both."""
    reg = registries.bearer
    repo = f"private/app-{uuid.uuid4().hex[:6]}"
    push_image(reg, repo, "1.0")
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("regcred", namespace, reg.host, "bob", "wrong-password")
    )
    image = f"{reg.host}/{repo}:1.0"
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="lone"),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="app", image=image)],
            image_pull_secrets=[client.V1LocalObjectReference(name="regcred")],
            termination_grace_period_seconds=0,
        ),
    )
    core.create_namespaced_pod(namespace, pod)
    kubeconfig = viewer_kubeconfig(
        core, client.RbacAuthorizationV1Api(api_client), cluster, namespace, tmp_path / "kc"
    )

    def diagnosed() -> Any:
        out = kubectl_pullmedic(kubeconfig, registries, "pod/lone", "--json")
        rep = json.loads(out.stdout) if out.returncode == 1 else None
        return rep if rep and rep["operatorEvents"] else None

    rep = wait_for(diagnosed, "the pod stuck and diagnosed by the operator", 90)
    assert rep["workload"] is None
    assert rep["credentials"]["forbidden"] == ["regcred"]
    assert rep["credentials"]["anonymous"] is True
    (diag,) = rep["diagnoses"]
    assert diag["cause"] in ("AuthenticationRequired", "NotFoundOrPrivate"), diag
    said = " ".join(e["message"] for e in rep["operatorEvents"] if e["reason"] == "PullDiagnosed")
    assert "rejected the credentials" in said, said
    text = kubectl_pullmedic(kubeconfig, registries, "lone")
    assert "not allowed to read pull secret(s) regcred" in text.stdout
    assert "ANONYMOUSLY" in text.stdout
    assert "pullmedic said:" in text.stdout
    assert "No container is stuck" not in text.stdout


# --- explain and the operator agree, on the pods the kubelet leaves stuck ----------------


def _operator_cause(core: Any, ns: str, pod: str) -> str | None:
    for e in events_for(core, ns, pod):
        if e.source.component == "pullmedic" and e.reason == "PullDiagnosed":
            return str(e.message.split("cause ", 1)[1].split(",", 1)[0])
    return None


def agree(cluster: Any, registries: Any, core: Any, ns: str, pod: str) -> dict[str, Any]:
    """Wait until both the operator (its PullDiagnosed Event) and explain (exit 1) have
    diagnosed the pod; they must name the same cause. Returns explain's report."""
    seen: dict[str, Any] = {}

    def both() -> bool:
        cause = _operator_cause(core, ns, pod)
        out = kubectl_pullmedic(cluster.kubeconfig, registries, "-n", ns, f"pod/{pod}", "--json")
        if cause is None or out.returncode != 1:
            return False
        seen.update(report=json.loads(out.stdout), cause=cause)
        return True

    wait_for(both, f"the operator and explain to diagnose pod {pod}", 90)
    rep, cause = seen["report"], seen["cause"]
    assert [d["cause"] for d in rep["diagnoses"]] == [cause], (rep["diagnoses"], cause)
    return dict(rep)


def test_a_pull_secret_the_kubelet_cannot_decode(
    operator: Any, registries: Any, cluster: Any, core: Any, namespace: str
) -> None:
    """The kubelet puts the decoder's error in the waiting reason ("illegal base64 data at
    input byte 0"): no pull reason at all. Both still see the pod stuck and name the
    secret with what is wrong in it."""
    import base64

    reg = registries.bearer
    repo = f"private/app-{uuid.uuid4().hex[:6]}"
    push_image(reg, repo, "1.0")
    doc = {"auths": {reg.host: {"auth": "%%%not-base64"}}}
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="garbled"),
            type="kubernetes.io/dockerconfigjson",
            data={".dockerconfigjson": base64.b64encode(json.dumps(doc).encode()).decode()},
        ),
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="garbled"),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="app", image=f"{reg.host}/{repo}:1.0")],
            image_pull_secrets=[client.V1LocalObjectReference(name="garbled")],
            termination_grace_period_seconds=0,
        ),
    )
    core.create_namespaced_pod(namespace, pod)
    rep = agree(cluster, registries, core, namespace, "garbled")
    assert rep["diagnoses"][0]["cause"] == "MalformedSecret"
    (stuck,) = rep["stuck"]
    print(f"\n[explain] the kubelet's waiting reason: {stuck['reason']!r}")
    assert stuck["reason"] not in ("ErrImagePull", "ImagePullBackOff")  # the decoder's text
    assert f"{namespace}/garbled" in json.dumps(rep["diagnoses"])


def test_never_pull_policy_for_an_image_the_node_lacks(
    operator: Any, registries: Any, cluster: Any, core: Any, namespace: str
) -> None:
    repo = f"team/never-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, repo, "1.0")
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="never"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="app",
                    image=f"{registries.open.host}/{repo}:1.0",
                    image_pull_policy="Never",
                )
            ],
            termination_grace_period_seconds=0,
        ),
    )
    core.create_namespaced_pod(namespace, pod)
    rep = agree(cluster, registries, core, namespace, "never")
    assert rep["stuck"][0]["reason"] == "ErrImageNeverPull"


def test_an_ephemeral_debug_container_with_a_typo(
    operator: Any, registries: Any, cluster: Any, core: Any, namespace: str
) -> None:
    repo = f"team/dbg-{uuid.uuid4().hex[:6]}"
    push_image(registries.open, repo, "1.0")
    good = f"{registries.open.host}/{repo}:1.0"
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="target"),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="app", image=good)],
            termination_grace_period_seconds=0,
        ),
    )
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: core.read_namespaced_pod("target", namespace).status.phase == "Running",
        "the target pod running",
        90,
    )
    core.patch_namespaced_pod_ephemeralcontainers(
        "target",
        namespace,
        {"spec": {"ephemeralContainers": [{"name": "debug", "image": f"{good[:-3]}9.9"}]}},
    )
    rep = agree(cluster, registries, core, namespace, "target")
    assert rep["diagnoses"][0]["cause"] == "TagNotFound"
    assert rep["stuck"][0].get("kind") == "ephemeralContainers", rep["stuck"]
