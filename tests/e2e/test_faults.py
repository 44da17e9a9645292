"""The operator survives its control plane: faults between it and the apiserver.

Every case runs a fresh operator whose kubeconfig points at an ``ApiFaultProxy`` in front
of the sandbox apiserver, injects one fault, ends it, and asserts what a user cares about:
workloads broken during or after the fault are healed within a bound, the policy status is
current again, and a restart in the middle of a remediation writes nothing twice. Each case
prints how long healing took after the fault ended (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import watch

from sandbox.images import push_image
from sandbox.kube import deployment, events_for, pod_template, running_pods, wait_for
from sandbox.tcpfault import ApiFaultProxy, SeenRequest
from tests.e2e.conftest import OperatorProcess

pytestmark = pytest.mark.cluster

ANNOTATION = "pullmedic.dev/last-remediation"
REFUSED_FOR = 90.0
BLACKHOLED_FOR = 90.0
DROPPED_FOR = 30.0
HEAL_WITHIN = 90.0  # the longest any case may take before it is reported as not healed
# A workload broken right after the fault ends: healed within these (the API's return is
# probed every second and ends every back-off; a silently dead connection is replaced
# within 45 s, as client-go's HTTP/2 health check does: read-idle 30 s + ping 15 s).
AFTER_RETURN = 10.0
AFTER_DROP = 45.0
# After a control-plane restart the time to heal also holds the reconnection of the
# controller-manager, the scheduler and the kubelet (they create, place and pull the broken
# Deployment's pods), each with client-go's reflector back-off (0.8 s doubling to 30 s,
# jittered): 15 s once, 30 s another time, none of it pullmedic's. What pullmedic owns is
# bounded on its own: from the kubelet's pull failure (seen by a watch) to the fix.
FIXED_AFTER_FAILURE = 10.0
STATUS_WITHIN = 30.0  # after healing: the status flusher runs every second
HTTP = pytest.mark.parametrize("proxy", ["http"], indirect=True)


def report(what: str, seconds: float) -> None:
    print(f"\n[faults] {what}: {seconds:.1f}s", flush=True)


@pytest.fixture
def proxy(request: pytest.FixtureRequest, sandbox: Any) -> Iterator[ApiFaultProxy]:
    """Raw TCP by default; ``http`` terminates TLS with the sandbox PKI to see requests."""
    http = getattr(request, "param", "tcp") == "http"
    p = ApiFaultProxy(sandbox.cluster.api_url, terminate_tls=sandbox.cluster.pki if http else None)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def operator(
    sandbox: Any, operator_kubeconfig: Path, proxy: ApiFaultProxy, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator as installed (its ServiceAccount token), reaching the API via the proxy.
    Named like the shared fixture so a failing case shows this operator's log."""
    cfg = json.loads(operator_kubeconfig.read_text())
    cfg["clusters"][0]["cluster"]["server"] = proxy.url
    kubeconfig = tmp_path / "operator-via-proxy.kubeconfig"
    kubeconfig.write_text(json.dumps(cfg, indent=2))
    kubeconfig.chmod(0o600)
    op = OperatorProcess(kubeconfig, sandbox.registries, tmp_path / "operator.log")
    try:
        yield op
    finally:
        op.stop()


# --- helpers --------------------------------------------------------------------------


def repo() -> str:
    return f"team/fault-{uuid.uuid4().hex[:6]}"


def good_and_bad(registries: Any) -> tuple[str, str]:
    """A pushed image and a tag of it that does not exist (TagNotFound, fixable)."""
    r = repo()
    push_image(registries.open, r, "1.0.0")
    host = registries.open.host
    return f"{host}/{r}:1.0.0", f"{host}/{r}:1.0.9"


def start(op: OperatorProcess, custom: Any, policy: str) -> None:
    """Start and wait until the operator watches policies (it wrote the Ready condition)."""
    op.start()

    def ready() -> bool:
        obj = custom.get_cluster_custom_object(
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies", policy
        )
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    wait_for(ready, f"the operator to accept {policy}", 60)


def alive(op: OperatorProcess) -> str:
    return "running" if op.proc is not None and op.proc.poll() is None else "EXITED"


def deployment_healed(apps: Any, core: Any, ns: str, name: str, image: str, n: int) -> bool:
    d = apps.read_namespaced_deployment(name, ns)
    pods = running_pods(core, ns, f"app={name}")
    return (
        d.spec.template.spec.containers[0].image == image
        and len(pods) == n
        and all(p.spec.containers[0].image == image for p in pods)
    )


class PodTimeline:
    """When a watch first saw a workload's pods created, placed on a node and failing to
    pull. A watch delivers every update, so a failure fixed between two polls is seen."""

    STEPS = ("created", "scheduled", "pull failed")

    def __init__(self, core: Any, ns: str, selector: str) -> None:
        self.core, self.ns, self.selector = core, ns, selector
        self.first: dict[str, float] = {}
        self.error: BaseException | None = None  # the last time the stream broke
        self.broken = 0
        self._watch = watch.Watch()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-timeline", daemon=True)

    def __enter__(self) -> PodTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._watch.stop()  # the thread may sit in a read until the next event; it is a daemon

    def _seen(self, step: str) -> None:
        self.first.setdefault(step, time.monotonic())

    def _run(self) -> None:
        """Watch until stopped; a broken stream (the API server restarting its storage
        ends watches) resumes from the last resourceVersion, so no update is skipped."""
        rv = ""
        while not self._stopped.is_set():
            kw: dict[str, Any] = {"label_selector": self.selector, "timeout_seconds": 30}
            if rv:
                kw["resource_version"] = rv
            try:
                for ev in self._watch.stream(self.core.list_namespaced_pod, self.ns, **kw):
                    pod = ev["object"]
                    rv = pod.metadata.resource_version
                    self._saw(pod)
            except Exception as e:
                self.error, self.broken = e, self.broken + 1
                if getattr(e, "status", None) == 410:
                    rv = ""  # too old: list again (the steps seen so far are kept)
                if self.broken > 50:
                    return  # the test says so with the steps it has
                time.sleep(0.2)

    def _saw(self, pod: Any) -> None:
        self._seen("created")
        if pod.spec.node_name:
            self._seen("scheduled")
        for st in (pod.status and pod.status.container_statuses) or ():
            waiting = st.state and st.state.waiting
            if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff"):
                self._seen("pull failed")

    def since(self, t0: float) -> str:
        return ", ".join(
            f"{step} +{self.first[step] - t0:.1f}s" if step in self.first else f"{step} never"
            for step in self.STEPS
        ) + (f" (the watch broke {self.broken}x, last: {self.error!r})" if self.broken else "")


def template_image(apps: Any, ns: str, name: str) -> str:
    return str(apps.read_namespaced_deployment(name, ns).spec.template.spec.containers[0].image)


def wait_healed(check: Callable[[], bool], what: str, since: float, op: OperatorProcess) -> float:
    """Seconds from ``since`` (the end of the fault) until ``check`` holds."""
    deadline = since + HEAL_WITHIN
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic() - since
        except Exception:  # the API may briefly 404 while things are created
            pass
        time.sleep(0.3)
    raise AssertionError(
        f"{what} not healed within {HEAL_WITHIN:.0f}s after the fault ended "
        f"(operator process {alive(op)})"
    )


def policy_status(custom: Any, name: str) -> dict[str, Any]:
    obj = custom.get_cluster_custom_object("pullmedic.dev", "v1alpha1", "clusterpullpolicies", name)
    return dict(obj.get("status") or {})


def wait_status_current(
    custom: Any, policy: str, workloads: list[str], op: OperatorProcess
) -> dict[str, Any]:
    """The status counts every remediation exactly once and lists each workload's fix
    once in lastActions (a double count after a restart fails, as does a lost one)."""
    last: dict[str, Any] = {}
    deadline = time.monotonic() + STATUS_WITHIN
    while time.monotonic() < deadline:
        last = policy_status(custom, policy)
        remediated = (last.get("counts") or {}).get("remediated", 0)
        listed = {a.get("workload") for a in last.get("lastActions") or ()}
        if remediated >= len(workloads) and all(w in listed for w in workloads):
            applied_ = [
                a.get("workload")
                for a in last.get("lastActions") or ()
                if a.get("result") == "applied"
            ]
            assert remediated == len(workloads), (
                f"status of {policy} counts {remediated} remediations of {workloads}: "
                f"lastActions={last.get('lastActions')}"
            )
            assert sorted(applied_) == sorted(workloads), (
                f"status of {policy}: applied fixes listed {applied_}, want each of "
                f"{workloads} once"
            )
            return last
        time.sleep(0.3)
    raise AssertionError(
        f"status of {policy} not current within {STATUS_WITHIN:.0f}s after healing: wanted "
        f"{len(workloads)} remediations of {workloads}, got counts={last.get('counts')} "
        f"lastActions={last.get('lastActions')} "
        f"(operator process {alive(op)})"
    )


def remediated(apps: Any, ns: str, name: str) -> bool:
    d = apps.read_namespaced_deployment(name, ns)
    return ANNOTATION in (d.metadata.annotations or {})


def workload_events(core: Any, ns: str, name: str) -> dict[str, int]:
    """pullmedic's Events on one object, by reason (aggregated counts included)."""
    out: dict[str, int] = {}
    for e in events_for(core, ns, name):
        if e.source and e.source.component == "pullmedic":
            out[e.reason] = out.get(e.reason, 0) + (e.count or 1)
    return out


def applied(reqs: list[SeenRequest]) -> list[SeenRequest]:
    return [r for r in reqs if r.ok]


def image_patches(reqs: list[SeenRequest]) -> list[SeenRequest]:
    return [
        r
        for r in applied(reqs)
        if any(
            op.get("op") == "replace" and str(op.get("path", "")).endswith("/image")
            for op in (r.json() if isinstance(r.json(), list) else [])
        )
    ]


def record_writes(reqs: list[SeenRequest]) -> list[SeenRequest]:
    return [r for r in applied(reqs) if ANNOTATION.encode() in r.body.replace(b"~1", b"/")]


def record_times(req: SeenRequest) -> list[str]:
    """The ``time`` of each remediation record a JSON patch writes."""
    out: list[str] = []
    for op in req.json() or ():
        value = op.get("value")
        values = value.values() if isinstance(value, dict) else [value]
        for v in values:
            if isinstance(v, str) and v.startswith("{"):
                out.append(str(json.loads(v).get("time")))
    return out


def assert_remediated_once(
    proxy: ApiFaultProxy, core: Any, ns: str, kind: str, name: str, *, image: bool
) -> None:
    """One image patch (when the fix is an image), one record, one Remediated Event."""
    plural = {"Deployment": "deployments", "StatefulSet": "statefulsets"}[kind]
    writes = applied(proxy.seen("PATCH", rf"^/apis/apps/v1/namespaces/{ns}/{plural}/{name}$"))
    problems = []
    if image and len(image_patches(writes)) != 1:
        problems.append(f"{len(image_patches(writes))} image patches (want 1)")
    records = record_writes(writes)
    if len(records) != 1:
        times = [t for r in records for t in record_times(r)]
        problems.append(f"the remediation record was written {len(records)} times {times}")
    events = workload_events(core, ns, name)
    if events.get("Remediated") != 1 or any(n > 1 for n in events.values()):
        problems.append(f"Events on the {kind} by reason: {events} (want one Remediated)")
    on_pods: dict[str, int] = {}
    for e in events_for(core, ns):
        if e.involved_object.kind == "Pod" and e.source and e.source.component == "pullmedic":
            key = f"{e.involved_object.name}:{e.reason}"
            on_pods[key] = on_pods.get(key, 0) + (e.count or 1)
    print(f"\n[faults] Events on {kind} {name}: {events}; on its pods: {on_pods}")
    assert not problems, f"{kind} {name} after the restart: " + "; ".join(problems)


# --- network faults -------------------------------------------------------------------


def outage_case(
    mode: str,
    seconds: float,
    op: OperatorProcess,
    proxy: ApiFaultProxy,
    registries: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    policy: str,
) -> None:
    """One workload remediated as the fault starts (its status write falls into it), one
    broken during the fault, one after: all healed, the status counts all three."""
    start(op, custom, policy)
    images = {name: good_and_bad(registries) for name in ("before", "during", "after")}
    apps.create_namespaced_deployment(namespace, deployment("before", images["before"][1], 1))
    wait_for(lambda: remediated(apps, namespace, "before"), "the first remediation", 60, 0.05)
    proxy.set_mode(mode)
    began = time.monotonic()
    apps.create_namespaced_deployment(namespace, deployment("during", images["during"][1], 2))
    time.sleep(max(0.0, seconds - (time.monotonic() - began)))  # the fault's duration
    proxy.set_mode("pass")
    ended = time.monotonic()
    apps.create_namespaced_deployment(namespace, deployment("after", images["after"][1], 2))
    healed: dict[str, float] = {}
    for name, n in (("during", 2), ("after", 2)):
        healed[name] = wait_healed(
            lambda name=name, n=n: deployment_healed(  # type: ignore[misc]
                apps, core, namespace, name, images[name][0], n
            ),
            f"Deployment {name}",
            ended,
            op,
        )
        report(
            f"{mode} {seconds:.0f}s: Deployment '{name}' healed after the fault ended",
            healed[name],
        )
    wait_status_current(
        custom, policy, [f"Deployment/{namespace}/{n}" for n in ("before", "during", "after")], op
    )
    report(
        f"{mode} {seconds:.0f}s: policy status current after the fault ended",
        time.monotonic() - ended,
    )
    for name in ("before", "during", "after"):
        assert_remediated_once(proxy, core, namespace, "Deployment", name, image=True)
    assert healed["after"] <= AFTER_RETURN, (
        f"a Deployment broken when the API came back took {healed['after']:.1f}s to heal "
        f"(bound {AFTER_RETURN:.0f}s)"
    )


@HTTP
def test_api_refused_then_back(
    operator: OperatorProcess,
    proxy: ApiFaultProxy,
    registries: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    policy = cluster_policy([namespace], mode="Remediate")
    outage_case(
        "refuse", REFUSED_FOR, operator, proxy, registries, core, apps, custom, namespace, policy
    )


@HTTP
def test_api_blackholed_then_back(
    operator: OperatorProcess,
    proxy: ApiFaultProxy,
    registries: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    policy = cluster_policy([namespace], mode="Remediate")
    outage_case(
        "blackhole",
        BLACKHOLED_FOR,
        operator,
        proxy,
        registries,
        core,
        apps,
        custom,
        namespace,
        policy,
    )


@HTTP
def test_silently_dropped_connections_are_detected(
    operator: OperatorProcess,
    proxy: ApiFaultProxy,
    registries: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    """A NAT or load balancer forgets every connection: no FIN, no RST, just silence. A
    Deployment broken once the network is back must still be healed."""
    policy = cluster_policy([namespace], mode="Remediate")
    start(operator, custom, policy)
    warm_good, warm_bad = good_and_bad(registries)
    good, bad = good_and_bad(registries)
    # A first remediation fills the operator's connection pool and proves the watches.
    apps.create_namespaced_deployment(namespace, deployment("warm", warm_bad, 1))
    wait_healed(
        lambda: deployment_healed(apps, core, namespace, "warm", warm_good, 1),
        "the warm-up Deployment",
        time.monotonic(),
        operator,
    )
    wait_status_current(custom, policy, [f"Deployment/{namespace}/warm"], operator)
    dead = proxy.open_connections()
    watches_before = len(proxy.seen("GET", r"^/api/v1/pods$"))
    proxy.set_mode("drop")
    began = time.monotonic()
    time.sleep(DROPPED_FOR)  # the fault's duration
    proxy.set_mode("pass")
    ended = time.monotonic()
    print(f"\n[faults] drop: {dead} connections went silent for {ended - began:.0f}s")
    # The fault hit live connections: the pod watch's among them (it had to open another).
    assert dead >= 2, f"only {dead} connection(s) open when the drop began"
    apps.create_namespaced_deployment(namespace, deployment("late", bad, 2))
    took = wait_healed(
        lambda: deployment_healed(apps, core, namespace, "late", good, 2),
        "a Deployment broken after the network healed",
        ended,
        operator,
    )
    report("drop: Deployment broken after the network healed, healed", took)
    wait_status_current(
        custom, policy, [f"Deployment/{namespace}/warm", f"Deployment/{namespace}/late"], operator
    )
    report("drop: policy status current after the network healed", time.monotonic() - ended)
    assert len(proxy.seen("GET", r"^/api/v1/pods$")) > watches_before  # a new watch
    for name in ("warm", "late"):
        assert_remediated_once(proxy, core, namespace, "Deployment", name, image=True)
    assert took <= AFTER_DROP, (
        f"a Deployment broken after 30 s of dropped connections took {took:.1f}s to heal "
        f"(bound {AFTER_DROP:.0f}s)"
    )


# --- SIGKILL mid-plan -----------------------------------------------------------------


def restart_after_kill(op: OperatorProcess, held: SeenRequest) -> float:
    op.stop(kill=True)
    print(f"\n[faults] SIGKILL while {held.method} {held.path.split('?')[0]} was in flight")
    op.start()
    return time.monotonic()


@HTTP
def test_killed_after_patching_the_workload_before_recreating_pods(
    operator: OperatorProcess,
    proxy: ApiFaultProxy,
    registries: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    """A StatefulSet never replaces its stuck pod by itself: the plan patches the template,
    then deletes the pod. Killed between the two, the restarted operator finishes the
    plan without patching again, recording again or announcing twice."""
    from kubernetes import client

    policy = cluster_policy([namespace], mode="Remediate")
    good, bad = good_and_bad(registries)
    start(operator, custom, policy)
    hold = proxy.hold("DELETE", rf"^/api/v1/namespaces/{namespace}/pods/")
    apps.create_namespaced_stateful_set(
        namespace,
        client.V1StatefulSet(
            metadata=client.V1ObjectMeta(name="db"),
            spec=client.V1StatefulSetSpec(
                service_name="db",
                replicas=1,
                selector=client.V1LabelSelector(match_labels={"app": "db"}),
                template=pod_template(bad, {"app": "db"}),
            ),
        ),
    )
    held = hold.wait(90)
    sts = apps.read_namespaced_stateful_set("db", namespace)
    assert sts.spec.template.spec.containers[0].image == good  # patched before the kill
    restarted = restart_after_kill(operator, held)

    def healed() -> bool:
        pods = running_pods(core, namespace, "app=db")
        return len(pods) == 1 and pods[0].spec.containers[0].image == good

    took = wait_healed(healed, "the StatefulSet", restarted, operator)
    report("SIGKILL before recreating pods: healed after the restart", took)
    wait_status_current(custom, policy, [f"StatefulSet/{namespace}/db"], operator)

    assert_remediated_once(proxy, core, namespace, "StatefulSet", "db", image=True)
    deletes = applied(proxy.seen("DELETE", rf"^/api/v1/namespaces/{namespace}/pods/"))
    assert len(deletes) == 1, [d.path for d in deletes]
    ann = apps.read_namespaced_stateful_set("db", namespace).metadata.annotations or {}
    assert json.loads(ann[ANNOTATION])["newImage"] == good


@HTTP
def test_killed_after_copying_the_secret_before_attaching_it(
    operator: OperatorProcess,
    proxy: ApiFaultProxy,
    private_case: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
) -> None:
    policy = next(
        p["metadata"]["name"]
        for p in custom.list_cluster_custom_object(
            "pullmedic.dev", "v1alpha1", "clusterpullpolicies"
        )["items"]
        if namespace in ((p["spec"].get("selector") or {}).get("namespaces") or ())
    )
    start(operator, custom, policy)
    hold = proxy.hold("PATCH", rf"^/api/v1/namespaces/{namespace}/serviceaccounts/")
    apps.create_namespaced_deployment(namespace, deployment("priv", private_case.image, 2))
    held = hold.wait(90)
    copied = core.read_namespaced_secret(private_case.copied_secret, namespace)
    assert copied.metadata.labels["pullmedic.dev/managed"] == "true"  # copied before the kill
    assert not core.read_namespaced_service_account("default", namespace).image_pull_secrets
    restarted = restart_after_kill(operator, held)

    took = wait_healed(
        lambda: len(running_pods(core, namespace, "app=priv")) == 2,
        "the private Deployment",
        restarted,
        operator,
    )
    report("SIGKILL before attaching the copied secret: healed after the restart", took)
    wait_status_current(custom, policy, [f"Deployment/{namespace}/priv"], operator)

    sa = core.read_namespaced_service_account("default", namespace)
    assert [s.name for s in sa.image_pull_secrets] == [private_case.copied_secret]
    copies = applied(proxy.seen("POST", rf"^/api/v1/namespaces/{namespace}/secrets$"))
    refreshes = applied(proxy.seen("PATCH", rf"^/api/v1/namespaces/{namespace}/secrets/"))
    attaches = applied(proxy.seen("PATCH", rf"^/api/v1/namespaces/{namespace}/serviceaccounts/"))
    assert (len(copies), len(refreshes), len(attaches)) == (1, 0, 1)
    assert core.read_namespaced_secret(
        private_case.copied_secret, namespace
    ).metadata.resource_version == (copied.metadata.resource_version)
    assert_remediated_once(proxy, core, namespace, "Deployment", "priv", image=False)


@HTTP
def test_killed_mid_status_write(
    operator: OperatorProcess,
    proxy: ApiFaultProxy,
    registries: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    """The remediation is done and announced; its status write is in flight when the
    process dies. After the restart the status still counts it: nothing is lost."""
    policy = cluster_policy([namespace], mode="Remediate")
    good, bad = good_and_bad(registries)
    start(operator, custom, policy)
    hold = proxy.hold(
        "PATCH",
        rf"^/apis/pullmedic\.dev/v1alpha1/clusterpullpolicies/{policy}/status$",
        body=r'"remediated":\s*1\b',
    )
    apps.create_namespaced_deployment(namespace, deployment("web", bad, 2))
    held = hold.wait(90)
    wait_for(
        lambda: workload_events(core, namespace, "web").get("Remediated"),
        "the Remediated Event (posted independently of the status write)",
        30,
    )
    restarted = restart_after_kill(operator, held)
    took = wait_healed(
        lambda: deployment_healed(apps, core, namespace, "web", good, 2),
        "the Deployment",
        restarted,
        operator,
    )
    report("SIGKILL mid status write: workload healthy after the restart", took)
    wait_status_current(custom, policy, [f"Deployment/{namespace}/web"], operator)
    report(
        "SIGKILL mid status write: status current after the restart", time.monotonic() - restarted
    )

    assert_remediated_once(proxy, core, namespace, "Deployment", "web", image=True)


# --- control plane restarts (last: they disturb the shared sandbox) ---------------


@HTTP
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restarted(
    component: str,
    sandbox: Any,
    operator: OperatorProcess,
    proxy: ApiFaultProxy,
    registries: Any,
    core: Any,
    apps: Any,
    custom: Any,
    namespace: str,
    cluster_policy: Any,
) -> None:
    policy = cluster_policy([namespace], mode="Remediate")
    start(operator, custom, policy)
    warm_good, warm_bad = good_and_bad(registries)
    good, bad = good_and_bad(registries)
    apps.create_namespaced_deployment(namespace, deployment("warm", warm_bad, 1))
    wait_healed(
        lambda: deployment_healed(apps, core, namespace, "warm", warm_good, 1),
        "the warm-up Deployment",
        time.monotonic(),
        operator,
    )
    wait_status_current(custom, policy, [f"Deployment/{namespace}/warm"], operator)
    down = sandbox.cluster.restart(component, down_for=5.0)
    ended = time.monotonic()
    print(f"\n[faults] {component} restarted: the API was unavailable for {down:.1f}s")
    fixed: list[float] = []

    def healed() -> bool:
        if not fixed and template_image(apps, namespace, "late") == good:
            fixed.append(time.monotonic())
        return deployment_healed(apps, core, namespace, "late", good, 2)

    with PodTimeline(core, namespace, "app=late") as timeline:
        apps.create_namespaced_deployment(namespace, deployment("late", bad, 2))
        took = wait_healed(
            healed, f"a Deployment broken after {component} restarted", ended, operator
        )
    steps = timeline.since(ended)
    print(f"\n[faults] {component} restart: the broken Deployment's pods were {steps}")
    report(f"{component} restart: Deployment broken afterwards healed", took)
    wait_status_current(
        custom, policy, [f"Deployment/{namespace}/warm", f"Deployment/{namespace}/late"], operator
    )
    for name in ("warm", "late"):
        assert_remediated_once(proxy, core, namespace, "Deployment", name, image=True)
    # pullmedic acts on a failure it sees: the fix follows the kubelet's report (or the pods'
    # creation, when it was fixed before any pull failed), never precedes it unseen.
    assert fixed, "the Deployment healed without its template ever holding the fixed image"
    seen = timeline.first.get("pull failed", timeline.first.get("created"))
    assert seen is not None, f"the pod watch saw none of the broken Deployment's pods: {steps}"
    share = fixed[0] - seen
    report(f"{component} restart: pull failure reported to fixed", share)
    assert share <= FIXED_AFTER_FAILURE, (
        f"after the {component} restart, pullmedic fixed the Deployment {share:.1f}s after "
        f"its pull failure was reported (bound {FIXED_AFTER_FAILURE:.0f}s); pods were {steps}"
    )
