"""The options every command reads alike: probe settings and the kubeconfig's namespace."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from pullmedic.app.options import context_namespace, probe_config
from pullmedic.probe.netguard import AddressPolicy


@pytest.mark.parametrize(
    ("timeout", "connect", "operation"),
    [(2.0, 2.0, 6.0), (10.0, 5.0, 30.0)],
)
def test_probe_config(timeout: float, connect: float, operation: float) -> None:
    args = argparse.Namespace(timeout=timeout, insecure_registry=["Reg.Local:5000"])
    c = probe_config(args, AddressPolicy(()))
    assert (c.connect_timeout, c.read_timeout, c.operation_timeout) == (
        connect,
        timeout,
        operation,
    )
    assert c.insecure_hosts == frozenset({"reg.local:5000"})


@pytest.mark.parametrize(
    ("context", "namespace"),
    [(None, "shop"), ("other", "team-b"), ("bare", "default"), ("missing", "shop")],
)
def test_context_namespace(tmp_path: Path, context: str | None, namespace: str) -> None:
    def ctx(name: str, ns: str | None) -> dict[str, object]:
        body: dict[str, object] = {"cluster": "c", "user": "u"}
        if ns:
            body["namespace"] = ns
        return {"name": name, "context": body}

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [ctx("main", "shop"), ctx("other", "team-b"), ctx("bare", None)],
        "current-context": "main",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    assert context_namespace(str(path), context) == namespace
