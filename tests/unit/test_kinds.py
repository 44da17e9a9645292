"""The one table of kinds: the paths, names and pod specs every module reads from it."""

from __future__ import annotations

from typing import Any

import pytest

from pullmedic.core import kinds


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("Deployment", "/apis/apps/v1/namespaces/ns/deployments/web"),
        ("CronJob", "/apis/batch/v1/namespaces/ns/cronjobs/web"),
        ("Pod", "/api/v1/namespaces/ns/pods/web"),
        ("Node", "/api/v1/nodes/web"),
        ("ClusterPullPolicy", "/apis/pullmedic.dev/v1alpha1/clusterpullpolicies/web"),
        ("Lease", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/web"),
    ],
)
def test_paths(kind: str, path: str) -> None:
    assert kinds.KINDS[kind].path("ns", "web") == path


@pytest.mark.parametrize(
    ("typed", "kind"),
    [
        ("deploy", "Deployment"),
        ("deployments", "Deployment"),
        ("Deployment", "Deployment"),
        ("sts", "StatefulSet"),
        ("cj", "CronJob"),
        ("po", "Pod"),
        ("rs", "ReplicaSet"),
        ("gizmo", None),
    ],
)
def test_the_names_a_user_types(typed: str, kind: str | None) -> None:
    assert kinds.by_user_name(typed) == kind


@pytest.mark.parametrize(
    ("kind", "obj", "spec"),
    [
        ("Deployment", {"spec": {"template": {"spec": {"a": 1}}}}, {"a": 1}),
        (
            "CronJob",
            {"spec": {"jobTemplate": {"spec": {"template": {"spec": {"b": 2}}}}}},
            {"b": 2},
        ),
        ("Pod", {"spec": {"c": 3}}, {"c": 3}),
        ("Secret", {"data": {}}, {}),
        ("Deployment", {"spec": None}, {}),
    ],
)
def test_pod_spec_of(kind: str, obj: Any, spec: Any) -> None:
    assert kinds.pod_spec_of(obj, kind) == spec


def test_what_a_fix_may_do_per_kind() -> None:
    assert {"Deployment", "StatefulSet", "DaemonSet", "CronJob"} == kinds.TEMPLATE_FIX
    assert {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"} == kinds.RECREATING
    assert kinds.ANNOTATABLE == kinds.TEMPLATE_FIX
    assert kinds.kubectl_name("StatefulSet") == "statefulset"
