"""Planning as data: (failure, diagnosis, policy) in, plan out."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from pullmedic.core import planning
from pullmedic.core import policy as pol
from pullmedic.core.actions import ActionType as A
from pullmedic.core.actions import Failure, ObjectRef
from pullmedic.core.diagnosis import Cause, Diagnosis, Fix
from pullmedic.core.kubectl import command

NS = "team-a"
POD = ObjectRef("Pod", NS, "web-7d9c-abcde", "uid-1")
POD2 = ObjectRef("Pod", NS, "web-7d9c-fghij", "uid-2")
DEPLOY = ObjectRef("Deployment", NS, "web", "d-uid")


def failure(**kw: Any) -> Failure:
    base = Failure(
        pod=POD,
        container="app",
        container_kind="containers",
        container_index=0,
        image="docker.io/library/nginx:1.27.99",
        reason="ImagePullBackOff",
        service_account="default",
        workload=DEPLOY,
        workload_container_index=0,
        stuck_pods=(POD, POD2),
    )
    return replace(base, **kw)


def diag(cause: Cause, fix: Fix | None = None) -> Diagnosis:
    return Diagnosis(
        image="docker.io/library/nginx:1.27.99",
        cause=cause,
        confidence="high",
        summary="s",
        fix=fix,
    )


TAG_FIX = Fix(
    kind="tag",
    reason="highest patch",
    image="docker.io/library/nginx:1.27.3",
    digest="sha256:" + "a" * 64,
)
SECRET_FIX = Fix(kind="secret", reason="authenticates", secret="shared/regcred")
LOCAL_SECRET_FIX = Fix(kind="secret", reason="authenticates", secret=f"{NS}/regcred")


def policy(kind: str = "ClusterPullPolicy", **spec: Any) -> pol.Policy:
    meta: dict[str, Any] = {"name": "p"}
    if kind == "PullPolicy":
        meta["namespace"] = NS
    spec.setdefault("mode", "Remediate")
    p, problems = pol.parse({"kind": kind, "metadata": meta, "spec": spec})
    assert not problems
    return p


@pytest.mark.parametrize(
    ("f", "d", "p", "kw", "types", "apply"),
    [
        # bad tag on a Deployment: the template is patched; the rollout replaces the pods
        (failure(), diag(Cause.TagNotFound, TAG_FIX), policy(), {}, [A.PATCH_WORKLOAD_IMAGE], True),
        # Suggest mode computes the same fix but does not apply it
        (
            failure(),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(mode="Suggest"),
            {},
            [A.PATCH_WORKLOAD_IMAGE],
            False,
        ),
        # Observe: nothing is planned at all... but still no apply
        (
            failure(),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(mode="Observe"),
            {},
            [A.PATCH_WORKLOAD_IMAGE],
            False,
        ),
        # tag correction disabled
        (
            failure(),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(tagCorrection={"enabled": False}),
            {},
            [],
            False,
        ),
        # no verified fix -> nothing
        (failure(), diag(Cause.TagNotFound), policy(), {}, [], False),
        # StatefulSet: patch + recreate the stuck ordinal (rollouts wait on it forever)
        (
            failure(workload=ObjectRef("StatefulSet", NS, "db")),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(),
            {},
            [A.PATCH_WORKLOAD_IMAGE, A.RECREATE_PODS],
            True,
        ),
        # bare pod: its own image is patched
        (
            failure(workload=None, workload_container_index=None, stuck_pods=()),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(),
            {},
            [A.PATCH_POD_IMAGE],
            True,
        ),
        # CronJob-owned Job: the CronJob for next runs, the pods for this run
        (
            failure(workload=ObjectRef("CronJob", NS, "nightly"), job=ObjectRef("Job", NS, "n-1")),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(),
            {},
            [A.PATCH_WORKLOAD_IMAGE, A.PATCH_POD_IMAGE, A.PATCH_POD_IMAGE],
            True,
        ),
        # missing secret via ClusterPullPolicy: copy, attach, recreate
        (
            failure(),
            diag(Cause.AuthenticationRequired, SECRET_FIX),
            policy(),
            {},
            [A.COPY_SECRET, A.ATTACH_PULL_SECRET, A.RECREATE_PODS],
            True,
        ),
        # same-namespace secret: no copy
        (
            failure(),
            diag(Cause.CredentialsRejected, LOCAL_SECRET_FIX),
            policy("PullPolicy"),
            {},
            [A.ATTACH_PULL_SECRET, A.RECREATE_PODS],
            True,
        ),
        # the template names its own pull secrets: admission would ignore the SA's
        (
            failure(template_pull_secrets=("wrong",)),
            diag(Cause.CredentialsRejected, SECRET_FIX),
            policy(),
            {},
            [A.COPY_SECRET, A.ADD_TEMPLATE_PULL_SECRET],
            True,
        ),
        (
            failure(workload=ObjectRef("StatefulSet", NS, "db"), template_pull_secrets=("w",)),
            diag(Cause.CredentialsRejected, LOCAL_SECRET_FIX),
            policy("PullPolicy"),
            {},
            [A.ADD_TEMPLATE_PULL_SECRET, A.RECREATE_PODS],
            True,
        ),
        # ... but a template pullmedic does not patch: attaching would change nothing
        (
            failure(workload=ObjectRef("ReplicaSet", NS, "rs"), template_pull_secrets=("w",)),
            diag(Cause.CredentialsRejected, LOCAL_SECRET_FIX),
            policy("PullPolicy"),
            {},
            [],
            False,
        ),
        # a PullPolicy can never use another namespace's secret
        (
            failure(),
            diag(Cause.AuthenticationRequired, SECRET_FIX),
            policy("PullPolicy"),
            {},
            [],
            False,
        ),
        # bare pod with a credential cause: report only
        (
            failure(workload=None, workload_container_index=None),
            diag(Cause.AuthenticationRequired, SECRET_FIX),
            policy(),
            {},
            [],
            False,
        ),
        # unreachable with a verified mirror: switch
        (
            failure(),
            diag(Cause.RegistryUnreachable),
            policy(),
            {"mirror_image": "127.0.0.1:5001/library/nginx:1.27.99"},
            [A.PATCH_WORKLOAD_IMAGE],
            True,
        ),
        # unreachable without a verified mirror: nothing
        (failure(), diag(Cause.RegistryUnreachable), policy(), {}, [], False),
        # pullable now: recreate to skip the back-off
        (failure(), diag(Cause.ImageAvailable), policy(), {}, [A.RECREATE_PODS], True),
        # pull policy Never: the kubelet will not pull, so recreating is futile
        (failure(reason="ErrImageNeverPull"), diag(Cause.ImageAvailable), policy(), {}, [], False),
        # Not a pull failure (a runtime's own reason): a new pod would wait the same way.
        (
            failure(reason="RuntimeClassNotFound"),
            diag(Cause.ImageAvailable),
            policy(),
            {},
            [],
            False,
        ),
        # a moved repository: the same tag under the new name wins over another tag
        (
            failure(),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(),
            {
                "alternative": (
                    "docker.io/legacy/nginx:1.27.99",
                    "docker.io/library/* -> docker.io/legacy/$1",
                )
            },
            [A.PATCH_WORKLOAD_IMAGE],
            True,
        ),
        # a private image with a verified secret fix keeps the credential path
        (
            failure(),
            diag(Cause.NotFoundOrPrivate, SECRET_FIX),
            policy(),
            {"alternative": ("docker.io/legacy/nginx:1.27.99", "moved")},
            [A.COPY_SECRET, A.ATTACH_PULL_SECRET, A.RECREATE_PODS],
            True,
        ),
        # listed but not whole: recreating cannot help; a mirror with it whole can
        (failure(), diag(Cause.ImageIncomplete), policy(), {}, [], False),
        (
            failure(),
            diag(Cause.ImageIncomplete),
            policy(),
            {"mirror_image": "127.0.0.1:5001/library/nginx:1.27.99"},
            [A.PATCH_WORKLOAD_IMAGE],
            True,
        ),
        # pods of owners that do not recreate them equivalently are never deleted
        (
            failure(workload=ObjectRef("Job", NS, "once")),
            diag(Cause.ImageAvailable),
            policy(),
            {},
            [],
            False,
        ),
        (
            failure(workload=ObjectRef("TaskRun", NS, "build-1")),
            diag(Cause.AuthenticationRequired, LOCAL_SECRET_FIX),
            policy("PullPolicy"),
            {},
            [A.ATTACH_PULL_SECRET],
            True,
        ),
        # invalid reference never recovers
        (failure(), diag(Cause.InvalidReference), policy(), {}, [], False),
        # circuit breaker
        (failure(), diag(Cause.TagNotFound, TAG_FIX), policy(), {"circuit_open": True}, [], False),
        # rate limit -> suggest only
        (
            failure(),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(),
            {"rate_limited": True},
            [A.PATCH_WORKLOAD_IMAGE],
            False,
        ),
        # GitOps-managed -> suggest only, unless the policy allows direct patches
        (
            failure(workload_labels=(("app.kubernetes.io/managed-by", "argocd"),)),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(),
            {},
            [A.PATCH_WORKLOAD_IMAGE],
            False,
        ),
        (
            failure(workload_annotations=(("argocd.argoproj.io/tracking-id", "x"),)),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(gitops={"allowDirectPatch": True}),
            {},
            [A.PATCH_WORKLOAD_IMAGE],
            True,
        ),
        (
            failure(workload_labels=(("kustomize.toolkit.fluxcd.io/name", "apps"),)),
            diag(Cause.TagNotFound, TAG_FIX),
            policy(),
            {},
            [A.PATCH_WORKLOAD_IMAGE],
            False,
        ),
    ],
)
def test_plans(
    f: Failure, d: Diagnosis, p: pol.Policy, kw: dict[str, Any], types: list[A], apply: bool
) -> None:
    plan = planning.plan(f, d, p, **kw)
    assert [a.type for a in plan.actions] == types, plan.render()
    assert plan.apply is apply
    assert plan.render().startswith(str(f.workload or f.pod))


def test_no_policy_observes_only() -> None:
    plan = planning.plan(failure(), diag(Cause.TagNotFound, TAG_FIX), None)
    assert plan.actions == () and not plan.apply and plan.mode is pol.Mode.OBSERVE


def test_patch_paths_and_kubectl() -> None:
    plan = planning.plan(
        failure(container_kind="initContainers", workload_container_index=1),
        diag(Cause.TagNotFound, TAG_FIX),
        policy(),
    )
    (act,) = plan.actions
    assert act.container_path == "/spec/template/spec/initContainers/1/image"
    assert command(act).startswith("kubectl -n team-a patch deployment web --type=json")
    assert "nginx:1.27.3" in command(act)
    cron = planning.plan(
        failure(workload=ObjectRef("CronJob", NS, "n"), stuck_pods=(POD,)),
        diag(Cause.TagNotFound, TAG_FIX),
        policy(),
    )
    assert (
        cron.actions[0].container_path == "/spec/jobTemplate/spec/template/spec/containers/0/image"
    )
    assert cron.actions[1].container_path == "/spec/containers/0/image"


def test_template_secret_path_and_kubectl() -> None:
    plan = planning.plan(
        failure(template_pull_secrets=("wrong",)),
        diag(Cause.CredentialsRejected, LOCAL_SECRET_FIX),
        policy("PullPolicy"),
    )
    (act,) = plan.actions
    assert act.container_path == "/spec/template/spec/imagePullSecrets/-"
    assert '"name": "regcred"' in command(act)


def test_pin_digest() -> None:
    plan = planning.plan(
        failure(), diag(Cause.TagNotFound, TAG_FIX), policy(tagCorrection={"pinDigest": True})
    )
    assert plan.actions[0].new_image == f"{TAG_FIX.image}@{TAG_FIX.digest}"


@pytest.mark.parametrize("fix", [None, SECRET_FIX, LOCAL_SECRET_FIX])
def test_a_malformed_secret_is_named_and_never_replaced(fix: Fix | None) -> None:
    """Whatever the policy's candidates can do, a broken secret is reported, not swapped."""
    d = replace(diag(Cause.MalformedSecret, fix), details={"malformedSecrets": "team-a/broken"})
    plan = planning.plan(failure(), d, policy())
    assert plan.actions == () and not plan.apply and plan.suggestions == ()
    assert plan.note.startswith("fix pull secret team-a/broken: the kubelet cannot use it")
    assert (fix is not None) == (f"secret {fix.secret if fix else ''} grants pull" in plan.note)


def test_copied_secret_name() -> None:
    plan = planning.plan(failure(), diag(Cause.AuthenticationRequired, SECRET_FIX), policy())
    assert plan.actions[0].secret == "pullmedic.shared.regcred"
    assert plan.actions[1].secret == "pullmedic.shared.regcred"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("a-b", "c"), ("a", "b-c")),  # joined with "-", these used to be one copy
        (("team", "x-y"), ("team-x", "y")),
        (("ns", "r" * 250), ("ns", "r" * 249 + "s")),  # long names: distinct hashed tails
    ],
)
def test_copied_secret_names_never_collide(a: tuple[str, str], b: tuple[str, str]) -> None:
    na = planning.managed_secret_name(pol.SecretRef(*a))
    nb = planning.managed_secret_name(pol.SecretRef(*b))
    assert na != nb
    for n in (na, nb):
        assert len(n) <= 253
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", n)


@pytest.mark.parametrize("fix", [None, TAG_FIX])
def test_a_missing_digest_is_never_re_pinned(fix: Fix | None) -> None:
    """A pinned digest is exact content: no tag correction, only a suggestion in words."""
    pinned = "docker.io/library/nginx@sha256:" + "f" * 64
    p = planning.plan(failure(image=pinned), diag(Cause.DigestNotFound, fix), policy())
    assert p.actions == () and not p.apply and p.suggestions == ()
    assert p.note.startswith("a pinned digest is never re-pinned automatically")
    assert (TAG_FIX.image in p.note) is (fix is not None)


def test_a_moved_repository_keeps_the_digest() -> None:
    pinned = "docker.io/library/nginx@sha256:" + "f" * 64
    moved = "docker.io/legacy/nginx@sha256:" + "f" * 64
    p = planning.plan(
        failure(image=pinned),
        diag(Cause.DigestNotFound),
        policy(),
        alternative=(moved, "docker.io/library/* -> docker.io/legacy/$1"),
    )
    (a,) = p.actions
    assert a.new_image == moved


def test_a_moved_repository_keeps_the_tag_and_says_so() -> None:
    p = planning.plan(
        failure(),
        diag(Cause.RepositoryNotFound),
        policy(),
        alternative=(
            "docker.io/legacy/nginx:1.27.99",
            "docker.io/library/* -> docker.io/legacy/$1",
        ),
    )
    (a,) = p.actions
    assert a.new_image == "docker.io/legacy/nginx:1.27.99"
    assert p.note.startswith("repository moved (docker.io/library/* -> docker.io/legacy/$1)")
