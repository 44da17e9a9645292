"""What the real kubelet (v1.36 on containerd 1.6) does with image pulls, on the sandbox node.

These are the facts pullmedic reads in production: waiting reasons and messages, the
kubelet's own Event texts, its back-off seen at the registry, admission of pull secrets,
and the ensure-secret-pulled-images check (KEP-2535). Where a message embeds a registry
address, tests compare with the address substituted.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from sandbox.faultproxy import FaultProxy
from sandbox.images import delete_tag, host_platform, push_image
from sandbox.kube import dockerconfig_secret, events_for, pod_template, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def real_node(sandbox: Any) -> Any:
    if sandbox.node is None:
        pytest.skip(f"no real node on this machine: {sandbox.node_note or 'PULLMEDIC_NODE'}")
    return sandbox.node


def repo(prefix: str = "team") -> str:
    return f"{prefix}/rn-{uuid.uuid4().hex[:8]}"


def make_pod(
    core: Any,
    ns: str,
    image: str,
    name: str,
    *,
    secrets: tuple[str, ...] = (),
    policy: str = "Always",
    init: str | None = None,
) -> Any:
    spec = pod_template(image, {}, pull_policy=policy).spec
    if secrets:
        spec.image_pull_secrets = [client.V1LocalObjectReference(name=s) for s in secrets]
    if init:
        spec.init_containers = [
            client.V1Container(name="init", image=init, image_pull_policy="Always")
        ]
    return core.create_namespaced_pod(
        ns, client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=spec)
    )


def statuses(pod: Any, kind: str) -> list[Any]:
    return {
        "app": pod.status.container_statuses,
        "init": pod.status.init_container_statuses,
        "ephemeral": pod.status.ephemeral_container_statuses,
    }[kind] or []


def waiting(core: Any, ns: str, name: str, reason: str, kind: str = "app", t: float = 60) -> Any:
    """The waiting state once ``reason`` shows (app, init or ephemeral container)."""

    def check() -> Any:
        pod = core.read_namespaced_pod(name, ns)
        for cs in statuses(pod, kind):
            w = cs.state.waiting
            if w is not None and w.reason == reason:
                return w
        return None

    return wait_for(check, f"{name} ({kind}) waiting {reason}", t, every=0.2)


def running(core: Any, ns: str, name: str, t: float = 60) -> Any:
    return wait_for(
        lambda: (p := core.read_namespaced_pod(name, ns)).status.phase == "Running" and p,
        f"{name} Running",
        t,
    )


def kubelet_events(core: Any, ns: str, name: str) -> list[tuple[str, str, str]]:
    evs = [e for e in events_for(core, ns, name) if e.source.component == "kubelet"]
    evs.sort(key=lambda e: (e.first_timestamp or e.event_time, e.metadata.creation_timestamp))
    return [(e.type, e.reason, e.message) for e in evs]


def pull_failed_count(core: Any, ns: str, name: str) -> int:
    """Failed pulls the kubelet reported for the pod (its events aggregate with ``count``)."""
    return sum(
        e.count or 1
        for e in events_for(core, ns, name)
        if e.reason == "Failed" and (e.message or "").startswith("Failed to pull image")
    )


# --- the node --------------------------------------------------------------------------


def test_node_is_ready_untainted_with_the_pinned_kubelet(real_node: Any, core: Any) -> None:
    node = core.read_node(real_node.name)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True" and ready.reason == "KubeletReady"
    assert not node.spec.taints
    info = node.status.node_info
    assert info.kubelet_version == "v1.36.3"
    assert info.container_runtime_version.startswith("containerd://1.6")
    assert f"{info.operating_system}/{info.architecture}" == host_platform()
    assert {"type": "InternalIP", "address": "10.233.0.1"} in [
        a.to_dict() for a in node.status.addresses
    ]
    leases = client.CoordinationV1Api(core.api_client)
    lease = wait_for(
        lambda: leases.read_namespaced_lease(real_node.name, "kube-node-lease"), "node Lease"
    )
    assert lease.spec.holder_identity == real_node.name


# --- the kubelet's own messages, per cause --------------------------------------------


def test_missing_tag_events_and_back_off_message(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    image = f"{registries.open.host}/{repo()}:1.0"
    make_pod(core, namespace, image, "nf")
    err = waiting(core, namespace, "nf", "ErrImagePull")
    not_found = (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
        f'failed to resolve reference "{image}": {image}: not found'
    )
    assert err.message == not_found
    back = waiting(core, namespace, "nf", "ImagePullBackOff")
    assert back.message == f'Back-off pulling image "{image}": ErrImagePull: {not_found}'
    assert kubelet_events(core, namespace, "nf") == [
        ("Normal", "Pulling", f'Pulling image "{image}"'),
        ("Warning", "Failed", f'Failed to pull image "{image}": {not_found}'),
        ("Warning", "Failed", "Error: ErrImagePull"),
        ("Normal", "BackOff", f'Back-off pulling image "{image}"'),
        ("Warning", "Failed", "Error: ImagePullBackOff"),
    ]


# containerd's errors with gRPC code Unknown reach the kubelet without the
# "rpc error: code = Unknown desc = " prefix; other codes (NotFound) keep it.
PULL = 'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        (
            "basic",
            PULL + "pulling from host {host} failed with status code [manifests 1.0]: "
            "401 Unauthorized",
        ),
        (
            "bearer",
            PULL + "pull access denied, repository does not exist or may require "
            "authorization: server message: insufficient_scope: authorization failed",
        ),
    ],
)
def test_private_image_without_credentials(
    real_node: Any, registries: Any, core: Any, namespace: str, registry: str, expected: str
) -> None:
    reg = getattr(registries, registry)
    r = repo("private")
    push_image(reg, r, "1.0")
    image = f"{reg.host}/{r}:1.0"
    make_pod(core, namespace, image, "anon")
    err = waiting(core, namespace, "anon", "ErrImagePull")
    assert err.message == expected.format(image=image, host=reg.host)


def test_wrong_password_on_the_token_server(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    reg = registries.bearer
    r = repo("private")
    push_image(reg, r, "1.0")
    image = f"{reg.host}/{r}:1.0"
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("bad", namespace, reg.host, "bob", "wrong")
    )
    make_pod(core, namespace, image, "badpw", secrets=("bad",))
    err = waiting(core, namespace, "badpw", "ErrImagePull")
    assert err.message == PULL.format(image=image) + (
        "failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized"
    )


@pytest.mark.parametrize("registry", ["basic", "bearer"])
def test_private_image_runs_with_pod_pull_secret(
    real_node: Any, registries: Any, core: Any, namespace: str, registry: str
) -> None:
    reg = getattr(registries, registry)
    user = next(u for u in reg.users if u != "pusher")
    r = repo("private")
    push_image(reg, r, "1.0")
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("creds", namespace, reg.host, user, reg.users[user])
    )
    make_pod(core, namespace, f"{reg.host}/{r}:1.0", "priv", secrets=("creds",))
    running(core, namespace, "priv")
    pulled = [m for _, reason, m in kubelet_events(core, namespace, "priv") if reason == "Pulled"]
    assert pulled and pulled[0].startswith(f'Successfully pulled image "{reg.host}/{r}:1.0" in ')


def test_missing_pull_secret_is_reported_then_pull_is_anonymous(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    reg = registries.bearer
    r = repo("private")
    push_image(reg, r, "1.0")
    make_pod(core, namespace, f"{reg.host}/{r}:1.0", "nosecret", secrets=("absent",))
    waiting(core, namespace, "nosecret", "ErrImagePull")
    msgs = [
        m
        for _, reason, m in kubelet_events(core, namespace, "nosecret")
        if reason == "FailedToRetrieveImagePullSecret"
    ]
    assert msgs == [
        "Unable to retrieve some image pull secrets (absent); attempting to pull the image "
        "may not succeed."
    ]


def test_multi_arch_index_runs_own_platform_and_refuses_foreign_only(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    own = host_platform()
    other = "linux/arm64" if own != "linux/arm64" else "linux/amd64"
    r = repo()
    push_image(registries.open, r, "both", platforms=(other, own), index="oci", attestation=True)
    push_image(registries.open, r, "foreign", platforms=(other,), index="oci")
    make_pod(core, namespace, f"{registries.open.host}/{r}:both", "both")
    make_pod(core, namespace, f"{registries.open.host}/{r}:foreign", "foreign")
    running(core, namespace, "both")
    image = f"{registries.open.host}/{r}:foreign"
    err = waiting(core, namespace, "foreign", "ErrImagePull")
    assert err.message == (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
        "no match for platform in manifest: not found"
    )


def test_unreachable_registry(real_node: Any, core: Any, namespace: str) -> None:
    from sandbox import procs

    host = f"127.0.0.1:{procs.free_port()}"
    real_node.trust_http(host)
    image = f"{host}/team/app:1.0"
    make_pod(core, namespace, image, "down")
    err = waiting(core, namespace, "down", "ErrImagePull")
    assert err.message == PULL.format(image=image) + (
        f'failed to do request: Head "http://{host}/v2/team/app/manifests/1.0": '
        f"dial tcp {host}: connect: connection refused"
    )


# --- back-off, seen at the registry -----------------------------------------------------


def test_kubelet_back_off_between_pull_attempts(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    """Attempts are spaced by at least 10 s, then 20 s (the kubelet's image back-off).

    Counted at a proxy in front of the registry: the kubelet writes no new status when a
    retry fails like the one before. Each gap may exceed the back-off by up to one pod
    resync (the kubelet re-examines a waiting pod every 10-15 s, plus jitter).
    """
    proxy = FaultProxy(registries.open.url)
    proxy.start()
    try:
        real_node.trust_http(proxy.host_port)
        make_pod(core, namespace, f"{proxy.host_port}/{repo()}:1", "bo")

        def attempts() -> list[float]:
            """Start times of pull attempts (containerd sends two HEADs per resolve)."""
            heads = [r.at for r in proxy.requests if r.method == "HEAD" and "/manifests/" in r.path]
            return [t for i, t in enumerate(heads) if i == 0 or t - heads[i - 1] > 2]

        wait_for(lambda: len(attempts()) >= 3, "three pull attempts", 90, every=0.2)
    finally:
        proxy.stop()
    gaps = [b - a for a, b in itertools.pairwise(attempts()[:3])]
    for gap, want in zip(gaps, (10, 20), strict=True):
        assert want <= gap <= want + 20, gaps


# --- pull secrets: admission, immutability, KEP-2535 -----------------------------------


def test_service_account_pull_secret_reaches_new_pods_only(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    reg = registries.bearer
    r = repo("private")
    push_image(reg, r, "1.0")
    image = f"{reg.host}/{r}:1.0"
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("regcred", namespace, reg.host, "bob", reg.users["bob"])
    )
    make_pod(core, namespace, image, "old")
    waiting(core, namespace, "old", "ErrImagePull")
    core.patch_namespaced_service_account(
        "default", namespace, {"imagePullSecrets": [{"name": "regcred"}]}
    )
    new = client.V1Pod(metadata=client.V1ObjectMeta(name="new"), spec=pod_template(image, {}).spec)
    # Admission reads ServiceAccounts from an informer cache: wait (with dry runs).
    wait_for(
        lambda: core.create_namespaced_pod(namespace, new, dry_run="All").spec.image_pull_secrets,
        "admission to see the ServiceAccount's pull secret",
        10,
        every=0.1,
    )
    created = core.create_namespaced_pod(namespace, new)
    assert [s.name for s in created.spec.image_pull_secrets] == ["regcred"]
    running(core, namespace, "new")
    # The old pod keeps failing: wait for the kubelet's next attempt after the fix.
    before = pull_failed_count(core, namespace, "old")
    wait_for(
        lambda: pull_failed_count(core, namespace, "old") > before,
        "another failed pull of the old pod",
        120,
        every=1,
    )
    old = core.read_namespaced_pod("old", namespace)
    assert old.status.phase == "Pending" and not old.spec.image_pull_secrets


def test_if_not_present_uses_the_image_on_the_node(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    r = repo()
    push_image(registries.open, r, "1.0")
    image = f"{registries.open.host}/{r}:1.0"
    make_pod(core, namespace, image, "first")
    running(core, namespace, "first")
    delete_tag(registries.open, r, "1.0")  # only the node's copy is left
    make_pod(core, namespace, image, "cached", policy="IfNotPresent")
    running(core, namespace, "cached")
    assert (
        "Normal",
        "Pulled",
        f'Container image "{image}" already present on machine and can be accessed by the pod',
    ) in kubelet_events(core, namespace, "cached")
    assert not [e for e in kubelet_events(core, namespace, "cached") if e[1] == "Pulling"]


def test_ensure_secret_pulled_images_refuses_a_pod_without_credentials(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    """KEP-2535 (on by default since 1.35): an image a pod pulled with a secret is not
    handed to another pod that has no credentials for it, even with IfNotPresent: the
    kubelet pulls again with that pod's (absent) credentials and fails like any 401."""
    reg = registries.bearer
    r = repo("private")
    push_image(reg, r, "1.0")
    image = f"{reg.host}/{r}:1.0"
    core.create_namespaced_secret(
        namespace, dockerconfig_secret("regcred", namespace, reg.host, "bob", reg.users["bob"])
    )
    make_pod(core, namespace, image, "owner", secrets=("regcred",), policy="IfNotPresent")
    running(core, namespace, "owner")
    make_pod(core, namespace, image, "same-secret", secrets=("regcred",), policy="IfNotPresent")
    running(core, namespace, "same-secret")
    assert (
        "Normal",
        "Pulled",
        f'Container image "{image}" already present on machine and can be accessed by the pod',
    ) in kubelet_events(core, namespace, "same-secret")

    make_pod(core, namespace, image, "borrower", policy="IfNotPresent")
    err = waiting(core, namespace, "borrower", "ErrImagePull")
    assert "insufficient_scope: authorization failed" in err.message
    evs = kubelet_events(core, namespace, "borrower")
    assert ("Normal", "Pulling", f'Pulling image "{image}"') in evs
    never = f"{reg.host}/{r}:1.0"
    make_pod(core, namespace, never, "never", policy="Never")
    err = waiting(core, namespace, "never", "ErrImageNeverPull")
    assert err.message == f'Container image "{never}" is not present with pull policy of Never'


# --- init and ephemeral containers -------------------------------------------------------


def test_init_container_pull_failure_blocks_the_pod(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    r = repo()
    push_image(registries.open, r, "1.0")
    bad = f"{registries.open.host}/{r}:missing"
    make_pod(core, namespace, f"{registries.open.host}/{r}:1.0", "initbad", init=bad)
    back = waiting(core, namespace, "initbad", "ImagePullBackOff", kind="init")
    assert back.message.startswith(f'Back-off pulling image "{bad}": ErrImagePull: ')
    pod = core.read_namespaced_pod("initbad", namespace)
    assert pod.status.phase == "Pending"
    (app,) = pod.status.container_statuses
    assert app.state.waiting.reason == "PodInitializing"
    paths = {
        e.involved_object.field_path
        for e in events_for(core, namespace, "initbad")
        if e.reason == "BackOff"
    }
    assert paths == {"spec.initContainers{init}"}


def test_ephemeral_container_pull_failure(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    r = repo()
    push_image(registries.open, r, "1.0")
    make_pod(core, namespace, f"{registries.open.host}/{r}:1.0", "target")
    running(core, namespace, "target")
    bad = f"{registries.open.host}/{r}:debug-missing"
    core.patch_namespaced_pod_ephemeralcontainers(
        "target",
        namespace,
        {
            "spec": {
                "ephemeralContainers": [
                    {"name": "debugger", "image": bad, "imagePullPolicy": "Always"}
                ]
            }
        },
    )
    err = waiting(core, namespace, "target", "ErrImagePull", kind="ephemeral", t=60)
    assert err.message.endswith(f"{bad}: not found")
    back = waiting(core, namespace, "target", "ImagePullBackOff", kind="ephemeral", t=60)
    assert back.message.startswith(f'Back-off pulling image "{bad}": ErrImagePull: ')
    assert core.read_namespaced_pod("target", namespace).status.phase == "Running"
    paths = {
        e.involved_object.field_path
        for e in events_for(core, namespace, "target")
        if e.reason == "BackOff"
    }
    assert paths == {"spec.ephemeralContainers{debugger}"}


def test_deleted_pod_is_gone_at_once_with_zero_grace(
    real_node: Any, registries: Any, core: Any, namespace: str
) -> None:
    r = repo()
    push_image(registries.open, r, "1.0")
    make_pod(core, namespace, f"{registries.open.host}/{r}:1.0", "short")
    running(core, namespace, "short")
    t0 = time.monotonic()
    core.delete_namespaced_pod("short", namespace)

    def gone() -> bool:
        return not [p for p in core.list_namespaced_pod(namespace).items]

    wait_for(gone, "the pod deleted", 30, every=0.1)
    assert time.monotonic() - t0 < 10
