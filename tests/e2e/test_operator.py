"""The operator end to end: real apiserver, controller-manager, registries and kubelet.

State in (a broken workload and a policy), state out (a healed workload, its annotation,
Events and the policy's status).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from sandbox.images import delete_tag, push_image
from sandbox.kube import (
    deployment,
    dockerconfig_secret,
    events_for,
    pod_template,
    running_pods,
    wait_for,
)

pytestmark = pytest.mark.cluster
ANNOTATION = "pullmedic.dev/last-remediation"


def repo() -> str:
    return f"team/app-{uuid.uuid4().hex[:6]}"


def reasons(core: Any, ns: str, name: str | None = None) -> set[str]:
    return {e.reason for e in events_for(core, ns, name) if e.source.component == "pullmedic"}


def test_bad_tag_on_deployment_is_fixed_on_the_owner(
    operator: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
    custom: Any,
) -> None:
    r = repo()
    for tag in ("1.4.0", "1.4.2", "2.0.0"):
        push_image(registries.open, r, tag)
    policy = cluster_policy([namespace], mode="Remediate")
    bad = f"{registries.open.host}/{r}:1.4.9"
    apps.create_namespaced_deployment(namespace, deployment("web", bad, replicas=3))

    def healed() -> bool:
        d = apps.read_namespaced_deployment("web", namespace)
        image = d.spec.template.spec.containers[0].image
        pods = running_pods(core, namespace, "app=web")
        return (
            image.endswith(":1.4.2")
            and len(pods) == 3
            and all(p.spec.containers[0].image.endswith(":1.4.2") for p in pods)
        )

    wait_for(healed, "the Deployment to be patched to 1.4.2 and all replicas running", 90)
    d = apps.read_namespaced_deployment("web", namespace)
    record = json.loads(d.metadata.annotations[ANNOTATION])
    assert record["previousImage"] == bad
    assert record["newImage"] == f"{registries.open.host}/{r}:1.4.2"
    assert record["cause"] == "TagNotFound"
    assert record["policy"] == f"ClusterPullPolicy/{policy}"
    assert "Remediated" in reasons(core, namespace, "web")
    assert "PullDiagnosed" in reasons(core, namespace)

    def status() -> Any:
        obj = custom.get_cluster_custom_object(
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies", policy
        )
        st = obj.get("status") or {}
        return st if (st.get("counts") or {}).get("remediated", 0) >= 1 else None

    st = wait_for(status, "policy status counts")
    assert st["lastActions"][-1]["cause"] == "TagNotFound"
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in st["conditions"])


def test_missing_secret_is_copied_attached_and_pods_recreated(
    operator: Any, private_case: Any, core: Any, apps: Any, custom: Any, namespace: str
) -> None:
    apps.create_namespaced_deployment(namespace, deployment("priv", private_case.image, 3))
    wait_for(
        lambda: len(running_pods(core, namespace, "app=priv")) == 3,
        "all private replicas running",
        90,
    )
    copied = core.read_namespaced_secret(private_case.copied_secret, namespace)
    assert copied.metadata.labels["pullmedic.dev/managed"] == "true"
    sa = core.read_namespaced_service_account("default", namespace)
    assert [s.name for s in sa.image_pull_secrets] == [private_case.copied_secret]
    pods = running_pods(core, namespace, "app=priv")
    assert all(p.spec.image_pull_secrets for p in pods)  # new pods got it at admission

    # One remediation, however many replicas failed and however late: one record, one Event.
    # First a positive sign that the operator has seen every replica recover (its policy
    # status counts no stuck pod), so no late failure is still to come.
    def settled() -> Any:
        st = (
            custom.get_cluster_custom_object(
                "pullmedic.dev", "v1alpha1", "clusterpullpolicies", private_case.policy
            ).get("status")
            or {}
        )
        counts = st.get("counts") or {}
        return counts if counts.get("stuck") == 0 and counts.get("remediated") else None

    counts = wait_for(settled, "the policy status to show every replica recovered", 30)
    assert counts["remediated"] == 1, counts
    record = json.loads(
        apps.read_namespaced_deployment("priv", namespace).metadata.annotations[ANNOTATION]
    )
    assert record["action"] == "AttachPullSecret"
    assert [e.reason for e in events_for(core, namespace, "priv")].count("Remediated") == 1

    # The source rotates: the managed copy follows without any pod failing.
    src = core.read_namespaced_secret("regcred", private_case.source_namespace)
    rotated = dockerconfig_secret(
        "regcred", private_case.source_namespace, "other.example.com:5000", "bob", "rotated"
    )
    src.data = rotated.data
    core.replace_namespaced_secret("regcred", private_case.source_namespace, src)
    wait_for(
        lambda: (
            core.read_namespaced_secret(private_case.copied_secret, namespace).data == rotated.data
        ),
        "the managed copy to follow its rotated source",
        30,
    )


def test_template_with_its_own_wrong_secret_gets_the_working_one(
    operator: Any, private_case: Any, registries: Any, core: Any, apps: Any, namespace: str
) -> None:
    """Admission ignores the ServiceAccount when a pod lists pull secrets: fix the template."""
    reg = registries.bearer
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("stale", namespace, reg.host, "bob", "wrong-password")
    )
    dep = deployment("own", private_case.image, 2)
    dep.spec.template.spec.image_pull_secrets = [client.V1LocalObjectReference(name="stale")]
    apps.create_namespaced_deployment(namespace, dep)
    wait_for(lambda: len(running_pods(core, namespace, "app=own")) == 2, "replicas running", 90)
    d = apps.read_namespaced_deployment("own", namespace)
    assert [s.name for s in d.spec.template.spec.image_pull_secrets] == [
        "stale",
        private_case.copied_secret,
    ]
    assert json.loads(d.metadata.annotations[ANNOTATION])["cause"] == "CredentialsRejected"
    assert not core.read_namespaced_service_account("default", namespace).image_pull_secrets


def test_pullpolicy_cannot_name_another_namespaces_secret(custom: Any, namespace: str) -> None:
    body = {
        "apiVersion": "pullmedic.dev/v1alpha1",
        "kind": "PullPolicy",
        "metadata": {"name": "steal"},
        "spec": {"credentials": {"secrets": [{"name": "regcred", "namespace": "kube-system"}]}},
    }
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            "pullmedic.dev", "v1alpha1", namespace, "pullpolicies", body, field_validation="Strict"
        )
    assert err.value.status in (400, 422)
    assert "unknown field" in err.value.body and "namespace" in err.value.body


@pytest.mark.parametrize(
    "spec",
    [
        {"mode": "Heal"},
        {"tagCorrection": {"strategy": "Newest"}},
        {"rateLimit": {"remediationsPerHour": 0}},
        {"mirrors": [{"registry": "http://x"}]},
    ],
)
def test_malformed_policy_is_refused_by_the_apiserver(custom: Any, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "pullmedic.dev/v1alpha1",
        "kind": "ClusterPullPolicy",
        "metadata": {"name": f"bad-{uuid.uuid4().hex[:6]}"},
        "spec": spec,
    }
    with pytest.raises(ApiException) as err:
        custom.create_cluster_custom_object(
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies", body
        )
    assert err.value.status == 422
    assert "spec." in err.value.body


def test_semantically_invalid_policy_is_ready_false(
    operator: Any,
    custom: Any,
    cluster_policy: Any,
    namespace: str,
) -> None:
    name = cluster_policy([namespace], tagCorrection={"strategy": "SemverRange"})

    def cond() -> Any:
        obj = custom.get_cluster_custom_object(
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies", name
        )
        conds = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Ready"), None)

    c = wait_for(cond, "a Ready condition")
    assert c["status"] == "False" and c["reason"] == "InvalidSpec"
    assert "needs tagCorrection.range" in c["message"]


def test_suggest_mode_changes_nothing_and_publishes_the_fix(
    operator: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    r = repo()
    push_image(registries.open, r, "3.1.0")
    cluster_policy([namespace], mode="Suggest")
    bad = f"{registries.open.host}/{r}:3.1.1"
    apps.create_namespaced_deployment(namespace, deployment("sug", bad, replicas=2))
    ev = wait_for(
        lambda: [e for e in events_for(core, namespace, "sug") if e.reason == "SuggestedFix"],
        "a SuggestedFix event",
        60,
    )
    assert "kubectl -n" in ev[0].message and ":3.1.0" in ev[0].message
    d = apps.read_namespaced_deployment("sug", namespace)
    assert d.spec.template.spec.containers[0].image == bad
    assert ANNOTATION not in (d.metadata.annotations or {})
    # Two more diagnosis rounds (--recheck-after 5), seen in the plans counter: no new Event.
    rounds = operator.metric("pullmedic_plans_total", decision="suggested")
    wait_for(
        lambda: operator.metric("pullmedic_plans_total", decision="suggested") >= rounds + 2,
        "two more diagnosis rounds",
        40,
    )
    again = [e for e in events_for(core, namespace, "sug") if e.reason == "SuggestedFix"]
    assert len(again) == 1 and (again[0].count or 1) == 1


def test_rate_limit_caps_remediations_per_policy(
    operator: Any, registries: Any, core: Any, apps: Any, namespace: str, cluster_policy: Any
) -> None:
    r = repo()
    push_image(registries.open, r, "4.0.0")
    cluster_policy([namespace], mode="Remediate", rateLimit={"remediationsPerHour": 1})
    for name in ("one", "two", "three"):
        apps.create_namespaced_deployment(
            namespace, deployment(name, f"{registries.open.host}/{r}:4.0.9", replicas=1)
        )

    def patched() -> list[str]:
        return [
            d.metadata.name
            for d in apps.list_namespaced_deployment(namespace).items
            if d.spec.template.spec.containers[0].image.endswith(":4.0.0")
        ]

    wait_for(lambda: len(patched()) == 1, "one remediation", 60)
    wait_for(
        lambda: len([e for e in events_for(core, namespace) if e.reason == "SuggestedFix"]) == 2,
        "the other two suggested only",
        60,
    )
    assert len(patched()) == 1


def test_gitops_managed_workload_only_gets_a_suggestion(
    operator: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    r = repo()
    push_image(registries.open, r, "1.0.0")
    cluster_policy([namespace], mode="Remediate")
    bad = f"{registries.open.host}/{r}:1.0.1"
    apps.create_namespaced_deployment(
        namespace,
        deployment("argo", bad, replicas=1, labels={"app.kubernetes.io/managed-by": "argocd"}),
    )
    wait_for(
        lambda: [e for e in events_for(core, namespace, "argo") if e.reason == "SuggestedFix"],
        "a SuggestedFix event",
        60,
    )
    d = apps.read_namespaced_deployment("argo", namespace)
    assert d.spec.template.spec.containers[0].image == bad


def test_pod_matched_by_no_policy_is_only_observed(
    operator: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
) -> None:
    r = repo()
    push_image(registries.open, r, "1.0.0")
    bad = f"{registries.open.host}/{r}:1.0.1"
    apps.create_namespaced_deployment(namespace, deployment("obs", bad, replicas=1))
    wait_for(lambda: "PullDiagnosed" in reasons(core, namespace), "a PullDiagnosed event", 60)
    d = apps.read_namespaced_deployment("obs", namespace)
    assert d.spec.template.spec.containers[0].image == bad
    assert not ({"Remediated", "SuggestedFix"} & reasons(core, namespace))


def test_unreachable_registry_switches_to_mirror_only_when_image_is_there(
    operator: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    from sandbox import procs

    dead = f"127.0.0.1:{procs.free_port()}"  # nothing listens: connection refused
    r = repo()
    push_image(registries.mirror, r, "2.0")
    cluster_policy(
        [namespace],
        mode="Remediate",
        mirrors=[{"registry": dead, "mirror": registries.mirror.host}],
    )
    apps.create_namespaced_deployment(namespace, deployment("mir", f"{dead}/{r}:2.0", 2))
    apps.create_namespaced_deployment(namespace, deployment("nomir", f"{dead}/{r}:9.9", 1))
    wait_for(
        lambda: len(running_pods(core, namespace, "app=mir")) == 2, "mirrored replicas running", 90
    )
    d = apps.read_namespaced_deployment("mir", namespace)
    assert d.spec.template.spec.containers[0].image == f"{registries.mirror.host}/{r}:2.0"
    # The diagnosis of "nomir" itself (on its pod), not the mirrored workload's.
    ev = wait_for(
        lambda: [
            e
            for e in events_for(core, namespace)
            if e.reason == "PullDiagnosed" and e.involved_object.name.startswith("nomir-")
        ],
        "the diagnosis of nomir's pod",
        30,
    )
    assert "cause RegistryUnreachable" in ev[0].message, ev[0].message
    assert "not on it" in ev[0].message or "no mirror" in ev[0].message, ev[0].message
    d2 = apps.read_namespaced_deployment("nomir", namespace)
    assert d2.spec.template.spec.containers[0].image == f"{dead}/{r}:9.9"


def test_init_container_statefulset_bare_pod_and_cronjob(
    operator: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
    api_client: Any,
) -> None:
    r = repo()
    push_image(registries.open, r, "5.2.1")
    good = f"{registries.open.host}/{r}:5.2.1"
    bad = f"{registries.open.host}/{r}:5.2.7"
    cluster_policy([namespace], mode="Remediate")

    # init container of a Deployment
    dep = deployment("init", good, replicas=1)
    dep.spec.template.spec.init_containers = [  # an init container must finish: `true`
        client.V1Container(name="setup", image=bad, image_pull_policy="Always", command=["true"])
    ]
    apps.create_namespaced_deployment(namespace, dep)
    # StatefulSet
    apps.create_namespaced_stateful_set(
        namespace,
        client.V1StatefulSet(
            metadata=client.V1ObjectMeta(name="db"),
            spec=client.V1StatefulSetSpec(
                service_name="db",
                replicas=2,
                selector=client.V1LabelSelector(match_labels={"app": "db"}),
                template=pod_template(bad, {"app": "db"}),
            ),
        ),
    )
    # bare pod
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="bare", labels={"app": "bare"}),
            spec=pod_template(bad, {}).spec,
        ),
    )
    # CronJob-owned Job (created the way the cronjob controller would, for determinism)
    batch = client.BatchV1Api(api_client)
    cj = batch.create_namespaced_cron_job(
        namespace,
        client.V1CronJob(
            metadata=client.V1ObjectMeta(name="nightly"),
            spec=client.V1CronJobSpec(
                schedule="0 3 * * *",
                suspend=True,
                job_template=client.V1JobTemplateSpec(
                    spec=client.V1JobSpec(
                        template=pod_template(bad, {"app": "nightly"}, restart_policy="Never")
                    )
                ),
            ),
        ),
    )
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(
                name="nightly-manual",
                labels={"app": "nightly"},
                owner_references=[
                    client.V1OwnerReference(
                        api_version="batch/v1",
                        kind="CronJob",
                        name="nightly",
                        uid=cj.metadata.uid,
                        controller=True,
                        block_owner_deletion=True,
                    )
                ],
            ),
            spec=client.V1JobSpec(
                template=pod_template(bad, {"app": "nightly"}, restart_policy="Never")
            ),
        ),
    )

    wait_for(lambda: len(running_pods(core, namespace, "app=init")) == 1, "init fixed", 90)
    d = apps.read_namespaced_deployment("init", namespace)
    assert d.spec.template.spec.init_containers[0].image == good
    wait_for(lambda: len(running_pods(core, namespace, "app=db")) == 2, "statefulset", 90)
    assert (
        apps.read_namespaced_stateful_set("db", namespace).spec.template.spec.containers[0].image
        == good
    )
    wait_for(lambda: len(running_pods(core, namespace, "app=bare")) == 1, "bare pod", 90)
    assert core.read_namespaced_pod("bare", namespace).spec.containers[0].image == good
    wait_for(lambda: len(running_pods(core, namespace, "app=nightly")) == 1, "cron job", 90)
    cj2 = batch.read_namespaced_cron_job("nightly", namespace)
    assert cj2.spec.job_template.spec.template.spec.containers[0].image == good


def test_bare_pod_with_credential_cause_is_reported_only(
    operator: Any,
    registries: Any,
    core: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    r = f"private/bare-{uuid.uuid4().hex[:6]}"
    push_image(registries.bearer, r, "1.0")
    reg = registries.bearer
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("regcred", namespace, reg.host, "bob", reg.users["bob"])
    )
    cluster_policy(
        [namespace],
        mode="Remediate",
        credentials={"secrets": [{"namespace": namespace, "name": "regcred"}]},
    )
    decided = operator.metric("pullmedic_plans_total", mode="Remediate")
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="lonely"),
            spec=pod_template(f"{reg.host}/{r}:1.0", {}).spec,
        ),
    )
    ev = wait_for(
        lambda: [e for e in events_for(core, namespace, "lonely") if e.reason == "PullDiagnosed"],
        "diagnosis",
        60,
    )
    assert "immutable" in ev[0].message
    # The decision has ended (its plan is counted after any write it makes): only now does
    # an untouched ServiceAccount show that nothing was attached.
    wait_for(
        lambda: operator.metric("pullmedic_plans_total", mode="Remediate") > decided,
        "the decision to end",
        30,
    )
    sa = core.read_namespaced_service_account("default", namespace)
    assert not sa.image_pull_secrets


def test_circuit_breaker_stops_a_remediation_that_did_not_help(
    operator: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    r = repo()
    push_image(registries.open, r, "7.0.1")
    cluster_policy([namespace], mode="Remediate")
    apps.create_namespaced_deployment(
        namespace, deployment("cb", f"{registries.open.host}/{r}:7.0.9", replicas=1)
    )
    wait_for(
        lambda: (
            ANNOTATION
            in (apps.read_namespaced_deployment("cb", namespace).metadata.annotations or {})
        ),
        "first remediation",
        60,
    )
    delete_tag(registries.open, r, "7.0.1")  # the fix stops working
    for p in core.list_namespaced_pod(namespace, label_selector="app=cb").items:
        core.delete_namespaced_pod(p.metadata.name, namespace, grace_period_seconds=0)

    def tripped() -> bool:
        d = apps.read_namespaced_deployment("cb", namespace)
        return (d.metadata.annotations or {}).get("pullmedic.dev/circuit") == "open"

    wait_for(tripped, "the circuit breaker to open", 90)
    assert "RemediationIneffective" in reasons(core, namespace, "cb")
    d = apps.read_namespaced_deployment("cb", namespace)
    assert d.spec.template.spec.containers[0].image.endswith(":7.0.1")  # not patched again


def test_restart_mid_remediation_converges_without_duplicate_writes(
    sandbox: Any,
    operator_kubeconfig: Any,
    private_case: Any,
    registries: Any,
    core: Any,
    apps: Any,
    namespace: str,
    tmp_path: Any,
) -> None:
    from tests.e2e.conftest import OperatorProcess

    apps.create_namespaced_deployment(namespace, deployment("rs", private_case.image, 2))
    op = OperatorProcess(operator_kubeconfig, registries, tmp_path / "op1.log")
    try:
        op.start()
        copied = private_case.copied_secret
        wait_for(
            lambda: core.read_namespaced_secret(copied, namespace), "first write", 60, every=0.05
        )
        op.stop(kill=True)  # killed right after its first write
        rv = core.read_namespaced_secret(copied, namespace).metadata.resource_version
        op.log = tmp_path / "op2.log"
        op.start()
        wait_for(lambda: len(running_pods(core, namespace, "app=rs")) == 2, "convergence", 90)
        sa = core.read_namespaced_service_account("default", namespace)
        assert [s.name for s in sa.image_pull_secrets] == [copied]  # attached exactly once
        assert core.read_namespaced_secret(copied, namespace).metadata.resource_version == rv
    finally:
        op.stop()


def test_metrics_and_health_endpoints(operator: Any) -> None:
    """Runs after the scenarios above: their detections and actions are counted."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).text
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("pullmedic_")
    }
    assert samples['pullmedic_detections_total{cause="TagNotFound"}'] >= 1
    assert samples['pullmedic_actions_total{action="PatchWorkloadImage",outcome="applied"}'] >= 1
    assert samples['pullmedic_actions_total{action="RecreatePods",outcome="applied"}'] >= 1
    assert samples["pullmedic_time_to_action_seconds_count"] >= 1
    assert samples["pullmedic_probe_duration_seconds_count"] >= 1
    assert samples["pullmedic_backoff_seconds_saved_total"] > 0
    health = httpx.get(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=5)
    assert health.status_code == 200, health.text
    ready = httpx.get(f"http://127.0.0.1:{operator.liveness_port}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"ok": True, "problems": []}


def test_no_marks_on_pods_and_no_secret_material_anywhere(
    operator: Any,
    registries: Any,
    core: Any,
    custom: Any,
) -> None:
    """Runs last in this module: searches everything the operator wrote so far."""
    for p in core.list_pod_for_all_namespaces().items:
        ann = p.metadata.annotations or {}
        assert not [k for k in ann if "pullmedic" in k or "kopf" in k], p.metadata.name
        assert not [f for f in p.metadata.finalizers or [] if "pullmedic" in f or "kopf" in f]
    secrets = [v for r in registries.all() for v in r.users.values()]
    import base64

    needles = set(secrets) | {
        base64.b64encode(f"{u}:{pw}".encode()).decode()
        for r in registries.all()
        for u, pw in r.users.items()
    }
    # It ran as the manifests' ServiceAccount and was refused nothing it needed.
    assert "Forbidden" not in operator.logs() and " 403" not in operator.logs()
    haystacks = [operator.logs()]
    haystacks += [f"{e.message} {e.reason}" for e in core.list_event_for_all_namespaces().items]
    for kind in ("clusterpullpolicies",):
        for obj in custom.list_cluster_custom_object("pullmedic.dev", "v1alpha1", kind)["items"]:
            haystacks.append(json.dumps(obj.get("status") or {}))
    for text in haystacks:
        for needle in needles:
            assert needle not in text
