"""The engine's pure pieces: remediation records read from hostile annotations, plan
fingerprints, template lookups."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pullmedic.core.actions import Failure, ObjectRef
from pullmedic.core.decision import fingerprint as _fingerprint
from pullmedic.core.decision import template_pull_secrets as _template_pull_secrets
from pullmedic.core.diagnosis import Cause, Diagnosis, Fix
from pullmedic.core.kinds import pod_spec_of as _template_spec
from pullmedic.core.planning import plan
from pullmedic.core.policy import parse
from pullmedic.core.records import RECORD

NS = "team-a"
DEPLOY = ObjectRef("Deployment", NS, "web", "d")
POD = ObjectRef("Pod", NS, "web-1", "p1")


@pytest.mark.parametrize(
    "raw",
    [None, "", "not json", "[]", "42", '"text"', "{}", '{"time": 5}', '{"time": "yesterday"}'],
)
def test_hostile_annotations_give_no_record(raw: str | None) -> None:
    assert RECORD.parse(raw) is None


def test_record_round_trip() -> None:
    raw = json.dumps(
        {
            "time": "2026-11-29T10:00:00.250000Z",
            "cause": "TagNotFound",
            "container": "app",
            "action": "PatchWorkloadImage",
            "newImage": "r/x:1.2.3",
            "secret": None,
        }
    )
    rec = RECORD.parse(raw)
    assert rec is not None
    assert (rec.cause, rec.container, rec.new_image, rec.secret) == (
        "TagNotFound",
        "app",
        "r/x:1.2.3",
        "",
    )
    assert rec.at % 1 == pytest.approx(0.25)  # sub-second precision survives
    assert rec.to_dict()["time"] == "2026-11-29T10:00:00.250000Z"
    assert rec.to_dict()["previousImage"] == ""  # not in this record: shown empty


def test_record_keeps_the_previous_image_for_humans() -> None:
    raw = json.dumps(
        {
            "time": "2026-11-29T10:00:00Z",
            "cause": "TagNotFound",
            "container": "app",
            "action": "PatchWorkloadImage",
            "previousImage": "r/x:1.2.9",
            "newImage": "r/x:1.2.3",
        }
    )
    rec = RECORD.parse(raw)
    assert rec is not None and rec.previous_image == "r/x:1.2.9"
    assert (rec.to_dict()["previousImage"], rec.to_dict()["newImage"]) == ("r/x:1.2.9", "r/x:1.2.3")


def _plan(pods: tuple[ObjectRef, ...]) -> Any:
    policy, _ = parse(
        {"kind": "ClusterPullPolicy", "metadata": {"name": "p"}, "spec": {"mode": "Remediate"}}
    )
    f = Failure(
        pod=pods[0],
        container="app",
        container_kind="containers",
        container_index=0,
        image="r/x:1.2.9",
        reason="ErrImagePull",
        service_account="default",
        workload=DEPLOY,
        workload_container_index=0,
        stuck_pods=pods,
    )
    d = Diagnosis("r/x:1.2.9", Cause.ImageAvailable, "high", "pullable now")
    tag = Diagnosis(
        "r/x:1.2.9",
        Cause.TagNotFound,
        "high",
        "no such tag",
        fix=Fix(kind="tag", reason="patch", image="r/x:1.2.3"),
    )
    return plan(f, d, policy), plan(f, tag, policy)


def test_fingerprint_ignores_which_pods_are_recreated() -> None:
    (recreate_a, tag_a) = _plan((POD,))
    (recreate_b, tag_b) = _plan((POD, ObjectRef("Pod", NS, "web-2", "p2")))
    assert _fingerprint(recreate_a) == _fingerprint(recreate_b)  # a follow-up, not a new fix
    assert _fingerprint(tag_a) == _fingerprint(tag_b)
    assert _fingerprint(tag_a) != _fingerprint(recreate_a)


@pytest.mark.parametrize(
    ("kind", "obj", "secrets"),
    [
        ("Deployment", {"spec": {"template": {"spec": {}}}}, ()),
        (
            "Deployment",
            {"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "a"}]}}}},
            ("a",),
        ),
        (
            "CronJob",
            {
                "spec": {
                    "jobTemplate": {
                        "spec": {
                            "template": {"spec": {"imagePullSecrets": [{"name": "b"}, "junk"]}}
                        }
                    }
                }
            },
            ("b",),
        ),
    ],
)
def test_template_pull_secrets(kind: str, obj: dict[str, Any], secrets: tuple[str, ...]) -> None:
    assert _template_pull_secrets(obj, ObjectRef(kind, NS, "w")) == secrets
    assert isinstance(_template_spec(obj, kind), dict)
    assert _template_pull_secrets(None, None) is None
