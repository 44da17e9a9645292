"""One sandbox = control plane + registries + node emulator, shared by tests, demo and bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import paths, procs
from sandbox.cluster import Cluster, start_cluster
from sandbox.registries import RegistrySet, start_registries

DEFAULT_PLATFORM = "linux/amd64"


@dataclass
class Sandbox:
    state: Path
    cluster: Cluster
    registries: RegistrySet
    emulator: subprocess.Popen[bytes] | None
    time_scale: float

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def describe(self) -> dict[str, Any]:
        return {
            "kubeconfig": str(self.cluster.kubeconfig),
            "api_url": self.cluster.api_url,
            "ca_file": str(self.cluster.pki.ca_cert),
            "time_scale": self.time_scale,
            "node_platform": DEFAULT_PLATFORM,
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
        self.registries.stop()
        self.cluster.stop()


def start_emulator(
    kubeconfig: Path,
    log: Path,
    *,
    time_scale: float,
    platform: str = DEFAULT_PLATFORM,
    tie: bool = True,
    node: str = "sandbox-node",
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(paths.REPO), str(paths.REPO / "operator"), env.get("PYTHONPATH", "")]
    )
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
        ],
        log,
        env=env,
        tie=tie,
    )


def start(state: Path, *, time_scale: float = 1.0, emulator: bool = True) -> Sandbox:
    """Start every part, tied to this process so nothing outlives it."""
    state.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster(state / "cluster")
    try:
        registries = start_registries(state / "registries")
    except BaseException:
        cluster.stop()
        raise
    sb = Sandbox(state, cluster, registries, None, time_scale)
    try:
        if emulator:
            sb.emulator = start_emulator(
                cluster.kubeconfig, state / "logs" / "emulator.log", time_scale=time_scale
            )
    except BaseException:
        sb.stop()
        raise
    (state / "sandbox.json").write_text(json.dumps(sb.describe(), indent=2))
    return sb
