"""An object's labels and annotations: read defensively (anyone who can edit the object
can write them), and changed by JSON patch ops that never replace a concurrent writer's
keys. The owners of what pullmedic persists there (records, circuit, sharding) build their
patches from these, so the pointer escaping and the guards are written once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pullmedic.core import jsonpointer

Field = Literal["labels", "annotations"]


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = (obj or {}).get("metadata") or {}
    return meta if isinstance(meta, Mapping) else {}


def _map(obj: Mapping[str, Any] | None, field: Field) -> Mapping[str, Any]:
    m = _meta(obj).get(field) or {}
    return m if isinstance(m, Mapping) else {}


def annotations_of(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _map(obj, "annotations")


def labels_of(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _map(obj, "labels")


def precondition(obj: Mapping[str, Any], field: str) -> dict[str, Any]:
    """A ``test`` of ``metadata.<field>`` (uid: this very object; resourceVersion: unchanged)."""
    return {"op": "test", "path": f"/metadata/{field}", "value": _meta(obj).get(field)}


def set_ops(
    obj: Mapping[str, Any], field: Field, values: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Add (or overwrite) keys of the map; when there is no map yet, add it whole. Unguarded:
    the caller chooses the ``test`` that goes first."""
    if not _meta(obj).get(field):
        return [{"op": "add", "path": f"/metadata/{field}", "value": dict(values)}]
    return [
        {"op": "add", "path": f"/metadata/{field}/{jsonpointer.escape(k)}", "value": v}
        for k, v in values.items()
    ]


def remove_ops(obj: Mapping[str, Any], field: Field, key: str) -> list[dict[str, Any]]:
    """Remove one key, testing the value it had, so a key rewritten meanwhile stays; none
    when the key is absent."""
    current = _map(obj, field)
    if key not in current:
        return []
    path = f"/metadata/{field}/{jsonpointer.escape(key)}"
    return [{"op": "test", "path": path, "value": current[key]}, {"op": "remove", "path": path}]


def annotation_ops(obj: Mapping[str, Any], values: Mapping[str, str]) -> list[dict[str, Any]]:
    """Set annotations; creating the map tests the resourceVersion so a concurrent writer's
    annotations are never replaced."""
    guard = [] if _meta(obj).get("annotations") else [precondition(obj, "resourceVersion")]
    return guard + set_ops(obj, "annotations", values)
