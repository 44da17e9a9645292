"""One sandbox = control plane + registries + a node, shared by tests, demo and bench.

The node is real (kubelet + containerd, :mod:`sandbox.node`) by default, so tests and the
demo see the kubelet's own pulls, back-off and Events; the emulator
(:mod:`sandbox.emulator`) stands in where one machine cannot hold the real thing
(benchmarks with thousands of pods) or cannot run a kubelet at all, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox import paths, procs
from sandbox.cluster import Cluster, start_cluster
from sandbox.images import host_platform, push_pause
from sandbox.registries import RegistrySet, start_registries

DEFAULT_PLATFORM = "linux/amd64"
NODE_NAME = "sandbox-node"


@dataclass
class Sandbox:
    state: Path
    cluster: Cluster
    registries: RegistrySet
    emulator: subprocess.Popen[bytes] | None
    time_scale: float
    node: Any = None  # sandbox.node.RealNode when the node is real
    node_note: str = ""  # why the emulator stands in, when it does
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    @property
    def node_kind(self) -> str:
        return "real" if self.node is not None else "emulator"

    def trust_http(self, host: str) -> None:
        """A registry (or proxy) the node may pull from over plain http."""
        if self.node is not None:
            self.node.trust_http(host)

    def describe(self) -> dict[str, Any]:
        node: dict[str, Any] = {"kind": self.node_kind, "name": NODE_NAME}
        if self.node is not None:
            node.update(self.facts)
        elif self.node_note:
            node["fallback_reason"] = self.node_note
        return {
            "kubeconfig": str(self.cluster.kubeconfig),
            "api_url": self.cluster.api_url,
            "ca_file": str(self.cluster.pki.ca_cert),
            "node": node,
            "time_scale": self.time_scale if self.node is None else 1.0,
            "node_platform": host_platform() if self.node is not None else DEFAULT_PLATFORM,
            "token_url": self.registries.token_url,
            "registries": {
                r.name: {"host": r.host, "url": r.url, "users": r.users}
                for r in self.registries.all()
            },
            "logs": str(self.state / "logs"),
        }

    def stop(self) -> None:
        if self.emulator is not None:
            procs.stop(self.emulator)
            self.emulator = None
        if self.node is not None:
            node, self.node = self.node, None
            node.stop()
        self.registries.stop()
        self.cluster.stop()


def start_emulator(
    kubeconfig: Path,
    log: Path,
    *,
    time_scale: float,
    platform: str = DEFAULT_PLATFORM,
    tie: bool = True,
    node: str = NODE_NAME,
    args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``python -m sandbox.emulator`` for ``node``; ``args``: more of its flags."""
    env = dict(os.environ)
    # Only the repository root: the emulator must not see (or import) the operator's code.
    env["PYTHONPATH"] = os.pathsep.join([str(paths.REPO), env.get("PYTHONPATH", "")])
    return procs.spawn(
        [
            sys.executable,
            "-m",
            "sandbox.emulator",
            "--kubeconfig",
            str(kubeconfig),
            "--time-scale",
            str(time_scale),
            "--platform",
            platform,
            "--node",
            node,
            *args,
        ],
        log,
        env=env,
        tie=tie,
    )


def choose_node(node: str | None) -> tuple[str, str]:
    """("real"|"emulator", why not real): the argument, else PULLMEDIC_NODE, else real."""
    from sandbox.node import prerequisites

    kind = node or os.environ.get("PULLMEDIC_NODE") or "real"
    if kind not in ("real", "emulator"):
        raise ValueError(f"node must be 'real' or 'emulator', not {kind!r}")
    if kind == "emulator":
        return kind, ""
    problems = prerequisites()
    return ("emulator", "; ".join(problems)) if problems else ("real", "")


def start(
    state: Path,
    *,
    time_scale: float = 1.0,
    emulator: bool = True,
    node: str | None = None,
    fallback: bool = True,
    kubelet_args: Sequence[str] = (),
) -> Sandbox:
    """Start every part, tied to this process so nothing outlives it.

    ``node``: "real" (default) or "emulator"; ``PULLMEDIC_NODE`` overrides the default.
    A real node that cannot run here falls back to the emulator with a printed line, or,
    with ``fallback=False`` (the test suite), raises ``NodeUnavailable`` with the reason:
    a suite that silently ran on the emulator would pass without the kubelet.
    ``emulator=False`` starts no emulator (the caller runs its own). ``kubelet_args``:
    more flags for the real node's kubelet.
    """
    from sandbox.node import NodeUnavailable, start_node

    state.mkdir(parents=True, exist_ok=True)
    kind, note = choose_node(node)
    if note and not fallback:
        raise NodeUnavailable(f"{note} (PULLMEDIC_NODE=emulator runs on the node emulator)")
    cluster = start_cluster(
        state / "cluster",
        extra_controllers=("node-lifecycle-controller",) if kind == "real" else (),
    )
    try:
        registries = start_registries(state / "registries")
    except BaseException:
        cluster.stop()
        raise
    sb = Sandbox(state, cluster, registries, None, time_scale)
    try:
        if kind == "real":
            try:
                sb.node = start_node(
                    cluster,
                    [r.host for r in registries.all()],
                    push_pause(registries.open),
                    state / "logs",
                    name=NODE_NAME,
                    kubelet_args=kubelet_args,
                )
                sb.facts = {**sb.node.facts(), "start_seconds": round(sb.node.started_in, 1)}
            except NodeUnavailable as e:
                if not fallback:
                    raise NodeUnavailable(
                        f"{e} (PULLMEDIC_NODE=emulator runs on the node emulator)"
                    ) from e
                note = str(e)
        if sb.node is None and note:
            print(f"[sandbox] no real node ({note}); using the node emulator", file=sys.stderr)
        sb.node_note = note
        if sb.node is None and emulator:
            sb.emulator = start_emulator(
                cluster.kubeconfig, state / "logs" / "emulator.log", time_scale=time_scale
            )
    except BaseException:
        sb.stop()
        raise
    (state / "sandbox.json").write_text(json.dumps(sb.describe(), indent=2))
    return sb
