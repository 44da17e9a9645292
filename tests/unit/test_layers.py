"""The package's layers, and the rule between them (docs/development.md, "Packages").

``core`` is pure: it imports only itself and the standard library. Every other layer
imports its own package and lower layers only; two layers of the same rank (the two edges,
``probe`` and ``kube``) never import each other.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "pullmedic"

RANK = {
    "core": 0,
    "telemetry": 0,
    "probe": 1,
    "kube": 1,
    "control": 2,
    "admission": 3,
    "app": 4,
}
TOP_LEVEL = {"__init__.py", "__main__.py", "py.typed"}


def imported(source: str) -> list[tuple[int, str]]:
    """Every module a source imports, anywhere in it (functions and TYPE_CHECKING too)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "." * node.level + (node.module or "")))
            elif node.module == "pullmedic":
                found += [(node.lineno, f"pullmedic.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return found


def violations(layer: str, source: str) -> list[str]:
    """Why each import of a module in ``layer`` breaks the rule (empty when none does)."""
    bad = []
    for line, name in imported(source):
        if name.startswith("."):
            bad.append(f"line {line}: relative import {name} (write pullmedic.<layer>...)")
            continue
        top, _, rest = name.partition(".")
        if top != "pullmedic":
            if layer == "core" and top not in sys.stdlib_module_names:
                bad.append(f"line {line}: core imports {name}, not the standard library")
            continue
        target = rest.partition(".")[0]
        if target not in RANK:
            bad.append(f"line {line}: {name} is in no layer")
        elif target != layer and RANK[target] >= RANK[layer]:
            bad.append(
                f"line {line}: {layer} (rank {RANK[layer]}) imports {name} (rank {RANK[target]})"
            )
    return bad


@pytest.mark.parametrize(
    ("layer", "source", "expected"),
    [
        ("core", "import json\nfrom pullmedic.core import kinds\n", 0),
        ("core", "import httpx\n", 1),
        ("core", "from pullmedic.kube.client import KubeApi\n", 1),
        ("core", "from pullmedic.telemetry import metrics\n", 1),
        ("core", "from . import kinds\n", 1),
        ("probe", "import httpx\nfrom pullmedic.core.diagnosis import Cause\n", 0),
        ("probe", "from pullmedic.kube.client import KubeApi\n", 1),
        ("kube", "from pullmedic.probe.prober import Prober\n", 1),
        ("kube", "from pullmedic.telemetry import metrics\n", 0),
        ("control", "def f():\n    from pullmedic.app import cli\n", 1),
        ("control", "from pullmedic import engine\n", 1),
        ("app", "from pullmedic.control.engine import Engine\nimport kopf\n", 0),
        ("admission", "from pullmedic.control.diagnoser import Diagnoser\n", 0),
        ("admission", "from pullmedic.app.runner import run\n", 1),
    ],
)
def test_the_rule(layer: str, source: str, expected: int) -> None:
    assert len(violations(layer, source)) == expected, violations(layer, source)


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_is_in_a_layer() -> None:
    loose = sorted(p.name for p in PACKAGE.iterdir() if p.is_file() and p.name not in TOP_LEVEL)
    assert loose == [], f"modules outside every layer: {loose}"
    layers = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert layers == sorted(RANK)
    assert len(modules()) > 40


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_keeps_to_its_layer(path: Path) -> None:
    layer = path.relative_to(PACKAGE).parts[0]
    assert violations(layer, path.read_text()) == []
