"""The emulator against the real kubelet: same scenarios, same transitions, same texts.

Each scenario runs on both nodes at once (each sandbox has its own registries). Pod status
transitions (phase and each container's state reason), the distinct waiting messages and
the kubelet's Events (type, reason, message) are recorded for 20 s, registry addresses
replaced by ``H``, and compared. ``-s`` prints the comparison as a table
(docs/development.md has it).
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client, config

from sandbox.faultproxy import FaultProxy
from sandbox.images import host_platform, push_image
from sandbox.kube import dockerconfig_secret, wait_for

pytestmark = pytest.mark.cluster
WATCH_SECONDS = 20.0
# Vary from run to run, not between implementations.
LOCAL_ADDR = re.compile(r"read tcp [0-9.]+:[0-9]+->")
VOLATILE = re.compile(r" in [0-9.]+m?s \([0-9.]+m?s including waiting\)\. Image size: \d+ bytes\.")


@dataclass
class Scenario:
    name: str
    image: str  # "{open}/..." style; filled per sandbox
    push: tuple[str, str, str] | None = None  # registry, repo, tag
    platforms: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    policy: str = "Always"
    init: str | None = None


OTHER = "linux/arm64" if host_platform() != "linux/arm64" else "linux/amd64"
SCENARIOS = [
    Scenario("runs", "{open}/conf/app:1.0", ("open", "conf/app", "1.0")),
    Scenario("tag-missing", "{open}/conf/app:9.9", ("open", "conf/app", "1.0")),
    Scenario("basic-no-creds", "{basic}/conf/priv:1.0", ("basic", "conf/priv", "1.0")),
    Scenario(
        "basic-wrong-password",
        "{basic}/conf/priv:1.0",
        ("basic", "conf/priv", "1.0"),
        secrets=("wrongbasic",),
    ),
    Scenario(
        "bearer-wrong-password",
        "{bearer}/private/conf:1.0",
        ("bearer", "private/conf", "1.0"),
        secrets=("wrongbearer",),
    ),
    Scenario("bearer-no-creds", "{bearer}/private/conf:1.0", ("bearer", "private/conf", "1.0")),
    Scenario(
        "bearer-with-secret",
        "{bearer}/private/conf:1.0",
        ("bearer", "private/conf", "1.0"),
        secrets=("good",),
    ),
    Scenario(
        "secret-missing",
        "{bearer}/private/conf:1.0",
        ("bearer", "private/conf", "1.0"),
        secrets=("absent",),
    ),
    Scenario(
        "bad-auth-in-secret",
        "{bearer}/private/conf:1.0",
        ("bearer", "private/conf", "1.0"),
        secrets=("broken",),
    ),
    Scenario(
        "platform-mismatch",
        "{open}/conf/foreign:1.0",
        ("open", "conf/foreign", "1.0"),
        platforms=(OTHER,),
    ),
    Scenario("registry-429", "{p429}/conf/app:1.0", ("open", "conf/app", "1.0")),
    Scenario("registry-503", "{p503}/conf/app:1.0", ("open", "conf/app", "1.0")),
    Scenario("connection-reset", "{preset}/conf/app:1.0", ("open", "conf/app", "1.0")),
    Scenario("invalid-name", "{open}/Conf/App:1.0"),
    Scenario("never-absent", "{open}/conf/app:absent", policy="Never"),
    Scenario(
        "init-missing",
        "{open}/conf/app:1.0",
        ("open", "conf/app", "1.0"),
        init="{open}/conf/app:missing",
    ),
]


@dataclass
class Record:
    transitions: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # distinct waiting messages, in order
    events: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from sandbox import env

    sb = env.start(tmp_path_factory.mktemp("conformance"), time_scale=1.0, node="emulator")
    try:
        yield sb
    finally:
        sb.stop()


def _state(cs: Any) -> str:
    if cs.state.waiting:
        return f"{cs.name}:{cs.state.waiting.reason}"
    if cs.state.running:
        return f"{cs.name}:Running"
    if cs.state.terminated:
        return f"{cs.name}:Terminated({cs.state.terminated.reason})"
    return f"{cs.name}:?"


def _waiting_texts(pod: Any) -> list[str]:
    return [
        cs.state.waiting.message or ""
        for cs in (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
        if cs.state.waiting
    ]


def _snapshot(pod: Any) -> str:
    st = pod.status
    parts = [st.phase or "?"]
    parts += [_state(cs) for cs in st.init_container_statuses or []]
    parts += [_state(cs) for cs in st.container_statuses or []]
    return " ".join(parts)


def _normalise(text: str, hosts: dict[str, str]) -> str:
    text = VOLATILE.sub(" in D (D including waiting). Image size: N bytes.", text)
    text = LOCAL_ADDR.sub("read tcp L->", text)
    for h in hosts.values():
        text = text.replace(h, "H")
    return text


def _warm_secret_caches(core: Any, ns: str, open_host: str) -> None:
    """Let the kubelet's secret cache hold every secret before the scenarios start.

    The kubelet watches each pull secret on first use and waits at most one second for that
    watch to sync (``watch_based_manager.go``: ``PollImmediate(10ms, 1s, hasSynced)``); when
    it does not, it pulls without the secret and says ``FailedToRetrieveImagePullSecret``.
    With twenty pods arriving at once on two cores that second is sometimes too short, and
    ``bearer-with-secret`` is first refused. Pods that name every secret and stay keep those
    watches open, so the scenarios compare pulls, not cache start-up. The unparsable secret
    fails its pod's whole keyring, so it gets a pod of its own.
    """
    names = list(dict.fromkeys(s for sc in SCENARIOS for s in sc.secrets))
    groups = {
        "warm-secrets": [n for n in names if n != "broken"],
        "warm-broken": [n for n in names if n == "broken"],
    }
    for pod_name, secrets in groups.items():
        spec = client.V1PodSpec(
            containers=[client.V1Container(name="app", image=f"{open_host}/conf/app:1.0")],
            image_pull_secrets=[client.V1LocalObjectReference(name=n) for n in secrets],
            termination_grace_period_seconds=0,
        )
        core.create_namespaced_pod(
            ns, client.V1Pod(metadata=client.V1ObjectMeta(name=pod_name), spec=spec)
        )

    def pulled(pod_name: str) -> bool:
        """The kubelet has tried the pull, so it has asked its cache for the secrets."""
        pod = core.read_namespaced_pod(pod_name, ns)
        for cs in pod.status.container_statuses or []:
            waiting = cs.state.waiting
            if cs.state.running or (waiting and waiting.reason != "ContainerCreating"):
                return True
        return False

    for pod_name in groups:
        wait_for(lambda n=pod_name: pulled(n), f"the kubelet to try pulling {pod_name}", timeout=60)


def run_all(sb: Any) -> dict[str, Record]:
    """Create every scenario's pod in a fresh namespace and record them side by side."""
    api = config.new_client_from_config(config_file=str(sb.kubeconfig))
    core = client.CoreV1Api(api)
    regs = sb.registries
    hosts = {r.name: r.host for r in regs.all()}
    proxies = []
    for mode, key in (("status_429", "p429"), ("status_503", "p503"), ("reset", "preset")):
        px = FaultProxy(regs.open.url)
        px.start()
        px.set_mode(mode, match="/manifests/")
        sb.trust_http(px.host_port)
        proxies.append(px)
        hosts[key] = px.host_port
    ns = f"conf-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    wait_for(lambda: core.read_namespaced_service_account("default", ns), "default SA")
    bearer = regs.bearer
    core.create_namespaced_secret(
        ns, dockerconfig_secret("good", ns, bearer.host, "bob", bearer.users["bob"])
    )
    for name, reg, user in (("wrongbasic", regs.basic, "alice"), ("wrongbearer", bearer, "bob")):
        core.create_namespaced_secret(ns, dockerconfig_secret(name, ns, reg.host, user, "wrong"))
    broken = {"auths": {bearer.host: {"auth": base64.b64encode(b"no-colon").decode()}}}
    core.create_namespaced_secret(
        ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="broken"),
            type="kubernetes.io/dockerconfigjson",
            data={".dockerconfigjson": base64.b64encode(json.dumps(broken).encode()).decode()},
        ),
    )
    pushed: set[tuple[str, str, str]] = set()
    for sc in SCENARIOS:
        if sc.push and sc.push not in pushed:
            reg, repo, tag = sc.push
            plats = sc.platforms or (host_platform(),)
            push_image(getattr(regs, reg), repo, tag, platforms=plats, index="oci")
            pushed.add(sc.push)
    _warm_secret_caches(core, ns, hosts["open"])
    for sc in SCENARIOS:
        c = client.V1Container(
            name="app", image=sc.image.format(**hosts), image_pull_policy=sc.policy
        )
        spec = client.V1PodSpec(containers=[c], termination_grace_period_seconds=0)
        if sc.secrets:
            spec.image_pull_secrets = [client.V1LocalObjectReference(name=s) for s in sc.secrets]
        if sc.init:
            spec.init_containers = [
                client.V1Container(name="init", image=sc.init.format(**hosts), command=["true"])
            ]
        core.create_namespaced_pod(
            ns, client.V1Pod(metadata=client.V1ObjectMeta(name=sc.name), spec=spec)
        )
    records = {sc.name: Record() for sc in SCENARIOS}
    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline:
        for pod in core.list_namespaced_pod(ns).items:
            if pod.metadata.name not in records:
                continue
            snap = _snapshot(pod)
            rec = records[pod.metadata.name]
            if not rec.transitions or rec.transitions[-1] != snap:
                rec.transitions.append(snap)
            for text in _waiting_texts(pod):
                text = _normalise(text, hosts)
                if text and text not in rec.messages:
                    rec.messages.append(text)
        time.sleep(0.1)
    evs = [e for e in core.list_namespaced_event(ns).items if e.source.component == "kubelet"]
    evs.sort(key=lambda e: (e.first_timestamp or e.event_time, e.metadata.creation_timestamp))
    for e in evs:
        msg = _normalise(e.message or "", hosts)
        line = f"{e.type}/{e.reason}: {msg}"
        rec = records.get(e.involved_object.name)
        if rec is None:
            continue
        if line not in rec.events:
            rec.events.append(line)
    core.delete_namespace(ns)
    for px in proxies:
        px.stop()
    for rec in records.values():
        # A 0.1 s poll may or may not catch the first status writes (bare Pending, then
        # ContainerCreating for a pod without init containers): timing, not behaviour.
        for first in ("Pending", "Pending app:ContainerCreating"):
            if rec.transitions[:1] == [first] and len(rec.transitions) > 1:
                rec.transitions.pop(0)
    return records


def test_emulator_matches_the_kubelet(sandbox: Any, emulated: Any) -> None:
    if sandbox.node is None:
        pytest.skip(f"no real node on this machine: {sandbox.node_note or 'PULLMEDIC_NODE'}")
    real, emu = run_all(sandbox), run_all(emulated)
    rows = ["| scenario | aspect | real kubelet | emulator | same |", "|---|---|---|---|---|"]
    differ: list[str] = []
    for sc in SCENARIOS:
        for aspect, a, b in (
            ("transitions", real[sc.name].transitions, emu[sc.name].transitions),
            ("messages", real[sc.name].messages, emu[sc.name].messages),
            ("events", real[sc.name].events, emu[sc.name].events),
        ):
            same = a == b
            if not same:
                differ.append(f"{sc.name} {aspect}")
            cell_a, cell_b = "<br>".join(a), "<br>".join(b) if not same else "(same)"
            rows.append(
                f"| {sc.name} | {aspect} | {cell_a} | {cell_b} | {'yes' if same else 'NO'} |"
            )
    print("\n" + "\n".join(rows))
    assert not differ, differ
