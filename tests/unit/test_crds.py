"""The committed CRDs are exactly what scripts/gen_crds.py renders, and say what the
operator's policy parser understands."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_crds", REPO / "scripts" / "gen_crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_crds_are_generated() -> None:
    for name, text in _generator().render().items():
        assert (REPO / "crds" / name).read_text() == text, (
            f"run python scripts/gen_crds.py ({name})"
        )


def _spec(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "crds" / name).read_text())
    version = doc["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_only_the_cluster_kind_may_name_other_namespaces() -> None:
    namespaced = _spec("pullpolicies.yaml")
    cluster = _spec("clusterpullpolicies.yaml")
    assert (
        "namespace" not in namespaced["credentials"]["properties"]["secrets"]["items"]["properties"]
    )
    assert "namespaceSelector" not in namespaced["selector"]["properties"]
    assert "namespace" in cluster["credentials"]["properties"]["secrets"]["items"]["required"]
    assert set(namespaced) == set(cluster)  # one shared spec otherwise
