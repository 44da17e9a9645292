"""The demo: broken workloads go in, healed ones come out — on the real sandbox.

`python -m sandbox.demo [--keep]` starts the sandbox with a real kubelet (or, where a
machine cannot run one, the emulator, and says so), installs the CRDs and a
ClusterPullPolicy, breaks five workloads in five ways, starts the operator as its own
process and reports live until every fixable workload runs. The table shows the kubelet's
own latest Event next to pullmedic's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from sandbox import paths, procs
from sandbox.images import push_image
from sandbox.kube import (
    OPERATOR_NAMESPACE,
    deployment,
    dockerconfig_secret,
    install_crds,
    install_operator_identity,
    running_pods,
    wait_for,
)
from sandbox.registries import Registry

NS = "shop"
SECRETS_NS = OPERATOR_NAMESPACE


@dataclass
class Case:
    name: str
    broken: str
    replicas: int
    expect: str  # what should happen
    fixable: bool
    labels: dict[str, str] | None = None
    started: float = 0.0
    running_at: float | None = None


def _registry(info: dict[str, Any], name: str) -> Registry:
    r = info["registries"][name]
    push = None
    if name == "basic":
        push = ("alice", r["users"]["alice"])
    if name == "bearer":
        push = ("pusher", r["users"]["pusher"])
    return Registry(name=name, host=r["host"], url=r["url"], push_auth=push, users=r["users"])


def prepare(info: dict[str, Any]) -> tuple[list[Case], dict[str, Any]]:
    reg = {n: _registry(info, n) for n in info["registries"]}
    dead = f"127.0.0.1:{procs.free_port()}"
    for tag in ("1.4.0", "1.4.2", "2.0.0"):
        push_image(reg["open"], "demo/web", tag)
    push_image(reg["bearer"], "private/api", "2.1.0")
    push_image(reg["open"], "demo/tools", "1.2.0", platforms=("linux/arm64",), index="oci")
    push_image(
        reg["open"], "demo/tools", "1.2.1", platforms=("linux/amd64", "linux/arm64"), index="oci"
    )
    push_image(reg["mirror"], "demo/cache", "6.2")
    push_image(reg["open"], "demo/frontend", "3.0.0")
    o = reg["open"].host
    cases = [
        Case("web", f"{o}/demo/web:1.4.9", 3, "tag typo -> highest patch 1.4.2", True),
        Case(
            "api",
            f"{reg['bearer'].host}/private/api:2.1.0",
            2,
            "missing pull secret -> copy + attach + recreate",
            True,
        ),
        Case("tools", f"{o}/demo/tools:1.2.0", 2, "no linux/amd64 build -> 1.2.1", True),
        Case("cache", f"{dead}/demo/cache:6.2", 2, "registry down -> verified mirror", True),
        Case(
            "frontend",
            f"{o}/demo/frontend:3.0.1",
            1,
            "GitOps-managed -> suggestion only",
            False,
            labels={"app.kubernetes.io/managed-by": "argocd"},
        ),
    ]
    policy = {
        "apiVersion": "pullmedic.dev/v1alpha1",
        "kind": "ClusterPullPolicy",
        "metadata": {"name": "demo-heal"},
        "spec": {
            "mode": "Remediate",
            "selector": {"namespaceSelector": {"matchLabels": {"pullmedic.dev/heal": "true"}}},
            "tagCorrection": {"strategy": "HighestPatch"},
            "credentials": {"secrets": [{"namespace": SECRETS_NS, "name": "registry-creds"}]},
            "mirrors": [{"registry": dead, "mirror": reg["mirror"].host}],
        },
    }
    return cases, {"policy": policy, "bearer": reg["bearer"]}


def apply(api: client.ApiClient, cases: list[Case], extra: dict[str, Any]) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=NS, labels={"pullmedic.dev/heal": "true"})
        )
    )
    wait_for(lambda: core.read_namespaced_service_account("default", NS), "default SA")
    b = extra["bearer"]
    core.create_namespaced_secret(
        SECRETS_NS, dockerconfig_secret("registry-creds", SECRETS_NS, b.host, "bob", b.users["bob"])
    )
    client.CustomObjectsApi(api).create_cluster_custom_object(
        "pullmedic.dev", "v1alpha1", "clusterpullpolicies", extra["policy"]
    )
    for c in cases:
        apps.create_namespaced_deployment(
            NS, deployment(c.name, c.broken, c.replicas, labels=c.labels)
        )
        c.started = time.monotonic()


def start_operator(state: Path, info: dict[str, Any], api: client.ApiClient) -> Any:
    """Run pullmedic as its manifests install it: the ServiceAccount's token, not admin."""
    install_crds(api)
    kubeconfig = install_operator_identity(
        api, state / "operator.kubeconfig", info["api_url"], Path(info["ca_file"])
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(paths.REPO / "operator"), env.get("PYTHONPATH", "")])
    args = [
        sys.executable,
        "-m",
        "pullmedic",
        "run",
        "--kubeconfig",
        str(kubeconfig),
        "--operator-namespace",
        SECRETS_NS,
        "--standalone",
        "--bind",
        "127.0.0.1",
        "--metrics-port",
        str(procs.free_port()),
        "--liveness-port",
        str(procs.free_port()),
        "--allow-address",
        "127.0.0.0/8",
        "--log-format",
        "json",
    ]
    for r in info["registries"].values():
        args += ["--insecure-registry", r["host"]]
    proc = procs.spawn(args, state / "logs" / "operator.log", env=env, tie=False)
    (state / "operator.pid").write_text(str(proc.pid))
    return proc


def start_in_cluster(state: Path, info: dict[str, Any], api: client.ApiClient) -> str:
    """Run pullmedic's image as a pod on the real node, installed with ``kubectl apply -k``."""
    from sandbox import incluster

    install_crds(api)
    print("Building the operator image (cached after the first build) ...", flush=True)
    tag = incluster.build_image()
    ref = incluster.push_image(tag, _registry(info, "open"))
    hosts = [r["host"] for r in info["registries"].values()]
    where = incluster.Placement.for_sandbox(info["api_url"], hosts)
    overlay = incluster.kustomize_overlay(state / "overlay", ref, where)
    incluster.install_kustomize(paths.binary("kubectl"), Path(info["kubeconfig"]), overlay)
    core = client.CoreV1Api(api)

    def ready() -> bool:
        pods = core.list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/name=pullmedic"
        ).items
        return any(
            c.type == "Ready" and c.status == "True"
            for p in pods
            for c in p.status.conditions or []
        )

    wait_for(ready, "the operator pod Ready", 180)
    return ref


def shorten(text: str, width: int) -> str:
    """One line of at most ``width`` characters, cut at a word boundary."""
    return textwrap.shorten(text, width=width, placeholder=" ...")


def _last_event(core: client.CoreV1Api, name: str, component: str = "pullmedic") -> str:
    """Latest Event from ``component`` about the workload or one of its pods."""
    evs = [
        e
        for e in core.list_namespaced_event(NS).items
        if e.source.component == component and e.involved_object.name.startswith(name)
    ]
    evs.sort(key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
    return f"{evs[-1].reason}: {evs[-1].message}" if evs else ""


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def watch(api: client.ApiClient, cases: list[Case], timeout: float) -> list[list[str]]:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    last = ""
    rows: list[list[str]] = []
    while True:
        rows = [
            [
                "WORKLOAD",
                "READY",
                "TIME TO RUNNING",
                "EXPECTED",
                "LAST KUBELET EVENT",
                "LAST PULLMEDIC EVENT",
            ]
        ]
        for c in cases:
            up = len(running_pods(core, NS, f"app={c.name}"))
            if up == c.replicas and c.running_at is None:
                c.running_at = time.monotonic()
            ttr = f"{c.running_at - c.started:.1f}s" if c.running_at else "-"
            rows.append(
                [
                    c.name,
                    f"{up}/{c.replicas}",
                    ttr,
                    c.expect,
                    shorten(_last_event(core, c.name, "kubelet"), 70),
                    shorten(_last_event(core, c.name), 70),
                ]
            )
        text = table(rows)
        if text != last:
            print(f"\n[{time.strftime('%H:%M:%S')}]\n{text}", flush=True)
            last = text
        done = all(c.running_at for c in cases if c.fixable)
        if done or time.monotonic() > deadline:
            return rows
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__)
    p.add_argument("--keep", action="store_true", help="leave the sandbox and operator running")
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument(
        "--in-cluster",
        action="store_true",
        help="run the operator's image as a pod on the real node (kubectl apply -k)",
    )
    p.add_argument("--state", default=str(paths.state_dir()))
    args = p.parse_args(argv)
    state = Path(args.state)

    from sandbox.__main__ import main as sandbox_main

    sandbox_main(["--state", str(state), "down"])
    shutil.rmtree(state, ignore_errors=True)
    if sandbox_main(["--state", str(state), "up", "--time-scale", "1.0"]) != 0:
        return 1
    info = json.loads((state / "sandbox.json").read_text())
    api = config.new_client_from_config(config_file=info["kubeconfig"])
    ok = False
    try:
        cases, extra = prepare(info)
        node = info["node"]
        if args.in_cluster:
            if node["kind"] != "real":
                print("--in-cluster needs the real node; this machine runs the emulator")
                return 1
            ref = start_in_cluster(state, info, api)
            print(f"pullmedic runs in-cluster from {ref} (kubectl apply -k)")
        else:
            start_operator(state, info, api)
        apply(api, cases, extra)
        if node["kind"] == "real":
            where = f"a real kubelet {node['kubelet']} on containerd {node['containerd']}"
        else:
            why = node.get("fallback_reason")
            where = "the node emulator" + (f" (no real node here: {why})" if why else "")
        print(
            f"Broke {len(cases)} workloads in namespace {NS} on {where}; pullmedic is "
            "healing them (kubelet back-off at real timing: 10s doubling to 300s)."
        )
        rows = watch(api, cases, args.timeout)
        ok = all(c.running_at for c in cases if c.fixable)
        frontend = next(c for c in cases if not c.fixable)
        print("\nSummary\n" + table(rows))
        print(
            f"\n{sum(1 for c in cases if c.running_at)}/{len(cases)} workloads running; "
            f"{frontend.name} kept its broken image and got a suggestion (GitOps)."
        )
        if args.keep:
            kc = info["kubeconfig"]
            print(f"\nkubeconfig: {kc}")
            kubectl = paths.binary("kubectl")
            print(f"try: {kubectl} --kubeconfig {kc} get clusterpullpolicies")
            print(f"     {kubectl} --kubeconfig {kc} -n {NS} describe deployment web")
    finally:
        if args.keep:
            print(f"\nLeft running. Stop with: .venv/bin/python -m sandbox --state {state} down")
        else:
            sandbox_main(["--state", str(state), "down"])
            print("\nSandbox torn down.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
