"""Admission decisions as a table, and the webhook's request handling through the fake
KubeApi: budgets, protected namespaces, the credentials a pod will really have."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from pullmedic.admission.webhook import AdmissionWebhook, WebhookSettings
from pullmedic.core.admission import (
    ORIGINAL_IMAGES,
    Checked,
    decide,
    pod_spec_of,
    to_check,
)
from pullmedic.core.diagnosis import Cause, Diagnosis, Fix
from pullmedic.core.inventory import Inventory
from pullmedic.core.policy import AdmissionMode as M
from pullmedic.core.policy import parse
from pullmedic.kube.lookups import Lookups
from tests.unit.fakekube import FakeKube, FakeProber

IMG = "registry.example.com/app:1.4.3"
MIRROR = "mirror.example.com/app:1.4.3"


def d(cause: Cause, confidence: str = "high", fix: Fix | None = None) -> Diagnosis:
    return Diagnosis(IMG, cause, confidence, f"{cause} summary.", fix=fix)  # type: ignore[arg-type]


def deployment(image: str = IMG, **meta: Any) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "web", **meta},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            }
        },
    }


VIEW = pod_spec_of(deployment())
assert VIEW is not None
C = VIEW.containers[0]
TAG_FIX = Fix(kind="tag", reason="highest patch of 1.4", image="registry.example.com/app:1.4.2")


@pytest.mark.parametrize(
    ("mode", "diag", "mirror", "allowed", "warned", "patched"),
    [
        (M.OFF, d(Cause.TagNotFound), None, True, False, False),
        (M.WARN, d(Cause.ImageAvailable), None, True, False, False),
        (M.WARN, d(Cause.TagNotFound, fix=TAG_FIX), None, True, True, False),
        (M.DENY, d(Cause.TagNotFound), None, False, True, False),
        (M.DENY, d(Cause.InvalidReference), None, False, True, False),
        (M.DENY, d(Cause.DigestNotFound), None, False, True, False),
        (M.DENY, d(Cause.DigestNotFound, "medium"), None, True, True, False),
        # uncertain: admitted with a warning
        (M.DENY, d(Cause.TagNotFound, "medium"), None, True, True, False),
        (M.DENY, d(Cause.NotFoundOrPrivate), None, True, True, False),
        (M.DENY, d(Cause.RegistryUnreachable), None, True, True, False),
        (M.DENY, None, None, True, True, False),  # not known within the budget
        # mutate only to a verified mirror, only for causes a copy fixes; never a tag change
        (M.MUTATE, d(Cause.RegistryUnreachable), MIRROR, True, True, True),
        (M.MUTATE, d(Cause.RateLimited), MIRROR, True, True, True),
        (M.MUTATE, d(Cause.RegistryUnreachable), None, True, True, False),
        (M.MUTATE, d(Cause.TagNotFound, fix=TAG_FIX), MIRROR, True, True, False),
    ],
)
def test_decide(
    mode: M, diag: Diagnosis | None, mirror: str | None, allowed: bool, warned: bool, patched: bool
) -> None:
    a = decide(VIEW, [Checked(C, diag, mode, mirror)])
    assert a.allowed is allowed
    assert bool(a.warnings) is warned
    assert bool(a.patch) is patched
    assert all(w.endswith("(pullmedic)") and len(w) <= 512 for w in a.warnings)


def test_warning_names_the_image_and_the_fix() -> None:
    a = decide(VIEW, [Checked(C, d(Cause.TagNotFound, fix=TAG_FIX), M.WARN)])
    (w,) = a.warnings
    assert IMG in w and "registry.example.com/app:1.4.2 exists (highest patch of 1.4)" in w


def test_mutation_tests_the_old_image_and_records_it() -> None:
    a = decide(VIEW, [Checked(C, d(Cause.RegistryUnreachable), M.MUTATE, MIRROR)])
    ops = list(a.patch)
    assert ops[0] == {"op": "test", "path": "/spec/template/spec/containers/0/image", "value": IMG}
    assert ops[1]["value"] == MIRROR
    assert ops[2]["path"] == "/metadata/annotations"
    assert json.loads(ops[2]["value"][ORIGINAL_IMAGES]) == {"containers/app": IMG}
    resp = a.response("u")
    assert resp["patchType"] == "JSONPatch" and json.loads(base64.b64decode(resp["patch"])) == ops


@pytest.mark.parametrize(
    ("kind", "pointer"),
    [
        ("Pod", "/spec"),
        ("Deployment", "/spec/template/spec"),
        ("Job", "/spec/template/spec"),
        ("CronJob", "/spec/jobTemplate/spec/template/spec"),
    ],
)
def test_pod_spec_of_each_kind(kind: str, pointer: str) -> None:
    spec = {
        "containers": [{"name": "a", "image": IMG}],
        "initContainers": [{"name": "i", "image": "x"}],
    }
    obj: dict[str, Any] = {"kind": kind, "metadata": {"name": "o"}}
    cur = obj
    parts = pointer.strip("/").split("/")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = spec
    view = pod_spec_of(obj)
    assert view is not None and view.pointer == pointer
    assert [(c.field, c.image) for c in view.containers] == [
        ("initContainers", "x"),
        ("containers", IMG),
    ]


def test_updates_check_only_what_changed() -> None:
    old = pod_spec_of(deployment("registry.example.com/app:1.4.2"))
    new = pod_spec_of(deployment(IMG))
    same = pod_spec_of(deployment("registry.example.com/app:1.4.2"))
    assert new is not None and same is not None
    assert [c.image for c in to_check(new, old)] == [IMG]
    assert to_check(same, old) == []
    with_secret = pod_spec_of(deployment("registry.example.com/app:1.4.2"))
    assert with_secret is not None
    with_secret.spec["imagePullSecrets"] = [{"name": "regcred"}]  # type: ignore[index]
    assert [c.image for c in to_check(with_secret, old)] == ["registry.example.com/app:1.4.2"]


# ---- the webhook's handling -------------------------------------------------------------


def review(
    obj: dict[str, Any], ns: str = "team-a", old: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "namespace": ns,
            "operation": "UPDATE" if old else "CREATE",
            "object": obj,
            "oldObject": old,
        },
    }


def hook(
    mode: str, prober: FakeProber, kube: FakeKube | None = None, budget: float = 0.2
) -> AdmissionWebhook:
    kube = kube or FakeKube()
    inv = Inventory()
    inv.namespaces["team-a"] = {}
    policy, problems = parse(
        {
            "kind": "ClusterPullPolicy",
            "metadata": {"name": "p"},
            "spec": {"selector": {"namespaces": ["team-a"]}, "admission": {"mode": mode}},
        }
    )
    assert not problems
    inv.policies[policy.key] = policy
    return AdmissionWebhook(
        prober,
        inv,
        Lookups(kube, "linux/amd64"),
        WebhookSettings(budget=budget, operator_namespace="pullmedic-system"),
    )


async def test_a_typo_is_refused_in_deny_mode() -> None:
    h = hook("Deny", FakeProber({IMG: d(Cause.TagNotFound, fix=TAG_FIX)}))
    out = (await h.review(review(deployment())))["response"]
    assert out["uid"] == "u-1" and out["allowed"] is False
    assert "1.4.2 exists" in out["status"]["message"]


async def test_a_slow_registry_admits_within_the_budget_and_finishes_in_the_background() -> None:
    prober = FakeProber({IMG: d(Cause.TagNotFound)}, hang=asyncio.Event())
    h = hook("Deny", prober, budget=0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = (await h.review(review(deployment())))["response"]
    assert loop.time() - t0 < 0.5
    assert out["allowed"] is True and "could not be checked in time" in out["warnings"][0]
    assert len(h._background) == 1  # still probing: the next request answers from cache
    prober.hang.set()  # type: ignore[union-attr]
    await asyncio.sleep(0.01)
    assert not h._background


@pytest.mark.parametrize(
    ("ns", "labels"),
    [
        ("kube-system", {}),
        ("pullmedic-system", {}),
        ("team-a", {"app.kubernetes.io/name": "pullmedic"}),
    ],
)
async def test_never_intercepts_the_system_or_itself(ns: str, labels: dict[str, str]) -> None:
    prober = FakeProber({IMG: d(Cause.TagNotFound)})
    h = hook("Deny", prober)
    out = (await h.review(review(deployment(labels=labels), ns=ns)))["response"]
    assert out == {"uid": "u-1", "allowed": True}
    assert prober.asked == []


async def test_credentials_are_the_service_accounts_when_the_pod_lists_none() -> None:
    kube = FakeKube()
    kube.put(
        {
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": "team-a"},
            "imagePullSecrets": [{"name": "sa-cred"}],
        }
    )
    secret = json.dumps(
        {"auths": {"registry.example.com": {"auth": base64.b64encode(b"u:p").decode()}}}
    )
    kube.put(
        {
            "kind": "Secret",
            "metadata": {"name": "sa-cred", "namespace": "team-a"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(secret.encode()).decode()},
        }
    )
    seen: list[Any] = []

    class Recording(FakeProber):
        async def diagnose(self, image: str, *args: Any, **kw: Any) -> Diagnosis:
            seen.append(args[0])  # the keyring
            return await super().diagnose(image, *args, **kw)

    h = hook("Warn", Recording({IMG: d(Cause.ImageAvailable)}), kube)
    out = (await h.review(review(deployment())))["response"]
    assert out["allowed"] is True and "warnings" not in out
    assert [len(k) for k in seen] == [1]  # the ServiceAccount's secret, as admission injects it
    assert not kube.writes  # an admission review never writes


async def test_an_unchanged_update_costs_no_probe() -> None:
    prober = FakeProber({IMG: d(Cause.TagNotFound)})
    h = hook("Deny", prober)
    out = (await h.review(review(deployment(), old=deployment())))["response"]
    assert out["allowed"] is True and prober.asked == []


async def test_bad_input_admits() -> None:
    h = hook("Deny", FakeProber({}))
    out = (
        await h.review(
            {
                "request": {
                    "uid": "x",
                    "namespace": "team-a",
                    "object": {"kind": "Deployment", "spec": "nonsense"},
                }
            }
        )
    )["response"]
    assert out["allowed"] is True
    broken = (
        await h.review(
            {"request": {"uid": "y", "namespace": "team-a", "object": deployment("a b c")}}
        )
    )["response"]
    assert broken["allowed"] is True  # the prober raised (unknown image): never block on our bug


async def test_the_pod_to_be_runs_as_its_service_account() -> None:
    """A token-mode credential provider (KEP-4412) gets the ServiceAccount the pod will
    run as; the pod has no uid yet, so the token is not bound to it."""
    from pullmedic.core.tokenmode import PodIdentity

    seen: list[Any] = []

    class Recording(FakeProber):
        async def diagnose(self, image: str, *args: Any, **kw: Any) -> Diagnosis:
            seen.append(kw.get("pod"))
            return await super().diagnose(image, *args, **kw)

    h = hook("Warn", Recording({IMG: d(Cause.ImageAvailable)}))
    await h.review(review(deployment()))
    (pod,) = seen
    assert isinstance(pod, PodIdentity)
    assert (pod.namespace, pod.service_account, pod.pod_uid) == ("team-a", "default", "")
