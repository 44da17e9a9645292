"""Every shell script parses, and every component build.sh builds by default has a
build function: a broken merge of a script fails here in seconds, not at setup in CI."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*(REPO / "scripts").glob("*.sh"), *(REPO / "sandbox").glob("*.sh")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_script_parses(script: Path) -> None:
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_every_default_component_has_a_build_function() -> None:
    text = (REPO / "sandbox" / "build.sh").read_text()
    loops = re.findall(r'for c in "\$\{@:-([a-z ]+)\}"; do', text)
    assert len(loops) == 1, "one loop over the default components"
    functions = set(re.findall(r"^build_(\w+)\(\) \{", text, re.M))
    assert set(loops[0].split()) <= functions
    assert {"etcd", "registry", "kubernetes", "pause"} <= set(loops[0].split())
