"""The chart's values.schema.json and values.yaml describe the same values.

helm validates values against the schema on install, upgrade, template and lint
(tests/integration/test_chart.py runs it); here, without helm: every value the chart
documents is in the schema, every object the schema closes names only documented
values, and the defaults are valid under a small validator for the keywords the schema
uses (so the schema cannot reject the chart's own defaults).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "pullmedic"
Schema = dict[str, Any]

KEYWORDS = {
    "$schema",
    "title",
    "description",
    "type",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "properties",
    "additionalProperties",
    "required",
    "items",
    "propertyNames",
}
TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def schema() -> Schema:
    doc: Schema = json.loads((CHART / "values.schema.json").read_text())
    return doc


def values() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return doc


def errors(value: Any, s: Schema, path: str = "") -> list[str]:
    """Draft-07 for the keywords above; anything else in the schema is a test failure."""
    unknown = set(s) - KEYWORDS
    assert not unknown, f"{path or '(root)'}: teach this validator {sorted(unknown)}"
    where = path or "(root)"
    if "type" in s:
        kinds = s["type"] if isinstance(s["type"], list) else [s["type"]]
        ok = any(
            isinstance(value, TYPES[k]) and not (isinstance(value, bool) and k != "boolean")
            for k in kinds
        )
        if not ok:
            return [f"{where}: {value!r} is not of type {', '.join(kinds)}"]
    out: list[str] = []
    if "enum" in s and value not in s["enum"]:
        out.append(f"{where}: {value!r} is not one of {s['enum']}")
    if isinstance(value, str):
        if "pattern" in s and not re.search(s["pattern"], value):
            out.append(f"{where}: {value!r} does not match {s['pattern']}")
        if len(value) < s.get("minLength", 0):
            out.append(f"{where}: {value!r} is too short")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in s and value < s["minimum"]:
            out.append(f"{where}: {value} is less than {s['minimum']}")
        if "maximum" in s and value > s["maximum"]:
            out.append(f"{where}: {value} is more than {s['maximum']}")
        if "exclusiveMinimum" in s and value <= s["exclusiveMinimum"]:
            out.append(f"{where}: {value} is not more than {s['exclusiveMinimum']}")
    if isinstance(value, dict):
        props = s.get("properties", {})
        out += [f"{where}: missing required {k!r}" for k in s.get("required", ()) if k not in value]
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if "propertyNames" in s:
                out += errors(k, s["propertyNames"], f"{sub} (name)")
            if k in props:
                out += errors(v, props[k], sub)
            elif s.get("additionalProperties") is False:
                out.append(f"{where}: additional property {k!r} is not allowed")
            elif isinstance(s.get("additionalProperties"), dict):
                out += errors(v, s["additionalProperties"], sub)
    if isinstance(value, list) and "items" in s:
        for n, item in enumerate(value):
            out += errors(item, s["items"], f"{path}[{n}]")
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Values as helm merges -f/--set over the chart's: maps key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_the_defaults_are_valid() -> None:
    assert errors(values(), schema()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"replica": 3}, "additional property 'replica'"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "additional property 'enable'"),
        ({"operator": {"logFormat": "yaml"}}, "not one of"),
        ({"operator": {"recheckAfter": "soon"}}, "does not match"),
        ({"webhook": {"failurePolicy": "ignore"}}, "not one of"),
        ({"sharding": {"shards": 0}}, "less than 1"),
        ({"image": {"pullPolicy": True}}, "not one of"),
        ({"pullPolicies": {"team/fix": "Suggest"}}, "is not of type object"),
    ],
)
def test_the_validator_refuses_a_mistake(change: dict[str, Any], message: str) -> None:
    """Guards the test above (and shows what the schema refuses): each is one mistake."""
    found = errors(merge(values(), change), schema())
    assert len(found) == 1 and message in found[0], found


def leaves(s: Schema, path: str = "") -> set[str]:
    """Dotted paths of the schema's closed objects' properties."""
    out = set()
    for k, sub in s.get("properties", {}).items():
        p = f"{path}.{k}" if path else k
        out.add(p)
        if sub.get("additionalProperties") is False:
            out |= leaves(sub, p)
    return out


def documented(v: dict[str, Any], s: Schema, path: str = "") -> set[str]:
    out = set()
    for k, sub in v.items():
        p = f"{path}.{k}" if path else k
        out.add(p)
        child = s.get("properties", {}).get(k, {})
        if isinstance(sub, dict) and child.get("additionalProperties") is False:
            out |= documented(sub, child, p)
    return out


def test_schema_and_values_name_the_same_settings() -> None:
    s = schema()
    assert s["additionalProperties"] is False
    in_schema = leaves(s) - {"global"}  # Helm's own, for a parent chart's shared values
    assert documented(values(), s) == in_schema


def test_the_sandbox_install_passes_the_schema() -> None:
    """The values tests/e2e/test_incluster.py installs the chart with (helm refuses them
    before anything runs if the schema does not)."""
    from sandbox import incluster

    where = incluster.Placement("127.0.0.1", 6443, 18080, 19090, ("127.0.0.1:5000",))
    chosen = incluster.helm_values("127.0.0.1:5000/pullmedic:0.1.0-0123456789ab", where)
    chosen["helmTest"] = {"platform": "linux/amd64"}
    assert errors(merge(values(), chosen), schema()) == []
