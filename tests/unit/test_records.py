"""What pullmedic persists on workloads, each through its one owner: the remediation
record (records.RECORD) and the circuit mark (circuit.MARK). The values written are
pinned byte for byte: an operator upgraded mid-flight reads what the old one wrote."""

from __future__ import annotations

from typing import Any

import pytest

from pullmedic.core.actions import Action, ActionType, Failure, ObjectRef, Plan
from pullmedic.core.circuit import CIRCUIT_ANNOTATION, MARK
from pullmedic.core.diagnosis import Cause
from pullmedic.core.metadata import annotations_of
from pullmedic.core.policy import Mode
from pullmedic.core.records import RECORD, REMEDIATION_ANNOTATION, RemediationRecord
from pullmedic.kube.client import KubeError
from tests.unit.fakekube import apply_json_patch

DEPLOY = ObjectRef("Deployment", "ns", "web", "d")
FAILURE = Failure(
    pod=ObjectRef("Pod", "ns", "web-1", "p1"),
    container="app",
    container_kind="containers",
    container_index=0,
    image="r/x:1.2.9",
    reason="ErrImagePull",
    service_account="default",
    workload=DEPLOY,
)
AT = 1795946400.25  # 2026-11-29T10:00:00.250000Z
PATCH = Action(
    ActionType.PATCH_WORKLOAD_IMAGE, DEPLOY, "s", old_image="r/x:1.2.9", new_image="r/x:1.2.3"
)
ATTACH = Action(
    ActionType.ATTACH_PULL_SECRET,
    ObjectRef("ServiceAccount", "ns", "default", ""),
    "s",
    secret="cred",
)


def _record(a: Action, policy: str | None = "team/p") -> RemediationRecord:
    return RemediationRecord.of(
        Plan(FAILURE, Cause.TagNotFound, policy, Mode.REMEDIATE, (a,), True), a, AT
    )


@pytest.mark.parametrize(
    ("action", "policy", "written"),
    [
        (
            PATCH,
            "team/p",
            '{"action": "PatchWorkloadImage", "cause": "TagNotFound", "container": "app", '
            '"newImage": "r/x:1.2.3", "policy": "team/p", "previousImage": "r/x:1.2.9", '
            '"secret": null, "time": "2026-11-29T10:00:00.250000Z"}',
        ),
        (
            ATTACH,
            None,
            '{"action": "AttachPullSecret", "cause": "TagNotFound", "container": "app", '
            '"newImage": "r/x:1.2.9", "policy": null, "previousImage": "r/x:1.2.9", '
            '"secret": "cred", "time": "2026-11-29T10:00:00.250000Z"}',
        ),
    ],
)
def test_the_record_is_written_as_every_version_wrote_it(
    action: Action, policy: str | None, written: str
) -> None:
    rec = _record(action, policy)
    assert RECORD.render(rec) == written
    back = RECORD.parse(written)
    assert back is not None
    assert (back.at, back.cause, back.container, back.action) == (AT, rec.cause, "app", rec.action)
    assert (back.new_image, back.secret, back.previous_image) == (
        rec.new_image,
        rec.secret,
        rec.previous_image,
    )


def _workload(annotations: dict[str, str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web", "namespace": "ns", "uid": "d", "resourceVersion": "7"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta}


@pytest.mark.parametrize("annotations", [None, {}, {"team": "a"}])
def test_store_fetch_purge_keep_other_annotations(annotations: dict[str, str] | None) -> None:
    obj = _workload(annotations)
    stored = apply_json_patch(obj, RECORD.store(obj, _record(PATCH)))
    assert RECORD.fetch(annotations_of(stored)) is not None
    assert annotations_of(stored)[REMEDIATION_ANNOTATION] == RECORD.render(_record(PATCH))
    marked = apply_json_patch(stored, MARK.store(stored))
    assert (
        MARK.fetch(annotations_of(marked)) and annotations_of(marked)[CIRCUIT_ANNOTATION] == "open"
    )
    purged = apply_json_patch(marked, RECORD.purge(marked) + MARK.purge(marked))
    assert dict(annotations_of(purged)) == (annotations or {})
    assert RECORD.purge(purged) == [] and MARK.purge(purged) == []


def test_creating_the_annotations_map_never_replaces_a_concurrent_writers() -> None:
    seen = _workload(None)
    now = _workload({"theirs": "x"})
    now["metadata"]["resourceVersion"] = "8"
    for ops in (RECORD.store(seen, _record(PATCH)), MARK.store(seen)):
        with pytest.raises(KubeError):
            apply_json_patch(now, ops)


def test_a_purge_leaves_a_record_rewritten_meanwhile() -> None:
    seen = _workload({REMEDIATION_ANNOTATION: RECORD.render(_record(PATCH))})
    now = _workload({REMEDIATION_ANNOTATION: RECORD.render(_record(ATTACH))})
    with pytest.raises(KubeError):
        apply_json_patch(now, RECORD.purge(seen))


@pytest.mark.parametrize("value", ["open", "Open", "closed", "", None])
def test_only_open_is_an_open_circuit(value: str | None) -> None:
    assert MARK.fetch({} if value is None else {CIRCUIT_ANNOTATION: value}) is (value == "open")
