"""The committed CRDs are exactly what scripts/gen_crds.py renders, say what the
operator's policy parser understands, and describe the status the operator writes (the
TypedDicts of core/policystatus.py) field by field."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, get_args, get_origin, get_type_hints, is_typeddict

import pytest
import yaml

from pullmedic.core.policystatus import PolicyStatus

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


def _disagreements(hint: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    """Where the CRD's schema says something else than the status TypedDicts (names,
    types, required keys), recursively; empty when they agree."""
    scalar = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if hint in scalar:
        got = schema.get("type")
        return [] if got == scalar[hint] else [f"{where}: {got}, not {scalar[hint]}"]
    if is_typeddict(hint):
        fields = get_type_hints(hint)
        props = schema.get("properties") or {}
        out = [f"{where}: type {schema.get('type')}"] if schema.get("type") != "object" else []
        out += [f"{where}.{k}: not in the CRD" for k in sorted(set(fields) - set(props))]
        out += [f"{where}.{k}: not in {hint.__name__}" for k in sorted(set(props) - set(fields))]
        out += [
            f"{where}.{k}: required by the CRD only"
            for k in sorted(set(schema.get("required") or ()) - hint.__required_keys__)
        ]
        for k in sorted(set(fields) & set(props)):
            out += _disagreements(fields[k], props[k], f"{where}.{k}")
        return out
    origin, args = get_origin(hint), get_args(hint)
    if origin is list and schema.get("type") == "array":
        return _disagreements(args[0], schema.get("items") or {}, f"{where}[]")
    if origin is dict and schema.get("type") == "object" and "additionalProperties" in schema:
        return _disagreements(args[1], schema["additionalProperties"], f"{where}{{}}")
    return [f"{where}: {hint} against {schema.get('type')}"]


def _status(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "crds" / name).read_text())
    status: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return status["properties"]["status"]


@pytest.mark.parametrize("name", ["pullpolicies.yaml", "clusterpullpolicies.yaml"])
def test_the_status_schema_is_the_status_format(name: str) -> None:
    assert _disagreements(PolicyStatus, _status(name), "status") == []


def test_a_field_the_crd_lacks_or_mistypes_is_found() -> None:
    schema = copy.deepcopy(_status("pullpolicies.yaml"))
    del schema["properties"]["shards"]["additionalProperties"]["properties"]["managedSecrets"]
    schema["properties"]["backoff"]["properties"]["pullAttempts"]["type"] = "number"
    schema["properties"]["conditions"]["items"]["required"].append("reason")
    assert _disagreements(PolicyStatus, schema, "status") == [
        "status.backoff.pullAttempts: number, not integer",
        "status.conditions[].reason: required by the CRD only",
        "status.shards{}.managedSecrets: not in the CRD",
    ]
