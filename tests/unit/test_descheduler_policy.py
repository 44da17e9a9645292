"""The descheduler policy the recovery benchmark writes: PodLifeTime on image pull states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.descheduler import PULL_STATES, policy, write_policy


def test_pod_lifetime_only_on_pull_states_in_the_named_namespaces() -> None:
    doc = policy(["rec-desched"], 5)
    assert doc["apiVersion"] == "descheduler/v1alpha2"
    assert doc["kind"] == "DeschedulerPolicy"
    (profile,) = doc["profiles"]
    assert profile["plugins"] == {"deschedule": {"enabled": ["PodLifeTime"]}}
    args = next(p["args"] for p in profile["pluginConfig"] if p["name"] == "PodLifeTime")
    assert args == {
        "maxPodLifeTimeSeconds": 5,
        "states": ["ImagePullBackOff", "ErrImagePull"],
        "namespaces": {"include": ["rec-desched"]},
    }
    assert tuple(args["states"]) == PULL_STATES


def test_no_namespace_would_mean_every_namespace() -> None:
    with pytest.raises(ValueError, match="namespaces"):
        policy([], 5)
    with pytest.raises(ValueError, match="negative"):
        policy(["a"], -1)


def test_the_file_reads_back_as_yaml(tmp_path: Path) -> None:
    doc = policy(["a", "b"], 30, ("ImagePullBackOff",))
    path = write_policy(tmp_path / "sub" / "policy.yaml", doc)
    assert yaml.safe_load(path.read_text()) == doc
    assert json.loads(path.read_text()) == doc
