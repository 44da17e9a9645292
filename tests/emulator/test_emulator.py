"""The node emulator against the live sandbox: real pulls, kubelet-exact status and events."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from sandbox.images import push_image

pytestmark = pytest.mark.cluster

T = TypeVar("T")
NODE = "sandbox-node"


def wait_for(fn: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


def _ready_namespace(core: Any, ns: str) -> None:
    def has_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", ns)
            return True
        except Exception:
            return False

    wait_for(has_sa, 30, "default ServiceAccount")


def make_pod(
    core: Any,
    ns: str,
    image: str,
    *,
    name: str | None = None,
    secrets: tuple[str, ...] = (),
    init: str | None = None,
    policy: str | None = None,
) -> str:
    _ready_namespace(core, ns)
    name = name or f"p-{uuid.uuid4().hex[:8]}"
    container: dict[str, Any] = {"name": "main", "image": image}
    if policy:
        container["imagePullPolicy"] = policy
    spec: dict[str, Any] = {"containers": [container]}
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    if init:
        spec["initContainers"] = [{"name": "init", "image": init}]
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    core.create_namespaced_pod(ns, body)
    return name


def pull_secret(core: Any, ns: str, host: str, user: str, password: str) -> str:
    name = f"creds-{uuid.uuid4().hex[:6]}"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    doc = json.dumps({"auths": {host: {"auth": auth}}}).encode()
    core.create_namespaced_secret(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(doc).decode()},
        },
    )
    return name


def waiting(core: Any, ns: str, name: str, reason: str, init: bool = False) -> Any:
    def check() -> Any:
        pod = core.read_namespaced_pod(name, ns)
        statuses = (
            pod.status.init_container_statuses if init else pod.status.container_statuses
        ) or []
        for cs in statuses:
            w = cs.state.waiting
            if cs.name == ("init" if init else "main") and w is not None and w.reason == reason:
                return w
        return None

    return wait_for(check, 30, f"{name} waiting {reason}")


def running(core: Any, ns: str, name: str) -> Any:
    return wait_for(
        lambda: (p := core.read_namespaced_pod(name, ns)).status.phase == "Running" and p,
        30,
        f"{name} Running",
    )


def events(core: Any, ns: str, name: str) -> list[tuple[str, str, str]]:
    out = []
    for e in core.list_namespaced_event(ns).items:
        if e.involved_object.name == name:
            out.append((e.type, e.reason, e.message))
    return out


def repo() -> str:
    return f"emu/{uuid.uuid4().hex[:10]}"


def test_node_is_registered_ready_with_lease(core: Any, emulator: Any) -> None:
    # This runs first on a fresh emulated sandbox: the Node exists before its status does.
    node = wait_for(lambda: (n := _node(core)) and n.status.conditions and n, 30, "node status")
    labels = node.metadata.labels
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/arch"] == "amd64"
    assert "node.kubernetes.io/instance-type" in labels
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True"
    assert node.status.capacity["pods"] in ("11000", "11k")  # the apiserver canonicalises
    from kubernetes import client

    leases = client.CoordinationV1Api(core.api_client)

    def lease_now() -> Any:  # the Lease follows the Node's registration
        try:
            return leases.read_namespaced_lease(NODE, "kube-node-lease")
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise

    lease: Any = wait_for(lease_now, 30, "node Lease")
    assert lease.spec.holder_identity == NODE


def _node(core: Any) -> Any:
    try:
        return core.read_node(NODE)
    except Exception:
        return None


def test_pod_runs_with_kubelet_status_and_events(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    r = repo()
    digest = push_image(registries.open, r, "1")
    image = f"{registries.open.host}/{r}:1"
    name = make_pod(core, namespace, image)
    pod = running(core, namespace, name)
    assert pod.spec.node_name == NODE
    cs = pod.status.container_statuses[0]
    assert cs.ready and cs.started and cs.restart_count == 0
    assert cs.image_id == f"{registries.open.host}/{r}@{digest}"
    assert pod.status.pod_ip.startswith("10.244.")
    assert pod.status.host_ip == "127.0.0.1"
    conds = {c.type: c.status for c in pod.status.conditions}
    assert conds["Ready"] == "True" and conds["PodScheduled"] == "True"

    def started() -> list[tuple[str, str, str]] | None:
        evs = events(core, namespace, name)
        return evs if any(x[1] == "Started" for x in evs) else None

    evs = wait_for(started, 10, "events")
    reasons = [e[1] for e in evs]
    for r_ in ("Scheduled", "Pulling", "Pulled", "Created", "Started"):
        assert r_ in reasons
    pulled = next(e[2] for e in evs if e[1] == "Pulled")
    assert pulled.startswith(f'Successfully pulled image "{image}" in ')
    assert "including waiting). Image size: " in pulled and pulled.endswith(" bytes.")


def test_missing_tag_is_not_found_then_back_off(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    r = repo()
    push_image(registries.open, r, "1")
    image = f"{registries.open.host}/{r}:2"
    name = make_pod(core, namespace, image)
    err = (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
        f'failed to resolve reference "{image}": {image}: not found'
    )
    assert waiting(core, namespace, name, "ErrImagePull").message == err
    back = waiting(core, namespace, name, "ImagePullBackOff")
    assert back.message == f'Back-off pulling image "{image}": ErrImagePull: {err}'
    msgs = {(e[0], e[1], e[2]) for e in events(core, namespace, name)}
    assert ("Warning", "Failed", f'Failed to pull image "{image}": {err}') in msgs
    assert ("Warning", "Failed", "Error: ErrImagePull") in msgs
    assert ("Normal", "BackOff", f'Back-off pulling image "{image}"') in msgs
    pod = core.read_namespaced_pod(name, namespace)
    assert pod.status.phase == "Pending"
    cond = {c.type: c for c in pod.status.conditions}["Ready"]
    assert (cond.status, cond.reason) == ("False", "ContainersNotReady")
    assert cond.message == "containers with unready status: [main]"


def test_bearer_registry_auth_flows(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    reg = registries.bearer
    r = f"private/{uuid.uuid4().hex[:8]}"
    push_image(reg, r, "1")
    image = f"{reg.host}/{r}:1"
    anon = make_pod(core, namespace, image)
    denied = (
        f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
        "pull access denied, repository does not exist or may require authorization: "
        "server message: insufficient_scope: authorization failed"
    )
    assert waiting(core, namespace, anon, "ErrImagePull").message == denied

    bad = pull_secret(core, namespace, reg.host, "bob", "wrong")
    wrong = make_pod(core, namespace, image, secrets=(bad,))
    msg = waiting(core, namespace, wrong, "ErrImagePull").message
    assert msg.endswith(
        "failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized"
    )

    good = pull_secret(core, namespace, reg.host, "bob", reg.users["bob"])
    ok = make_pod(core, namespace, image, secrets=(good,))
    running(core, namespace, ok)


def test_basic_registry_auth_flows(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    reg = registries.basic
    r = repo()
    push_image(reg, r, "1")
    image = f"{reg.host}/{r}:1"
    anon = make_pod(core, namespace, image)
    denied = f"pulling from host {reg.host} failed with status code [manifests 1]: 401 Unauthorized"
    assert waiting(core, namespace, anon, "ErrImagePull").message.endswith(denied)
    bad = pull_secret(core, namespace, reg.host, "alice", "wrong")
    wrong = make_pod(core, namespace, image, secrets=(bad,))
    assert waiting(core, namespace, wrong, "ErrImagePull").message.endswith(denied)
    good = pull_secret(core, namespace, reg.host, "alice", reg.users["alice"])
    running(core, namespace, make_pod(core, namespace, image, secrets=(good,)))


def test_invalid_image_name(core: Any, namespace: str, emulator: Any) -> None:
    name = make_pod(core, namespace, "Nginx:1.27")
    w = waiting(core, namespace, name, "InvalidImageName")
    assert w.message.startswith('Failed to apply default image tag "Nginx:1.27": ')
    assert any(e[1] == "InspectFailed" for e in events(core, namespace, name))


def test_never_pull_policy_without_image(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    image = f"{registries.open.host}/{repo()}:never"
    name = make_pod(core, namespace, image, policy="Never")
    w = waiting(core, namespace, name, "ErrImageNeverPull")
    assert w.message == f'Container image "{image}" is not present with pull policy of Never'


def test_no_platform_match(core: Any, registries: Any, namespace: str, emulator: Any) -> None:
    r = repo()
    push_image(registries.open, r, "1", platforms=["linux/arm64", "linux/s390x"], index="oci")
    image = f"{registries.open.host}/{r}:1"
    name = make_pod(core, namespace, image)
    assert waiting(core, namespace, name, "ErrImagePull").message == (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
        "no match for platform in manifest: not found"
    )


def test_multi_platform_index_with_attestations_runs(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    r = repo()
    digest = push_image(
        registries.open,
        r,
        "1",
        platforms=["linux/arm64", "linux/amd64"],
        index="oci",
        attestation=True,
    )
    pod = running(core, namespace, make_pod(core, namespace, f"{registries.open.host}/{r}:1"))
    assert pod.status.container_statuses[0].image_id.endswith(digest)


def test_failing_init_container_blocks_app(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    r = repo()
    push_image(registries.open, r, "1")
    name = make_pod(
        core, namespace, f"{registries.open.host}/{r}:1", init=f"{registries.open.host}/{r}:nope"
    )
    waiting(core, namespace, name, "ErrImagePull", init=True)
    pod = core.read_namespaced_pod(name, namespace)
    assert pod.status.container_statuses[0].state.waiting.reason == "PodInitializing"
    cond = {c.type: c for c in pod.status.conditions}["Initialized"]
    assert (cond.status, cond.reason) == ("False", "ContainersNotInitialized")
    assert cond.message == "containers with incomplete status: [init]"


def test_missing_pull_secret_is_reported(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    r = repo()
    push_image(registries.open, r, "1")
    name = make_pod(core, namespace, f"{registries.open.host}/{r}:1", secrets=("nope",))
    running(core, namespace, name)
    wanted = (
        "Warning",
        "FailedToRetrieveImagePullSecret",
        "Unable to retrieve some image pull secrets (nope); attempting to pull the image may "
        "not succeed.",
    )
    wait_for(lambda: wanted in events(core, namespace, name), 10, "secret event")


def test_patching_the_image_recovers_a_pod(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    r = repo()
    push_image(registries.open, r, "1")
    name = make_pod(core, namespace, f"{registries.open.host}/{r}:bad")
    waiting(core, namespace, name, "ImagePullBackOff")
    fixed = f"{registries.open.host}/{r}:1"
    core.patch_namespaced_pod(
        name, namespace, {"spec": {"containers": [{"name": "main", "image": fixed}]}}
    )
    pod = running(core, namespace, name)
    assert pod.status.container_statuses[0].image == fixed


def test_connection_refused(core: Any, namespace: str, emulator: Any) -> None:
    image = "127.0.0.1:1/nothing/here:1"
    name = make_pod(core, namespace, image)
    assert waiting(core, namespace, name, "ErrImagePull").message == (
        f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
        'failed to do request: Head "http://127.0.0.1:1/v2/nothing/here/manifests/1": '
        "dial tcp 127.0.0.1:1: connect: connection refused"
    )


def test_deleted_pods_are_finished_off(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    r = repo()
    push_image(registries.open, r, "1")
    name = make_pod(core, namespace, f"{registries.open.host}/{r}:1")
    running(core, namespace, name)
    core.delete_namespaced_pod(name, namespace)

    def gone() -> bool:
        return name not in [p.metadata.name for p in core.list_namespaced_pod(namespace).items]

    wait_for(gone, 30, "pod deletion")


def test_cached_images_are_reused_only_by_pods_that_may_pull_them(
    core: Any, registries: Any, namespace: str, emulator: Any
) -> None:
    """KubeletEnsureSecretPulledImages (beta, on since 1.35): a cached private image is not
    handed to a pod without the credentials that pulled it; anonymous pulls are shared."""
    r = repo()
    push_image(registries.open, r, "1")
    public = f"{registries.open.host}/{r}:1"
    running(core, namespace, make_pod(core, namespace, public))
    second = make_pod(core, namespace, public)
    running(core, namespace, second)
    wanted = f'Container image "{public}" already present on machine and can be accessed by the pod'
    wait_for(lambda: ("Normal", "Pulled", wanted) in events(core, namespace, second), 10, "reuse")

    reg = registries.bearer
    private = f"private/{uuid.uuid4().hex[:8]}"
    push_image(reg, private, "1")
    image = f"{reg.host}/{private}:1"
    good = pull_secret(core, namespace, reg.host, "bob", reg.users["bob"])
    running(core, namespace, make_pod(core, namespace, image, secrets=(good,)))
    without = make_pod(core, namespace, image)
    assert "insufficient_scope" in waiting(core, namespace, without, "ErrImagePull").message


def test_storm_node_flags(
    core: Any, registries: Any, namespace: str, sandbox: Any, tmp_path: Any
) -> None:
    """The storm benchmark's node. ``--no-routine-events``: a healthy pod runs with no
    Normal Event of its ordinary life; a failing pod's status and its failure Events are as
    with the defaults. ``--keep-content``: a second ``Always`` pull of a present image
    resolves the tag and fetches nothing else."""
    from sandbox import procs
    from sandbox.env import start_emulator
    from sandbox.faultproxy import FaultProxy
    from tests.conftest import TIME_SCALE

    quiet = "quiet-node"
    proc = start_emulator(
        sandbox.cluster.kubeconfig,
        tmp_path / "quiet-emulator.log",
        time_scale=TIME_SCALE,
        node=quiet,
        args=["--no-routine-events", "--keep-content"],
    )
    proxy = FaultProxy(registries.open.url)
    proxy.start()
    names: list[str] = []
    try:
        wait_for(lambda: _node_named(core, quiet), 30, "quiet node registered")
        r = repo()
        push_image(registries.open, r, "1")
        good = f"{proxy.host_port}/{r}:1"
        bad = f"{proxy.host_port}/{r}:2"
        ok_name = _pod_on(core, namespace, good, quiet, policy="Always")
        bad_name = _pod_on(core, namespace, bad, quiet)
        names.extend([ok_name, bad_name])
        pod = running(core, namespace, ok_name)
        assert pod.spec.node_name == quiet
        first = [(q.method, q.path) for q in proxy.requests if f"/{r}/" in q.path]
        again = _pod_on(core, namespace, good, quiet, policy="Always")
        names.append(again)
        running(core, namespace, again)
        second = [(q.method, q.path) for q in proxy.requests if f"/{r}/" in q.path][len(first) :]
        assert [m for m, p in first if "/blobs/" in p], first
        assert second == [("HEAD", f"/v2/{r}/manifests/1")], second
        err = waiting(core, namespace, bad_name, "ErrImagePull").message
        assert err.endswith(f"{bad}: not found")
        back = waiting(core, namespace, bad_name, "ImagePullBackOff")
        assert back.message == f'Back-off pulling image "{bad}": ErrImagePull: {err}'
        routine = {"Scheduled", "Pulling", "Pulled", "Created", "Started", "Killing"}
        assert not [e for e in events(core, namespace, ok_name) if e[1] in routine]
        msgs = set(events(core, namespace, bad_name))
        assert ("Warning", "Failed", f'Failed to pull image "{bad}": {err}') in msgs
        assert ("Warning", "Failed", "Error: ErrImagePull") in msgs
        assert ("Normal", "BackOff", f'Back-off pulling image "{bad}"') in msgs
        assert not [e for e in msgs if e[1] in routine]
    finally:
        for n in names:  # no kubelet will finish them off once the node is gone
            core.delete_namespaced_pod(n, namespace, grace_period_seconds=0)
        procs.stop(proc)
        proxy.stop()
        core.delete_node(quiet)


def _node_named(core: Any, name: str) -> Any:
    try:
        node = core.read_node(name)
    except Exception:
        return None
    return node if node.status and node.status.conditions else None


def _pod_on(core: Any, ns: str, image: str, node: str, policy: str | None = None) -> str:
    """A pod bound to ``node`` from the start (no scheduler, no Scheduled Event)."""
    _ready_namespace(core, ns)
    name = f"p-{uuid.uuid4().hex[:8]}"
    container = {"name": "main", "image": image}
    if policy:
        container["imagePullPolicy"] = policy
    spec = {"nodeName": node, "containers": [container]}
    core.create_namespaced_pod(
        ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    )
    return name
