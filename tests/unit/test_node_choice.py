"""Which node a sandbox gets, and why a real one may be refused (no cluster needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import env, node


def test_real_is_the_default_and_the_variable_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node, "prerequisites", list)
    monkeypatch.delenv("PULLMEDIC_NODE", raising=False)
    assert env.choose_node(None) == ("real", "")
    monkeypatch.setenv("PULLMEDIC_NODE", "emulator")
    assert env.choose_node(None) == ("emulator", "")
    assert env.choose_node("real") == ("real", "")  # an explicit choice wins
    with pytest.raises(ValueError, match="'real' or 'emulator'"):
        env.choose_node("kind")


def test_missing_prerequisites_fall_back_to_the_emulator_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PULLMEDIC_NODE", raising=False)
    monkeypatch.setattr(node.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(node.shutil, "which", lambda _name: None)
    kind, why = env.choose_node(None)
    assert kind == "emulator"
    assert "not root" in why
    assert "missing containerd" in why and "scripts/setup.sh installs them" in why


def test_second_real_node_on_one_machine_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "node"
    fd = node._lock(root)
    try:
        with pytest.raises(node.NodeUnavailable, match="another real node runs"):
            node._lock(root)
    finally:
        os.close(fd)
    os.close(node._lock(root))  # free again once the first holder is gone


def test_the_suite_never_falls_back_silently(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The test suite's sandbox (fallback=False) refuses to start without a real node,
    naming why, before it starts anything; PULLMEDIC_NODE=emulator is the explicit way."""
    monkeypatch.delenv("PULLMEDIC_NODE", raising=False)
    monkeypatch.setattr(node, "prerequisites", lambda: ["missing containerd"])
    with pytest.raises(node.NodeUnavailable, match=r"missing containerd.*PULLMEDIC_NODE=emulator"):
        env.start(tmp_path / "sb", fallback=False)
    assert not (tmp_path / "sb" / "cluster").exists()  # nothing was started
