"""The Helm chart (charts/pullmedic): lint, render, and agree with the kustomize base.

helm is built from its Go module into the sandbox cache (sandbox/build.sh helm); kustomize
is kubectl's. No cluster is needed.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox import paths
from tests.integration.test_manifests import kubectl

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pullmedic"
NS = "pullmedic-system"
Doc = dict[str, Any]


def helm(*args: str) -> str:
    out = subprocess.run(
        [str(paths.binary("helm")), *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def template(*sets: str, release: str = "pullmedic", ns: str = NS) -> list[Doc]:
    flags = [a for s in sets for a in ("--set", s)]
    text = helm("template", release, str(CHART), "--namespace", ns, *flags)
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[Doc]) -> dict[str, list[Doc]]:
    out: dict[str, list[Doc]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def deployment_of(docs: list[Doc]) -> Doc:
    (dep,) = by_kind(docs)["Deployment"]
    return dep


def args_of(docs: list[Doc]) -> list[str]:
    args: list[str] = deployment_of(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_helm_lint_is_clean() -> None:
    out = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out


def hooks(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]


def test_default_render_is_the_operator_alone() -> None:
    docs = template()
    (hook,) = hooks(docs)  # `helm test`'s pod, not installed
    assert (hook["kind"], hook["metadata"]["annotations"]["helm.sh/hook"]) == ("Pod", "test")
    kinds = sorted(d["kind"] for d in docs if d is not hook)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
        ]
    )


def test_non_default_values_reach_the_flags_and_objects() -> None:
    docs = template(
        "replicas=3",
        "leaderElection.leaseName=pm",
        "leaderElection.leaseNamespace=leases",
        "leaderElection.leaseDuration=15",
        "operator.logFormat=plain",
        "operator.dryRun=true",
        "operator.insecureRegistries={reg.local:5000,other:80}",
        "operator.extraArgs={--recheck-after=7}",
        "image.repository=registry.example/pullmedic",
        "image.tag=1.2.3",
        "resources.limits.memory=1Gi",
        "webhook.enabled=true",
        "metrics.serviceMonitor.enabled=true",
        "clusterPullPolicies.heal.mode=Remediate",
        "pullPolicies.team/fix.mode=Suggest",
        release="edge",
        ns="ops",
    )
    kinds = by_kind(docs)
    dep = deployment_of(docs)
    assert dep["metadata"]["name"] == "edge-pullmedic"
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/pullmedic:1.2.3"
    assert container["resources"]["limits"]["memory"] == "1Gi"
    args = container["args"]
    for flag in (
        "--leader-elect",
        "--lease-name=pm",
        "--lease-namespace=leases",
        "--lease-duration=15",
        "--log-format=plain",
        "--dry-run",
        "--insecure-registry=reg.local:5000",
        "--insecure-registry=other:80",
        "--recheck-after=7",
        "--webhook-port=9443",
    ):
        assert flag in args, (flag, args)
    # The lease Role lives where the Lease is.
    (role,) = kinds["Role"]
    assert role["metadata"]["namespace"] == "leases"
    # Webhook: serving cert mounted from the cert-manager secret the Certificate names.
    certs = {c["metadata"]["name"]: c for c in kinds["Certificate"]}
    serving = certs["edge-pullmedic-webhook"]["spec"]
    assert serving["dnsNames"][0] == "edge-pullmedic-webhook.ops.svc"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["webhook-tls"]["secret"]["secretName"] == serving["secretName"]
    (mwc,) = kinds["MutatingWebhookConfiguration"]
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "ops/edge-pullmedic-webhook"
    )
    hook = mwc["webhooks"][0]
    assert hook["clientConfig"]["service"]["namespace"] == "ops"
    assert "ops" in hook["namespaceSelector"]["matchExpressions"][0]["values"]
    # ServiceMonitor selects the metrics Service's labels.
    (sm,) = kinds["ServiceMonitor"]
    svc = next(s for s in kinds["Service"] if s["metadata"]["name"].endswith("-metrics"))
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    (cpp,) = kinds["ClusterPullPolicy"]
    assert (cpp["metadata"]["name"], cpp["spec"]) == ("heal", {"mode": "Remediate"})
    (pp,) = kinds["PullPolicy"]
    assert (pp["metadata"]["namespace"], pp["metadata"]["name"]) == ("team", "fix")


def test_leader_election_off_drops_the_flag_and_the_lease_grant() -> None:
    docs = template("leaderElection.enabled=false", "replicas=1")
    assert "--leader-elect" not in args_of(docs)
    assert "Role" not in by_kind(docs)


@pytest.mark.parametrize(("shards", "replicas"), [(2, 2), (4, 1)])
def test_sharding_renders_a_statefulset_of_shards_times_replicas(
    shards: int, replicas: int
) -> None:
    docs = template(f"sharding.shards={shards}", f"replicas={replicas}")
    kinds = by_kind(docs)
    assert "Deployment" not in kinds
    (sts,) = kinds["StatefulSet"]
    assert sts["spec"]["replicas"] == shards * replicas
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert "strategy" not in sts["spec"]
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--shards={shards}" in args and "--leader-elect" in args
    env = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "POD_NAME" in env  # the ordinal the shard comes from


def test_one_shard_is_the_plain_deployment() -> None:
    kinds = by_kind(template("sharding.shards=1"))
    assert "StatefulSet" not in kinds and len(kinds["Deployment"]) == 1
    assert not [a for a in args_of(template("sharding.shards=1")) if a.startswith("--shards")]


def test_a_malformed_pull_policy_key_fails_the_render() -> None:
    out = subprocess.run(
        [
            str(paths.binary("helm")),
            "template",
            "x",
            str(CHART),
            "--set",
            "pullPolicies.nonamespace.mode=Suggest",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "want NAMESPACE/NAME" in out.stderr


def test_monitoring_renders_the_kustomize_alerts_and_dashboard() -> None:
    """One value each turns on the PrometheusRule and the dashboard ConfigMap; the rule's
    spec is the kustomize overlay's, the dashboard the same JSON."""
    assert {"PrometheusRule", "ConfigMap"}.isdisjoint(by_kind(template()))
    docs = template(
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=kps",
        "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.namespace=grafana",
        "metrics.grafanaDashboard.annotations.grafana_folder=Kubernetes",
        release="edge",
        ns="ops",
    )
    kinds = by_kind(docs)
    (rule,) = kinds["PrometheusRule"]
    assert (rule["metadata"]["name"], rule["metadata"]["namespace"]) == ("edge-pullmedic", "ops")
    assert rule["metadata"]["labels"]["release"] == "kps"
    overlay = REPO / "manifests" / "overlays" / "monitoring"
    kustomize_rule = yaml.safe_load((overlay / "prometheusrule.yaml").read_text())
    assert rule["spec"] == kustomize_rule["spec"]
    (cm,) = kinds["ConfigMap"]
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Kubernetes"}
    assert cm["data"]["pullmedic.json"] == (overlay / "pullmedic.json").read_text()


def render_fails(*sets: str) -> str:
    """`helm template` with these values must fail: its message."""
    flags = [a for s in sets for a in ("--set", s)]
    out = subprocess.run(
        [str(paths.binary("helm")), "template", "x", str(CHART), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0, f"helm template {' '.join(sets)} rendered:\n{out.stdout}"
    return out.stderr


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("replica=3", "replica"),
        ("metrics.serviceMonitor.enable=true", "enable"),
        ("webhook.certmanager.duration=1h", "certmanager"),
        ("operator.logformat=plain", "logformat"),
    ],
)
def test_a_misspelt_value_fails_with_the_schemas_message(value: str, named: str) -> None:
    err = render_fails(value)
    assert "schema" in err and named in err, err


@pytest.mark.parametrize(
    "value",
    ["operator.logFormat=yaml", "webhook.failurePolicy=ignore", "sharding.shards=0"],
)
def test_a_wrong_value_fails_with_the_schemas_message(value: str) -> None:
    err = render_fails(value)
    assert "schema" in err, err


def test_helm_test_hook_diagnoses_an_image_as_the_nodes_would() -> None:
    docs = template(
        "image.repository=registry.example/pullmedic",
        "image.tag=1.2.3",
        "imagePullSecrets[0].name=regcred",
        "hostNetwork=true",
        "operator.insecureRegistries={reg.local:5000}",
        "operator.allowAddresses={127.0.0.0/8}",
        release="edge",
        ns="ops",
    )
    (pod,) = hooks(docs)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["hostNetwork"] is True
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    assert c["image"] == "registry.example/pullmedic:1.2.3"
    assert c["command"] == ["pullmedic"]
    assert c["args"][:2] == ["diagnose", "registry.example/pullmedic:1.2.3"]
    for flag in (
        "--pull-secret=/etc/pullmedic/pull-secrets/regcred/.dockerconfigjson",
        "--insecure-registry=reg.local:5000",
        "--allow-address=127.0.0.0/8",
        "--platform=linux/amd64",
    ):
        assert flag in c["args"], (flag, c["args"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    secret = volumes[mounts["/etc/pullmedic/pull-secrets/regcred"]]["secret"]
    assert secret == {"secretName": "regcred"}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    other = hooks(template("helmTest.image=docker.io/library/busybox:1.36"))[0]
    assert other["spec"]["containers"][0]["args"][1] == "docker.io/library/busybox:1.36"


def test_chart_crds_are_the_generated_ones() -> None:
    for name in ("clusterpullpolicies.yaml", "pullpolicies.yaml"):
        assert (CHART / "crds" / name).read_text() == (REPO / "crds" / name).read_text(), name


# ---------------------------------------------------------------------------------------
# The chart's default render and the kustomize base are the same install
# ---------------------------------------------------------------------------------------


def normalise(doc: Doc) -> Doc:
    """Drop what legitimately differs: labels on objects (helm's own), comments are gone."""
    d = copy.deepcopy(doc)
    d["metadata"].pop("labels", None)
    d["metadata"].pop("annotations", None)
    return d


def comparable(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    keep = {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "ServiceAccount",
        "PodDisruptionBudget",
        "Service",
    }
    return {(d["kind"], d["metadata"]["name"]): normalise(d) for d in docs if d["kind"] in keep}


@pytest.fixture(scope="module")
def kustomize_base() -> list[Doc]:
    text = kubectl("kustomize", str(REPO / "manifests" / "base")).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def test_chart_default_matches_the_kustomize_base(kustomize_base: list[Doc]) -> None:
    base = comparable(kustomize_base)
    chart = comparable(template())
    assert sorted(base) == sorted(chart)
    for key in base:
        assert chart[key] == base[key], key


def test_the_comparison_notices_a_difference(kustomize_base: list[Doc]) -> None:
    """Guards the check above: a changed flag or grant is a difference."""
    base = comparable(kustomize_base)
    chart = comparable(template("operator.logFormat=plain", "replicas=1"))
    key = ("Deployment", "pullmedic")
    assert chart[key] != base[key]
    spec_b, spec_c = base[key]["spec"], chart[key]["spec"]
    assert spec_b["replicas"] == 2 and spec_c["replicas"] == 1


def test_webhook_tls_self_needs_no_cert_manager() -> None:
    docs = template("webhook.enabled=true", "webhook.tls=self", release="r")
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    (cfg,) = by_kind(docs)["MutatingWebhookConfiguration"]
    assert "cert-manager.io/inject-ca-from" not in (cfg["metadata"].get("annotations") or {})
    args = args_of(docs)
    assert "--webhook-tls=self" in args
    assert f"--webhook-configuration={cfg['metadata']['name']}" in args
    spec = deployment_of(docs)["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "webhook-tls")
    assert "emptyDir" in volume
    (role,) = [r for r in by_kind(docs)["ClusterRole"] if r["metadata"]["name"].endswith("-tls")]
    assert role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [cfg["metadata"]["name"]],
            "verbs": ["get", "patch"],
        }
    ]
    from pullmedic.app import cli, runner

    parsed = cli.build_parser().parse_args(["run", *args, "--operator-namespace", NS])
    tls = runner.settings_from(parsed).webhook.tls
    assert tls is not None and tls.service == "r-pullmedic-webhook"
    # The default stays cert-manager's.
    default = template("webhook.enabled=true")
    assert by_kind(default)["Certificate"] and "--webhook-tls=self" not in args_of(default)


def test_node_credential_sources_are_mounted_read_only_from_the_node() -> None:
    docs = template(
        "nodeCredentials.providerConfig=/etc/eks/image-credential-provider/config.json",
        "nodeCredentials.providerBinDir=/etc/eks/image-credential-provider",
        "nodeCredentials.registryConfigDir=/etc/containerd/certs.d",
    )
    args = args_of(docs)
    assert "--credential-provider-config=/etc/pullmedic/node/provider-config/config.json" in args
    assert "--credential-provider-bin-dir=/etc/pullmedic/node/provider-bin" in args
    assert "--registry-config-dir=/etc/pullmedic/node/certs.d" in args
    pod = deployment_of(docs)["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert all(
        mounts[n]["readOnly"] for n in ("provider-config", "provider-bin", "registry-config")
    )
    paths_ = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert paths_ == {
        "provider-config": "/etc/eks/image-credential-provider",
        "provider-bin": "/etc/eks/image-credential-provider",
        "registry-config": "/etc/containerd/certs.d",
    }
    assert not any("credential-provider" in a for a in args_of(template()))


def test_pull_through_caches_reach_the_flag() -> None:
    docs = template(
        "nodeCredentials.pullThroughCaches[0]=cache.example.com/dockerhub=docker.io",
        "nodeCredentials.pullThroughCaches[1]=quay-cache.example.com=quay.io",
    )
    args = args_of(docs)
    assert "--pull-through-cache=cache.example.com/dockerhub=docker.io" in args
    assert "--pull-through-cache=quay-cache.example.com=quay.io" in args
    assert not any("pull-through" in a for a in args_of(template()))
