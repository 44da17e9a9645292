"""Policy parsing, validation, selection and precedence: state in, state out."""

from __future__ import annotations

from typing import Any

import pytest

from pullmedic.core import policy as pol
from pullmedic.core import selection
from pullmedic.core.inventory import Inventory


def body(kind: str = "PullPolicy", ns: str | None = "team-a", **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "generation": 3, "uid": "u1"}
    if ns and kind == "PullPolicy":
        meta["namespace"] = ns
    return {"kind": kind, "metadata": meta, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"credentials": {"secrets": [{"name": "s", "namespace": "other"}]}}, "own namespace"),
        ({"tagCorrection": {"strategy": "SemverRange"}}, "needs tagCorrection.range"),
        ({"tagCorrection": {"strategy": "SemverRange", "range": "lots"}}, "not a semver"),
        ({"selector": {"images": {"include": ["foo bar"]}}}, "whitespace"),
        ({"selector": {"images": {"exclude": ["docker.io/[abc"]}}}, "unbalanced"),
        ({"mirrors": [{"registry": "a.io", "mirror": "a.io"}]}, "its own mirror"),
        (
            {
                "mirrors": [
                    {"registry": "a.io", "mirror": "b.io"},
                    {"registry": "a.io", "mirror": "c"},
                ]
            },
            "more than one mirror",
        ),
        (
            {"selector": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}},
            "needs values",
        ),
        ({"mode": "Destroy"}, "not Observe"),
        ({"credentials": {"nodeRegistries": ["ecr io"]}}, "nodeRegistries[0]"),
    ],
)
def test_invalid_specs_are_reported(spec: dict[str, Any], problem: str) -> None:
    _, problems = pol.parse(body(**spec))
    assert any(problem in p for p in problems), problems


def test_valid_spec_has_no_problems_and_defaults() -> None:
    p, problems = pol.parse(body(credentials={"secrets": [{"name": "regcred"}]}))
    assert problems == []
    assert p.mode is pol.Mode.SUGGEST
    assert p.secrets == (pol.SecretRef("team-a", "regcred"),)
    assert p.tags.strategy is pol.TagStrategy.HIGHEST_PATCH
    assert not p.tags.allow_major_change and not p.tags.allow_latest
    assert p.key == "PullPolicy/team-a/p"


def test_cluster_policy_secret_needs_namespace() -> None:
    _, problems = pol.parse(
        body("ClusterPullPolicy", None, credentials={"secrets": [{"name": "regcred"}]})
    )
    assert any("needs a namespace" in p for p in problems)


def match(
    p: pol.Policy,
    ns: str = "team-a",
    ns_labels: dict[str, str] | None = None,
    pod_labels: dict[str, str] | None = None,
    image: str = "docker.io/library/nginx:1.27",
    operator_ns: str | None = "pullmedic",
) -> bool:
    return selection.applies(
        p,
        namespace=ns,
        namespace_labels=ns_labels,
        pod_labels=pod_labels,
        image=image,
        familiar_image=image.removeprefix("docker.io/library/"),
        operator_namespace=operator_ns,
    )


@pytest.mark.parametrize(
    ("spec", "kw", "expected"),
    [
        ({}, {}, True),
        ({}, {"ns": "team-b"}, False),  # a PullPolicy acts only in its own namespace
        ({"selector": {"podSelector": {"matchLabels": {"app": "web"}}}}, {}, False),
        (
            {"selector": {"podSelector": {"matchLabels": {"app": "web"}}}},
            {"pod_labels": {"app": "web"}},
            True,
        ),
        ({"selector": {"images": {"include": ["nginx:*"]}}}, {}, True),
        ({"selector": {"images": {"include": ["docker.io/library/*"]}}}, {}, True),
        ({"selector": {"images": {"include": ["ghcr.io/*"]}}}, {}, False),
        (
            {"selector": {"images": {"include": ["*"], "exclude": ["*nginx*"]}}},
            {},
            False,
        ),
    ],
)
def test_namespaced_selection(spec: dict[str, Any], kw: dict[str, Any], expected: bool) -> None:
    p, _ = pol.parse(body(**spec))
    assert match(p, **kw) is expected


@pytest.mark.parametrize(
    ("selector", "kw", "expected"),
    [
        ({}, {"ns": "anything"}, True),
        ({}, {"ns": "kube-system"}, False),
        ({}, {"ns": "pullmedic"}, False),  # the operator's own namespace
        ({"namespaces": ["kube-system"]}, {"ns": "kube-system"}, True),
        ({"namespaces": ["a"]}, {"ns": "b"}, False),
        (
            {"namespaceSelector": {"matchLabels": {"env": "dev"}}},
            {"ns_labels": {"env": "dev"}},
            True,
        ),
        (
            {"namespaceSelector": {"matchLabels": {"env": "dev"}}},
            {"ns_labels": {"env": "prd"}},
            False,
        ),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}},
            {"ns_labels": {"x": "1"}},
            False,
        ),
    ],
)
def test_cluster_selection(selector: dict[str, Any], kw: dict[str, Any], expected: bool) -> None:
    p, problems = pol.parse(body("ClusterPullPolicy", None, selector=selector))
    assert problems == []
    assert match(p, **kw) is expected


def test_precedence_namespaced_first_then_priority() -> None:
    cluster_hi, _ = pol.parse(body("ClusterPullPolicy", None, priority=999))
    ns_lo, _ = pol.parse(body(priority=-5))
    ns_hi, _ = pol.parse({**body(priority=10), "metadata": {"name": "q", "namespace": "team-a"}})

    def choose(*policies: pol.Policy) -> pol.Policy | None:
        inv = Inventory(policies={p.key: p for p in policies})
        return selection.choose(
            inv, namespace="team-a", pod_labels={}, image="nginx:1", operator_namespace=None
        )

    assert choose(cluster_hi, ns_lo, ns_hi) is ns_hi
    assert choose(ns_hi, ns_lo, cluster_hi) is ns_hi
    assert choose(cluster_hi) is cluster_hi
    assert choose() is None


@pytest.mark.parametrize(
    ("kind", "spec", "image", "namespaces", "chosen"),
    [
        ("PullPolicy", {"selector": {"images": {"include": ["nginx:*"]}}}, "nginx:1", {}, True),
        (
            "PullPolicy",
            {"selector": {"images": {"include": ["nginx:*"]}}},
            "docker.io/library/nginx:1",  # the familiar spelling matches
            {},
            True,
        ),
        (
            "PullPolicy",
            {"selector": {"images": {"include": ["docker.io/library/*"]}}},
            "nginx:1",  # the canonical spelling matches
            {},
            True,
        ),
        (
            "PullPolicy",
            {"selector": {"images": {"include": ["Bad/*"]}}},
            "Bad/Name:1",  # does not parse: matched as written
            {},
            True,
        ),
        ("PullPolicy", {"selector": {"images": {"exclude": ["nginx*"]}}}, "nginx:1", {}, False),
        (
            "ClusterPullPolicy",
            {"selector": {"namespaceSelector": {"matchLabels": {"env": "dev"}}}},
            "nginx:1",
            {"team-a": {"env": "dev"}},  # the namespace's labels come from the inventory
            True,
        ),
        (
            "ClusterPullPolicy",
            {"selector": {"namespaceSelector": {"matchLabels": {"env": "dev"}}}},
            "nginx:1",
            {},
            False,
        ),
    ],
)
def test_choose_for_an_image(
    kind: str,
    spec: dict[str, Any],
    image: str,
    namespaces: dict[str, dict[str, str]],
    chosen: bool,
) -> None:
    p, problems = pol.parse(body(kind, "team-a", **spec))
    assert problems == []
    inv = Inventory(policies={p.key: p}, namespaces=namespaces)
    got = selection.choose(
        inv, namespace="team-a", pod_labels={}, image=image, operator_namespace="pullmedic"
    )
    assert (got is p) is chosen


def test_node_registries_match_like_the_kubelets_match_images() -> None:
    from pullmedic.core.keyring import NodeRegistries
    from pullmedic.core.reference import parse as ref

    nodes, problems = NodeRegistries.parse(["*.dkr.ecr.*.amazonaws.com", "gcr.io/team"])
    assert problems == []
    assert nodes.provide(ref("123.dkr.ecr.eu-west-1.amazonaws.com/app:1"))
    assert nodes.provide(ref("gcr.io/team/app:1"))
    assert not nodes.provide(ref("gcr.io/other/app:1"))  # path prefix
    assert not nodes.provide(ref("a.b.dkr.ecr.eu-west-1.amazonaws.com/app:1"))  # label count
    assert not nodes.provide(ref("docker.io/library/nginx:1"))


@pytest.mark.parametrize(
    ("frm", "to", "name", "expected"),
    [
        (
            "docker.io/bitnami/*",
            "docker.io/bitnamilegacy/$1",
            "docker.io/bitnami/redis",
            "docker.io/bitnamilegacy/redis",
        ),
        ("bitnami/*", "bitnamilegacy/$1", "bitnami/redis", "bitnamilegacy/redis"),
        (
            "docker.io/bitnami/*",
            "docker.io/bitnamilegacy/$1",
            "docker.io/bitnami/charts/redis",
            None,
        ),  # * is one segment
        ("old.io/**", "new.io/$1", "old.io/team/sub/app", "new.io/team/sub/app"),
        ("old.io/*/app-*", "new.io/$1/$2", "old.io/team/app-web", "new.io/team/web"),
        ("old.io/*", "new.io/$1", "older.io/x", None),
        ("a.io/x", "b.io/x", "a.io/x", "b.io/x"),
        ("a.io/x", "b.io/x", "a.io/xy", None),  # anchored
    ],
)
def test_alternative_globs(frm: str, to: str, name: str, expected: str | None) -> None:
    assert pol.Alternative(frm, to).apply(name) == expected


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"alternatives": [{"from": "a.io/*", "to": "b.io/$2"}]}, "capture"),
        ({"alternatives": [{"from": "", "to": "b.io/x"}]}, "required"),
    ],
)
def test_invalid_alternatives(spec: dict[str, Any], problem: str) -> None:
    _, problems = pol.parse(body(**spec))
    assert any(problem in p for p in problems), problems
