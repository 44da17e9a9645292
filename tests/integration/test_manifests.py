"""The deployment manifests against a real kube-apiserver.

- kustomize renders the base, the ServiceMonitor overlay and the monitoring overlay
  (alerts and dashboard, the chart's own files);
- every rendered object, and both example policies, pass server-side dry-run (schema,
  strict field validation, admission) — the CRDs, the namespace and the RBAC objects are
  applied for real first;
- the operator's pod template is admitted by the "restricted" Pod Security Standard that
  its namespace enforces;
- the ClusterRole, exercised with a real ServiceAccount token, allows what the operator
  does and refuses everything else with 403.

Objects this module creates are deleted afterwards, except the two CRDs: the e2e suite
installs the same ones once per session and never removes them either.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox import paths

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAY = MANIFESTS / "overlays" / "servicemonitor"
EXAMPLES = MANIFESTS / "examples"
OPERATOR_NS = "pullmedic-system"
OPERATOR_SA = "pullmedic"
CRD_NAMES = ("pullpolicies.pullmedic.dev", "clusterpullpolicies.pullmedic.dev")

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------
# kubectl
# ---------------------------------------------------------------------------------------


def kubectl_binary() -> str:
    """kubectl v1.36 built from the pinned module, like the rest of the sandbox."""
    return str(paths.binary("kubectl"))


def kubectl(
    *args: str, kubeconfig: Path | None = None, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [kubectl_binary()]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    out = subprocess.run([*argv, *args], input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"kubectl {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def render(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(kubectl("kustomize", str(path)).stdout) if d]


def dump(docs: list[Doc]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the rendered manifests"
    return found[0]


def example(name: str) -> Doc:
    doc: Doc = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return render(MANIFESTS)


def _exists(kubeconfig: Path, kind: str, name: str, namespace: str | None) -> bool:
    args = ["get", kind, name, "-o", "name"] + (["-n", namespace] if namespace else [])
    return kubectl(*args, kubeconfig=kubeconfig, check=False).returncode == 0


@pytest.fixture(scope="module")
def installed(cluster: Any, base: list[Doc]) -> Iterator[list[Doc]]:
    """CRDs, namespace, ServiceAccount and RBAC applied for real (Deployment/Service not)."""
    real_kinds = (
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    )
    docs = [d for d in base if d["kind"] in real_kinds]
    assert {d["kind"] for d in docs} == set(real_kinds)
    created: list[Doc] = []
    for d in docs:
        meta = d["metadata"]
        if d["kind"] != "CustomResourceDefinition" and not _exists(
            cluster.kubeconfig, d["kind"], meta["name"], meta.get("namespace")
        ):
            created.append(d)
    # The namespace before what lives in it, CRDs before anything could use them.
    order = {kind: i for i, kind in enumerate(real_kinds)}
    docs.sort(key=lambda d: order[d["kind"]])
    kubectl("apply", "-f", "-", kubeconfig=cluster.kubeconfig, stdin=dump(docs))
    for crd in CRD_NAMES:
        kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{crd}",
            "--timeout=60s",
            kubeconfig=cluster.kubeconfig,
        )
    try:
        yield docs
    finally:
        for d in reversed(created):
            meta = d["metadata"]
            ns = ["-n", meta["namespace"]] if meta.get("namespace") else []
            kubectl(
                "delete",
                d["kind"],
                meta["name"],
                *ns,
                "--ignore-not-found",
                "--wait=true",
                "--timeout=90s",
                kubeconfig=cluster.kubeconfig,
                check=False,
            )


@pytest.fixture(scope="module")
def operator_client(installed: list[Doc], token_client: Callable[[str, str], Any]) -> Any:
    """An API client authenticated as pullmedic-system/pullmedic, the operator's identity."""
    return token_client(OPERATOR_NS, OPERATOR_SA)


# ---------------------------------------------------------------------------------------
# (a) the base renders, and its parts fit together
# ---------------------------------------------------------------------------------------


def test_base_renders_exactly_the_operator(base: list[Doc]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in base)
    assert kinds == sorted(
        [
            ("Namespace", OPERATOR_NS),
            ("CustomResourceDefinition", "pullpolicies.pullmedic.dev"),
            ("CustomResourceDefinition", "clusterpullpolicies.pullmedic.dev"),
            ("ServiceAccount", OPERATOR_SA),
            ("ClusterRole", "pullmedic"),
            ("ClusterRoleBinding", "pullmedic"),
            ("Role", "pullmedic-leader-election"),
            ("RoleBinding", "pullmedic-leader-election"),
            ("Deployment", "pullmedic"),
            ("PodDisruptionBudget", "pullmedic"),
            ("Service", "pullmedic-metrics"),
        ]
    )
    for d in base:
        if d["kind"] in (
            "ServiceAccount",
            "Deployment",
            "Service",
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
        ):
            assert d["metadata"]["namespace"] == OPERATOR_NS, d["kind"]
    # The CRDs are exactly the generated files.
    for crd in CRD_NAMES:
        plural = crd.split(".")[0]
        generated = yaml.safe_load((REPO / "crds" / f"{plural}.yaml").read_text())
        rendered = one(base, "CustomResourceDefinition", crd)
        assert rendered["spec"] == generated["spec"]


def test_deployment_is_two_restricted_replicas_that_elect_a_leader(base: list[Doc]) -> None:
    dep = one(base, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = spec["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == (spec["selector"]["matchLabels"])
    )
    pdb = one(base, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pod["serviceAccountName"] == OPERATOR_SA
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    (vol,) = pod["volumes"]
    assert "emptyDir" in vol and vol["name"] == c["volumeMounts"][0]["name"]
    res = c["resources"]
    assert res["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert res["limits"] == {"memory": "512Mi"}
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_deployment_args_are_accepted_by_pullmedic_run(base: list[Doc]) -> None:
    from pullmedic.app import cli

    (c,) = one(base, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args(["run", *c["args"]])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert args.liveness_port == ports["health"]
    assert args.metrics_port == ports["metrics"]
    assert args.log_format == "json"
    assert not args.peering  # --standalone: no kopf peering objects
    assert args.leader_elect  # the Lease decides which replica acts


def test_metrics_service_selects_the_operator_pod(base: list[Doc]) -> None:
    svc = one(base, "Service")
    pod_labels = one(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 9090, "metrics")


# ---------------------------------------------------------------------------------------
# (b) server-side dry-run of everything, against the real apiserver
# ---------------------------------------------------------------------------------------


def test_every_rendered_object_passes_server_dry_run(
    cluster: Any, installed: list[Doc], base: list[Doc]
) -> None:
    out = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        kubeconfig=cluster.kubeconfig,
        stdin=dump(base),
    )
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == len(base), out.stdout
    assert all(line.endswith("(server dry run)") for line in lines), out.stdout
    assert "PodSecurity" not in out.stderr, out.stderr


def test_operator_pod_is_admitted_under_restricted_pod_security(
    cluster: Any, installed: list[Doc], base: list[Doc]
) -> None:
    """Pod Security admission enforces on pods, not Deployments: dry-run the pod itself."""
    ns = one(base, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    template = one(base, "Deployment")["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pullmedic-psa-check", "namespace": OPERATOR_NS},
        "spec": template["spec"],
    }
    kubectl(
        "create", "--dry-run=server", "-f", "-", kubeconfig=cluster.kubeconfig, stdin=dump([pod])
    )

    # Control: the namespace really enforces "restricted" (a root-capable pod is refused).
    loose = copy.deepcopy(pod)
    loose["metadata"]["name"] = "pullmedic-psa-control"
    del loose["spec"]["securityContext"]
    del loose["spec"]["containers"][0]["securityContext"]
    out = kubectl(
        "create",
        "--dry-run=server",
        "-f",
        "-",
        kubeconfig=cluster.kubeconfig,
        stdin=dump([loose]),
        check=False,
    )
    assert out.returncode != 0 and "violates PodSecurity" in out.stderr, out.stderr


def test_example_policies_pass_server_dry_run(
    cluster: Any, installed: list[Doc], namespace: str
) -> None:
    cpp = example("clusterpullpolicy.yaml")
    assert cpp["kind"] == "ClusterPullPolicy" and cpp["spec"]["mode"] == "Remediate"
    assert cpp["spec"]["selector"]["namespaceSelector"] == {
        "matchLabels": {"pullmedic.dev/heal": "true"}
    }
    assert cpp["spec"]["tagCorrection"]["strategy"] == "HighestPatch"
    assert {"namespace": OPERATOR_NS, "name": "registry-creds"} in cpp["spec"]["credentials"][
        "secrets"
    ]
    assert cpp["spec"]["mirrors"] and cpp["spec"]["recovery"]["recreatePods"] is True
    pp = example("pullpolicy.yaml")
    assert pp["kind"] == "PullPolicy" and pp["spec"]["mode"] == "Suggest"
    assert "namespace" not in pp["metadata"]  # applied into the user's namespace

    for args in (
        ["-f", str(EXAMPLES / "clusterpullpolicy.yaml")],
        ["-n", namespace, "-f", str(EXAMPLES / "pullpolicy.yaml")],
    ):
        out = kubectl(
            "apply", "--dry-run=server", "--validate=strict", *args, kubeconfig=cluster.kubeconfig
        )
        assert "(server dry run)" in out.stdout, out.stdout

    # Control: the dry-run really validates against the CRD schema.
    for broken, complaint in (
        ({**pp, "spec": {**pp["spec"], "mode": "Heal"}}, "Unsupported value"),
        ({**pp, "spec": {**pp["spec"], "modes": "Suggest"}}, "unknown field"),
    ):
        out = kubectl(
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            namespace,
            "-f",
            "-",
            kubeconfig=cluster.kubeconfig,
            stdin=dump([broken]),
            check=False,
        )
        assert out.returncode != 0 and complaint in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------
# (c) the ServiceMonitor overlay
# ---------------------------------------------------------------------------------------


def test_servicemonitor_overlay_renders(base: list[Doc]) -> None:
    docs = render(OVERLAY)
    assert sorted(json.dumps(d, sort_keys=True) for d in docs if d["kind"] != "ServiceMonitor") == (
        sorted(json.dumps(d, sort_keys=True) for d in base)
    )
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == OPERATOR_NS
    svc = one(base, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [OPERATOR_NS]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == svc["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    # pullmedic_image_unavailable's own `namespace` label (the workload's) wins.
    assert endpoint["honorLabels"] is True


def test_monitoring_overlay_adds_the_alerts_and_the_dashboard() -> None:
    docs = render(MANIFESTS / "overlays" / "monitoring")
    assert sorted(json.dumps(d, sort_keys=True) for d in render(OVERLAY)) == sorted(
        json.dumps(d, sort_keys=True)
        for d in docs
        if d["kind"] not in ("PrometheusRule", "ConfigMap")
    )
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["namespace"] == OPERATOR_NS
    chart_rules = REPO / "charts" / "pullmedic" / "files" / "pullmedic.rules.yaml"
    assert rule["spec"] == yaml.safe_load(chart_rules.read_text())
    dashboard = one(docs, "ConfigMap", "pullmedic-dashboard")
    assert dashboard["metadata"]["namespace"] == OPERATOR_NS
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    chart_dashboard = REPO / "charts" / "pullmedic" / "dashboards" / "pullmedic.json"
    assert dashboard["data"] == {"pullmedic.json": chart_dashboard.read_text()}


# ---------------------------------------------------------------------------------------
# (d) RBAC, as the operator's ServiceAccount
# ---------------------------------------------------------------------------------------


def can(api: Any, verb: str, group: str, resource: str, namespace: str = "") -> bool:
    from kubernetes import client

    resource, _, subresource = resource.partition("/")
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                group=group,
                resource=resource,
                subresource=subresource or None,
                namespace=namespace or None,
            )
        )
    )
    result = client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return bool(result.status.allowed)


def status_of(call: Callable[[], Any]) -> int:
    from kubernetes.client.rest import ApiException

    try:
        call()
    except ApiException as e:
        return int(e.status)
    return 200


# Everything here is refused: what the operator never does.
DENIED = [
    # secrets are never enumerated, nor replaced or removed
    ("list", "", "secrets", ""),
    ("list", "", "secrets", "NS"),
    ("watch", "", "secrets", ""),
    ("update", "", "secrets", "NS"),
    ("delete", "", "secrets", "NS"),
    # workloads: patched, never replaced, created or removed; Jobs/ReplicaSets read only
    ("delete", "apps", "deployments", "NS"),
    ("update", "apps", "deployments", "NS"),
    ("create", "apps", "deployments", "NS"),
    ("patch", "apps", "replicasets", "NS"),
    ("patch", "batch", "jobs", "NS"),
    ("delete", "batch", "cronjobs", "NS"),
    # pods: never created, replaced or exec'd into
    ("create", "", "pods", "NS"),
    ("update", "", "pods", "NS"),
    ("create", "", "pods/exec", "NS"),
    ("patch", "", "pods/status", "NS"),
    # nodes: get only
    ("update", "", "nodes", ""),
    ("patch", "", "nodes", ""),
    ("list", "", "nodes", ""),
    ("delete", "", "nodes", ""),
    # namespaces: list/watch only
    ("get", "", "namespaces", ""),
    ("patch", "", "namespaces", ""),
    ("delete", "", "namespaces", ""),
    # no credentials beyond ServiceAccount tokens (KEP-4412 token mode, create on
    # serviceaccounts/token, granted and justified), no RBAC escalation
    ("get", "", "serviceaccounts/token", "NS"),
    ("create", "", "serviceaccounts", "NS"),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
    ("escalate", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("impersonate", "", "serviceaccounts", "NS"),
    ("get", "", "configmaps", "NS"),
    # policies: read through the watch, only status written
    ("patch", "pullmedic.dev", "pullpolicies", "NS"),
    ("create", "pullmedic.dev", "clusterpullpolicies", ""),
    ("delete", "pullmedic.dev", "pullpolicies", "NS"),
    ("update", "pullmedic.dev", "clusterpullpolicies/status", ""),
    # events: new ones only
    ("delete", "", "events", "NS"),
    ("create", "events.k8s.io", "events", "NS"),
    # CRDs: observed, never changed
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("delete", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    # leases: only its own namespace's, never deleted or replaced
    ("get", "coordination.k8s.io", "leases", "NS"),
    ("patch", "coordination.k8s.io", "leases", "NS"),
    ("create", "coordination.k8s.io", "leases", ""),
    ("delete", "coordination.k8s.io", "leases", OPERATOR_NS),
    ("update", "coordination.k8s.io", "leases", OPERATOR_NS),
]


def test_leases_are_granted_in_the_operator_namespace_only(
    operator_client: Any, installed: list[Doc]
) -> None:
    for verb in ("get", "create", "patch"):
        assert can(operator_client, verb, "coordination.k8s.io", "leases", OPERATOR_NS), verb


def test_access_review_matches_the_clusterrole(
    operator_client: Any, base: list[Doc], namespace: str
) -> None:
    granted = [
        (verb, group, resource)
        for rule in one(base, "ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]
    refused = [
        g for g in granted if not (can(operator_client, *g, namespace) and can(operator_client, *g))
    ]
    assert not refused, f"granted by the ClusterRole but not allowed: {refused}"

    allowed = [
        (verb, group, resource, ns)
        for verb, group, resource, ns in DENIED
        if can(operator_client, verb, group, resource, namespace if ns == "NS" else ns)
    ]
    assert not allowed, f"allowed, but the operator must not be able to: {allowed}"


def test_operator_identity_real_calls(
    operator_client: Any, api_client: Any, core: Any, apps: Any, namespace: str
) -> None:
    """Real requests as pullmedic-system/pullmedic: what it does works, the rest is 403."""
    from kubernetes import client

    op_core = client.CoreV1Api(operator_client)
    op_apps = client.AppsV1Api(operator_client)
    op_custom = client.CustomObjectsApi(operator_client)

    # --- set-up as admin ------------------------------------------------------------
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="pull"),
            type="kubernetes.io/dockerconfigjson",
            string_data={".dockerconfigjson": '{"auths": {}}'},
        ),
    )
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="app"))
    )
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=0,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="web", image="nginx:1.27.99")]
                    ),
                ),
            ),
        ),
    )
    admin_custom = client.CustomObjectsApi(api_client)
    policy = example("pullpolicy.yaml")
    admin_custom.create_namespaced_custom_object(
        "pullmedic.dev", "v1alpha1", namespace, "pullpolicies", policy
    )
    policy_name = policy["metadata"]["name"]

    # --- allowed ------------------------------------------------------------------------
    secret = op_core.read_namespaced_secret("pull", namespace)  # probe with pod's secret
    assert secret.type == "kubernetes.io/dockerconfigjson"
    assert op_core.list_pod_for_all_namespaces(limit=1).items is not None  # kopf pod watch
    assert op_core.list_namespace(limit=1).items  # namespaceSelector evaluation
    copy_name = f"pullmedic-{uuid.uuid4().hex[:6]}"
    op_core.create_namespaced_secret(  # managed copy of a candidate secret
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=copy_name, labels={"pullmedic.dev/managed": "true"}),
            type="kubernetes.io/dockerconfigjson",
            data=secret.data,
        ),
    )
    op_core.patch_namespaced_secret(
        copy_name, namespace, [{"op": "replace", "path": "/data", "value": secret.data}]
    )
    op_core.patch_namespaced_service_account(  # attach the pull secret
        "app",
        namespace,
        [{"op": "add", "path": "/imagePullSecrets", "value": [{"name": copy_name}]}],
    )
    op_apps.patch_namespaced_deployment(  # image correction + remediation record
        "web",
        namespace,
        [
            {
                "op": "test",
                "path": "/spec/template/spec/containers/0/image",
                "value": "nginx:1.27.99",
            },
            {
                "op": "replace",
                "path": "/spec/template/spec/containers/0/image",
                "value": "nginx:1.27.5",
            },
            {
                "op": "add",
                "path": "/metadata/annotations",
                "value": {"pullmedic.dev/last-remediation": "{}"},
            },
        ],
    )
    assert apps.read_namespaced_deployment("web", namespace).spec.template.spec.containers[
        0
    ].image == ("nginx:1.27.5")
    op_custom.patch_namespaced_custom_object_status(  # engine._patch_policy_status
        "pullmedic.dev",
        "v1alpha1",
        namespace,
        "pullpolicies",
        policy_name,
        {"status": {"counts": {"detected": 1}}},
    )
    op_core.create_namespaced_event(
        namespace,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"web.{uuid.uuid4().hex[:8]}"),
            involved_object=client.V1ObjectReference(
                api_version="apps/v1", kind="Deployment", name="web", namespace=namespace
            ),
            reason="ImagePullDiagnosed",
            message="test",
            type="Normal",
            source=client.V1EventSource(component="pullmedic"),
        ),
    )
    # A node read is authorized (404 only if the node emulator registered no such node).
    assert status_of(lambda: op_core.read_node("sandbox-node")) in (200, 404)

    # --- refused ------------------------------------------------------------------------
    refused = {
        "list secrets cluster-wide": lambda: op_core.list_secret_for_all_namespaces(limit=1),
        "list secrets in a namespace": lambda: op_core.list_namespaced_secret(namespace),
        "delete a deployment": lambda: op_apps.delete_namespaced_deployment("web", namespace),
        "replace a deployment": lambda: op_apps.replace_namespaced_deployment(
            "web", namespace, apps.read_namespaced_deployment("web", namespace)
        ),
        "create a pod": lambda: op_core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="x"),
                spec=client.V1PodSpec(containers=[client.V1Container(name="x", image="x")]),
            ),
        ),
        "update a node": lambda: op_core.patch_node(
            "sandbox-node", {"metadata": {"labels": {"x": "y"}}}
        ),
        "patch a policy's spec": lambda: op_custom.patch_namespaced_custom_object(
            "pullmedic.dev",
            "v1alpha1",
            namespace,
            "pullpolicies",
            policy_name,
            {"spec": {"mode": "Remediate"}},
        ),
        # (minting a ServiceAccount token is granted: KEP-4412 token-mode providers)
        "delete a secret": lambda: op_core.delete_namespaced_secret("app", namespace),
    }
    statuses = {what: status_of(call) for what, call in refused.items()}
    assert statuses == dict.fromkeys(refused, 403), statuses


def test_webhook_overlay_can_never_block_the_cluster() -> None:
    docs = render(MANIFESTS / "overlays" / "webhook")
    (cfg,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    (hook,) = cfg["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] <= 2
    assert hook["sideEffects"] == "None"
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["operator"] == "NotIn" and set(expr["values"]) == {"kube-system", OPERATOR_NS}
    assert hook["objectSelector"]["matchExpressions"][0]["values"] == ["pullmedic"]
    assert cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{OPERATOR_NS}/pullmedic-webhook"
    )
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--webhook-port=9443" in c["args"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "webhook-tls")
    from pullmedic.app import cli

    args = cli.build_parser().parse_args(["run", *c["args"]])
    assert args.webhook_cert.startswith(mount["mountPath"])
    assert args.webhook_key.startswith(mount["mountPath"])
    (svc,) = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "pullmedic-webhook"
    ]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    (cert,) = [
        d
        for d in docs
        if d["kind"] == "Certificate" and d["metadata"]["name"] == "pullmedic-webhook"
    ]
    assert "pullmedic-webhook.pullmedic-system.svc" in cert["spec"]["dnsNames"]


def test_webhook_self_overlay_needs_no_cert_manager() -> None:
    """The operator keeps its own certificates: no cert-manager object or annotation, a
    writable mount where --webhook-cert points, and a role for its one configuration."""
    docs = render(MANIFESTS / "overlays" / "webhook-self")
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    (cfg,) = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    assert "cert-manager.io/inject-ca-from" not in (cfg["metadata"].get("annotations") or {})
    assert cfg["webhooks"][0]["failurePolicy"] == "Ignore"
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert "--webhook-tls=self" in c["args"] and "--webhook-port=9443" in c["args"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "webhook-tls")
    assert not mount.get("readOnly")
    volume = next(v for v in spec["volumes"] if v["name"] == "webhook-tls")
    assert "emptyDir" in volume and "secret" not in volume
    from pullmedic.app import cli, runner

    args = cli.build_parser().parse_args(["run", *c["args"], "--operator-namespace", OPERATOR_NS])
    tls = runner.settings_from(args).webhook.tls
    assert tls is not None and tls.directory == mount["mountPath"]
    assert tls.configuration == cfg["metadata"]["name"]
    (role,) = [
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-tls")
    ]
    (rule,) = role["rules"]
    assert rule["resources"] == ["mutatingwebhookconfigurations"]
    assert rule["resourceNames"] == [cfg["metadata"]["name"]] and rule["verbs"] == ["get", "patch"]
    (binding,) = [
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == role["metadata"]["name"]
    ]
    assert binding["subjects"][0]["namespace"] == OPERATOR_NS
