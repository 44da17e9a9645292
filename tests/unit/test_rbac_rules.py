"""Every ClusterRole grant in manifests/ is justified by code that needs it, and nothing more.

``JUSTIFICATIONS`` maps each (apiGroup, resource, verb) the operator is granted to the
module and function that needs it, with text evidence (regular expressions) that must be
found in that module. The rendered ClusterRole must equal the table exactly, so:

- a new grant without a row here fails (no silent privilege creep);
- a row whose evidence disappears from the code fails (the code stopped needing it:
  drop the grant);
- a kopf handler kind that makes kopf write its own state onto an object fails unless
  the role lets kopf patch that object.

Rows for a planned module that does not exist yet are skipped (with the reason) until it
does; rows justified by kopf are checked against the installed kopf's source.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox import paths

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
RBAC_SOURCE = MANIFESTS / "base" / "rbac.yaml"
OPERATOR = REPO / "operator"

ACTUATOR = "pullmedic/kube/actuator.py"
PLANNING = "pullmedic/core/planning.py"
LOOKUPS = "pullmedic/kube/lookups.py"
KUBE = "pullmedic/kube/client.py"
KINDS = "pullmedic/core/kinds.py"
STATUS = "pullmedic/control/status.py"
ENGINE = "pullmedic/control/engine.py"
EVENTS = "pullmedic/kube/events.py"
HANDLERS = "pullmedic/app/handlers.py"
KOPF_OBSERVATION = "kopf/_core/reactor/observation.py"
KOPF_REFERENCES = "kopf/_cogs/structs/references.py"

# A kopf resource handler decorator whose arguments name the resource (plural, singular,
# kind or a short name; kopf accepts any of them).
_KOPF_DECORATOR = r"@kopf\.(?:on\.\w+|index|daemon|timer)\([^)]*?"


def kopf_handler_on(*names: str) -> str:
    alternatives = "|".join(re.escape(n) for n in names)
    return _KOPF_DECORATOR + rf"[\"'](?:[\w.]+/)?(?:{alternatives})[\"']"


@dataclass(frozen=True)
class Need:
    """Who needs a grant: ``where`` for humans, ``evidence`` as (module, regex) pairs."""

    where: str
    evidence: tuple[tuple[str, str], ...]


def need(where: str, *evidence: tuple[str, str]) -> Need:
    return Need(where, evidence)


PODWATCH = "pullmedic/kube/podwatch.py"
PODS_LIST = (PODWATCH, r"await self\.source\.list_page\(")
PODS_WATCH = (PODWATCH, r"watch=\"true\"")
PODS_PATH = (PODWATCH, r"PODS = \"/api/v1/pods\"")
NAMESPACES_WATCH = (HANDLERS, kopf_handler_on("namespaces", "namespace", "Namespace"))
GET_CALL = (KUBE, r"await self\.request\(\"GET\", path_of\(kind")
PATCH_CALL = (KUBE, r"\"PATCH\", path_of\(kind, ns, name\), ops, \"application/json-patch\+json\"")
KOPF_USED = (HANDLERS, r"^import kopf|^from kopf\b")


def _row(kind: str, fact: str) -> str:
    """A pattern for ``fact`` in ``kind``'s row of the table of kinds."""
    return rf"Kind\(\s*\"{kind}\",(?:(?!Kind\()[\s\S])*?{re.escape(fact)}"


def _path(kind: str, path: str) -> tuple[str, str]:
    """Evidence that requests for ``kind`` go to ``path``: its row in the table of kinds
    (group/version and plural), checked here against the paths the client really builds."""
    from pullmedic.kube.client import PATHS

    assert PATHS[kind] == path, (kind, PATHS[kind], path)
    m = re.fullmatch(r"/apis?/(.+?)(?:/namespaces/\{ns\})?/(\w+)/\{name\}", path)
    assert m is not None, path
    version, plural = m.groups()
    return (KINDS, rf"Kind\(\s*\"{kind}\",\s*\"{re.escape(version)}\",\s*\"{plural}\"")


def _workload(kind: str, path: str, owner_walk: str) -> dict[str, Need]:
    return {
        "get": need(
            f"lookups.Lookups.owner_chain, actuator.Actuator._patch_image/record: get {kind}",
            (LOOKUPS, owner_walk),
            _path(kind, path),
            GET_CALL,
        ),
        "patch": need(
            f"actuator.Actuator._patch_image (PATCH_WORKLOAD_IMAGE) on the {kind} template",
            _path(kind, path),
            (KINDS, _row(kind, "template_fix=True")),  # planning.TEMPLATE_PATHS
            (PLANNING, r"ActionType\.PATCH_WORKLOAD_IMAGE"),
            (ACTUATOR, r"ActionType\.PATCH_WORKLOAD_IMAGE"),
            PATCH_CALL,
        ),
    }


_APPS_WALK = r"if kind in TEMPLATE_FIX:.*\s+obj = await self\.kube\.get\(kind"
_DEPLOY = _workload("Deployment", "/apis/apps/v1/namespaces/{ns}/deployments/{name}", _APPS_WALK)
_STS = _workload("StatefulSet", "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}", _APPS_WALK)
_DS = _workload("DaemonSet", "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}", _APPS_WALK)
_CRON = _workload(
    "CronJob",
    "/apis/batch/v1/namespaces/{ns}/cronjobs/{name}",
    r"self\.kube\.get\(\"CronJob\"",
)


def _policy_watch(plural: str) -> Need:
    return need(
        f"handlers.build_registry policy_event: kopf.on.event list+watch of {plural}",
        (HANDLERS, rf"[\"']{plural}[\"']"),
        (HANDLERS, r"@kopf\.on\.event\("),
        (STATUS, r"async def on_policy\("),
    )


JUSTIFICATIONS: dict[tuple[str, str, str], Need] = {
    # --- pods -----------------------------------------------------------------------
    ("", "pods", "get"): need(
        "kube.RestKube.get: re-read a pod before patching its image",
        _path("Pod", "/api/v1/namespaces/{ns}/pods/{name}"),
        GET_CALL,
    ),
    ("", "pods", "list"): need("podwatch.PodWatch.relist: list every pod", PODS_LIST, PODS_PATH),
    ("", "pods", "watch"): need(
        "podwatch.PodWatch.watch_once: watch every pod", PODS_WATCH, PODS_PATH
    ),
    ("", "pods", "patch"): need(
        "actuator.Actuator._patch_image (PATCH_POD_IMAGE): bare pods, Job/CronJob pods",
        (PLANNING, r"ActionType\.PATCH_POD_IMAGE"),
        (ACTUATOR, r"ActionType\.PATCH_POD_IMAGE"),
        PATCH_CALL,
    ),
    ("", "pods", "delete"): need(
        "actuator.Actuator._recreate (RECREATE_PODS): stuck controller-owned pods",
        (ACTUATOR, r"self\.kube\.delete\(\"Pod\""),
        (KUBE, r"await self\.request\(\"DELETE\", path_of\(kind, ns, name\)"),
    ),
    # --- namespaces (ClusterPullPolicy namespaceSelector) ----------------------------
    ("", "namespaces", "list"): need(
        "handlers.build_registry namespace_event (kopf list)", NAMESPACES_WATCH
    ),
    ("", "namespaces", "watch"): need(
        "handlers.build_registry namespace_event (kopf watch)", NAMESPACES_WATCH
    ),
    # --- nodes: the platform the kubelet pulls for ------------------------------------
    ("", "nodes", "get"): need(
        "lookups.Lookups.node: node os/arch labels and the images it holds",
        (LOOKUPS, r"self\.kube\.get\(\"Node\", \"\", name\)"),
        (LOOKUPS, r"kubernetes\.io/arch"),
        _path("Node", "/api/v1/nodes/{name}"),
    ),
    # --- owner chain (read only) ------------------------------------------------------
    ("apps", "replicasets", "get"): need(
        "lookups.Lookups.owner_chain: Pod -> ReplicaSet -> Deployment",
        (LOOKUPS, r"self\.kube\.get\(\"ReplicaSet\""),
        _path("ReplicaSet", "/apis/apps/v1/namespaces/{ns}/replicasets/{name}"),
    ),
    ("batch", "jobs", "get"): need(
        "lookups.Lookups.owner_chain: Pod -> Job -> CronJob",
        (LOOKUPS, r"self\.kube\.get\(\"Job\""),
        _path("Job", "/apis/batch/v1/namespaces/{ns}/jobs/{name}"),
    ),
    # --- workload templates -------------------------------------------------------------
    ("apps", "deployments", "get"): _DEPLOY["get"],
    ("apps", "deployments", "patch"): _DEPLOY["patch"],
    ("apps", "statefulsets", "get"): _STS["get"],
    ("apps", "statefulsets", "patch"): _STS["patch"],
    ("apps", "daemonsets", "get"): _DS["get"],
    ("apps", "daemonsets", "patch"): _DS["patch"],
    ("batch", "cronjobs", "get"): _CRON["get"],
    ("batch", "cronjobs", "patch"): _CRON["patch"],
    # --- audit: list workload templates ----------------------------------------------
    **{
        (group, plural, "list"): need(
            f"audit.Auditor.workloads: list {plural} to check their images",
            ("pullmedic/control/audit.py", r"await self\.kube\.list\(kind"),
            ("pullmedic/control/audit.py", r"AUDITED_KINDS = tuple\(COLLECTIONS\)"),
            (KUBE, r"COLLECTIONS = \{name: .* for name in AUDITED\}"),
            (KINDS, rf"Kind\(\s*\"{kind}\",\s*\"{group}/v1\",\s*\"{plural}\""),
            (KINDS, _row(kind, "audited=True")),
        )
        for kind, group, plural in (
            ("Deployment", "apps", "deployments"),
            ("StatefulSet", "apps", "statefulsets"),
            ("DaemonSet", "apps", "daemonsets"),
            ("CronJob", "batch", "cronjobs"),
        )
    },
    # --- pull secrets on ServiceAccounts ---------------------------------------------
    ("", "serviceaccounts", "get"): need(
        "actuator.Actuator._attach: read the pod's ServiceAccount",
        (ACTUATOR, r"self\.kube\.get\(\"ServiceAccount\""),
    ),
    ("", "serviceaccounts", "patch"): need(
        "actuator.Actuator._attach (ATTACH_PULL_SECRET): append imagePullSecrets",
        (ACTUATOR, r"json_patch\(\s*\"ServiceAccount\""),
        (ACTUATOR, r"/imagePullSecrets"),
    ),
    ("", "serviceaccounts/token", "create"): need(
        "serviceaccounts.KubeServiceAccounts.token: KEP-4412 token mode mints the pod's "
        "ServiceAccount token for a token-mode credential provider",
        ("pullmedic/kube/serviceaccounts.py", r"await self\.kube\.create_token\("),
        (KUBE, r"path_of\(\"ServiceAccount\", ns, service_account\) \+ \"/token\""),
        (KUBE, r"await self\.request\(\"POST\", path, dict\(request\)"),
        ("pullmedic/probe/plugins.py", r"token_mode\("),
    ),
    # --- secrets: by name only ----------------------------------------------------------
    ("", "secrets", "get"): need(
        "lookups.Lookups.secret (pod's own and candidate pull secrets); _copy_secret",
        (LOOKUPS, r"self\.kube\.get\(\"Secret\""),
        (ACTUATOR, r"self\.kube\.get\(\"Secret\""),
    ),
    ("", "secrets", "create"): need(
        "actuator.Actuator._copy_secret: POST the managed copy",
        (ACTUATOR, r"self\.kube\.create\(\"Secret\", a\.target\.namespace"),
        (KUBE, r"await self\.request\(\"POST\", path_of\(kind, ns\)"),
    ),
    ("", "secrets", "patch"): need(
        "actuator.Actuator._copy_secret: refresh a managed copy",
        (ACTUATOR, r"json_patch\(\s*\"Secret\""),
        (PLANNING, r"MANAGED_SECRET_LABEL"),
    ),
    # --- events -------------------------------------------------------------------------
    ("", "events", "create"): need(
        "events.post: POST a new core/v1 Event",
        (EVENTS, r"kube\.create\(\"Event\", ns, body\)"),
        _path("Event", "/api/v1/namespaces/{ns}/events/{name}"),
    ),
    # --- pullmedic.dev policies ------------------------------------------------------
    ("pullmedic.dev", "pullpolicies", "list"): _policy_watch("pullpolicies"),
    ("pullmedic.dev", "pullpolicies", "watch"): _policy_watch("pullpolicies"),
    ("pullmedic.dev", "clusterpullpolicies", "list"): _policy_watch("clusterpullpolicies"),
    ("pullmedic.dev", "clusterpullpolicies", "watch"): _policy_watch("clusterpullpolicies"),
    ("pullmedic.dev", "pullpolicies/status", "patch"): need(
        "status.PolicyStatus.write (namespaced)",
        _path("PullPolicy", "/apis/pullmedic.dev/v1alpha1/namespaces/{ns}/pullpolicies/{name}"),
        (STATUS, r"self\.kube\.patch_status\(kind"),
        (KUBE, r"path_of\(kind, ns, name\) \+ \"/status\""),
    ),
    ("pullmedic.dev", "clusterpullpolicies/status", "patch"): need(
        "status.PolicyStatus.write (cluster-scoped)",
        _path("ClusterPullPolicy", "/apis/pullmedic.dev/v1alpha1/clusterpullpolicies/{name}"),
        (STATUS, r"\"ClusterPullPolicy\" if p\.is_cluster"),
        (KUBE, r"path_of\(kind, ns, name\) \+ \"/status\""),
    ),
    # --- kopf itself ----------------------------------------------------------------------
    **{
        ("apiextensions.k8s.io", "customresourcedefinitions", verb): need(
            f"kopf resource_observer: {verb} CRDs to re-scan the API when CRDs change",
            KOPF_USED,
            (
                KOPF_REFERENCES,
                r"CRDS = Selector\('apiextensions\.k8s\.io', 'customresourcedefinitions'\)",
            ),
            (KOPF_OBSERVATION, r"wait_for\(references\.CRDS\)"),
            (KOPF_OBSERVATION, r"await queueing\.watcher\("),
        )
        for verb in ("list", "watch")
    },
}


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def kubectl_binary() -> str:
    """kubectl v1.36 built from the pinned module, like the rest of the sandbox."""
    return str(paths.binary("kubectl"))


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [kubectl_binary(), "kustomize", str(MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects_of(kind: str) -> list[dict[str, Any]]:
    return [d for d in rendered() if d["kind"] == kind]


def cluster_role() -> dict[str, Any]:
    roles = objects_of("ClusterRole")
    assert len(roles) == 1, "exactly one ClusterRole expected"
    return roles[0]


def granted() -> set[tuple[str, str, str]]:
    grants: set[tuple[str, str, str]] = set()
    for rule in cluster_role()["rules"]:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule["verbs"]:
                    grants.add((group, resource, verb))
    return grants


def module_text(module: str) -> str | None:
    """Text of a module (globs concatenated), or None if it does not exist (yet)."""
    if module.startswith("kopf/"):
        import kopf

        base = Path(kopf.__file__).resolve().parent.parent
    else:
        base = OPERATOR
    if "*" in module:
        files = sorted(base.glob(module))
        return "\n".join(f.read_text() for f in files) if files else None
    path = base / module
    return path.read_text() if path.exists() else None


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


def test_clusterrole_grants_exactly_the_justified_set() -> None:
    have = granted()
    want = set(JUSTIFICATIONS)
    extra = sorted(have - want)
    missing = sorted(want - have)
    assert not extra, f"grants with no justification in JUSTIFICATIONS: {extra}"
    assert not missing, f"justified grants missing from the ClusterRole: {missing}"


def test_rules_are_plain_and_narrow() -> None:
    for rule in cluster_role()["rules"]:
        assert "nonResourceURLs" not in rule, rule
        assert "resourceNames" not in rule, rule
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), f"wildcard {key} in {rule}"
    verbs = {verb for _, _, verb in granted()}
    assert verbs <= {"get", "list", "watch", "create", "patch", "delete"}, verbs
    assert not {"update", "deletecollection", "escalate", "bind", "impersonate"} & verbs


def test_no_secret_enumeration() -> None:
    secret_verbs = {verb for group, res, verb in granted() if group == "" and res == "secrets"}
    assert secret_verbs == {"get", "create", "patch"}


LEADERSHIP = "pullmedic/kube/leadership.py"
ROLE_JUSTIFICATIONS: dict[tuple[str, str, str], Need] = {
    ("coordination.k8s.io", "leases", verb): need(
        f"leadership.LeaseElector: {verb} the Lease (--leader-elect)",
        (LEADERSHIP, pattern),
        _path("Lease", "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}"),
    )
    for verb, pattern in (
        ("get", r"self\.kube\.get\(\"Lease\""),
        ("create", r"self\.kube\.create\(\"Lease\""),
        ("patch", r"self\.kube\.json_patch\(\"Lease\""),
    )
}


def test_the_leader_election_role_is_namespaced_and_justified() -> None:
    (role,) = objects_of("Role")
    assert role["metadata"]["namespace"] == "pullmedic-system"
    have = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert have == set(ROLE_JUSTIFICATIONS)
    for grant, justification in ROLE_JUSTIFICATIONS.items():
        for module, pattern in justification.evidence:
            text = module_text(module) or ""
            folded = re.sub(r"\(\s+", "(", re.sub(r"\s+", " ", text))
            assert re.search(pattern, text) or re.search(pattern, folded), (grant, pattern)
    (rb,) = objects_of("RoleBinding")
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert rb["subjects"] == [
        {"kind": "ServiceAccount", "name": "pullmedic", "namespace": "pullmedic-system"}
    ]


def test_only_one_cluster_role_bound_to_the_operator_service_account() -> None:
    (binding,) = objects_of("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role()["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pullmedic", "namespace": "pullmedic-system"}
    ]
    (deployment,) = objects_of("Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "pullmedic"


def test_every_rule_has_a_comment_above_it() -> None:
    lines = RBAC_SOURCE.read_text().splitlines()
    rule_lines = [i for i, line in enumerate(lines) if re.match(r"^  - apiGroups:", line)]
    assert rule_lines, "no rules found in rbac.yaml"
    for i in rule_lines:
        assert lines[i - 1].lstrip().startswith("#"), (
            f"rbac.yaml line {i + 1}: rule without a comment directly above it"
        )


@pytest.mark.parametrize(
    "grant", sorted(JUSTIFICATIONS), ids=lambda g: f"{g[0] or 'core'}:{g[1]}:{g[2]}"
)
def test_grant_is_needed_by_the_code(grant: tuple[str, str, str]) -> None:
    justification = JUSTIFICATIONS[grant]
    for module, pattern in justification.evidence:
        text = module_text(module)
        if text is None:
            if module.startswith("kopf/"):
                pytest.fail(f"{module} not found in the installed kopf: re-check {grant}")
            pytest.fail(f"{module} not found; needed for {justification.where}")
        # The formatter wraps calls freely: compare with whitespace folded.
        folded = re.sub(r"\(\s+", "(", re.sub(r"\s+", " ", text))
        assert re.search(pattern, text, re.MULTILINE) or re.search(pattern, folded), (
            f"{grant} is justified by {justification.where!r}, but {module} no longer "
            f"matches {pattern!r}: drop the grant or update the justification"
        )


# kopf handler kinds that write kopf's own state (progress/diff-base annotations or a
# finalizer) onto the handled object itself, needing `patch` on the main resource.
_STATEFUL_KOPF = re.compile(
    r"@kopf\.(on\.(?:create|update|resume|delete|field)|daemon|timer)\(([^)]*)\)", re.S
)
_RESOURCES = {
    ("", "pods"): ("pods", "pod", "Pod"),
    ("", "namespaces"): ("namespaces", "namespace", "Namespace"),
    ("pullmedic.dev", "pullpolicies"): ("pullpolicies", "pullpolicy", "PullPolicy"),
    ("pullmedic.dev", "clusterpullpolicies"): (
        "clusterpullpolicies",
        "clusterpullpolicy",
        "ClusterPullPolicy",
    ),
}


# kopf decorators that keep no state on the objects they handle (no annotations, no
# finalizers): everything else needs patch on its resource.
_STATELESS_KOPF = frozenset({"on.event", "on.login", "on.startup", "on.cleanup", "on.probe"})
_ANY_KOPF = re.compile(r"@kopf\.([\w.]+)\(")


def kopf_state_problems(text: str, have: set[tuple[str, str, str]]) -> list[str]:
    """What a module's stateful kopf handlers would write that the role does not allow."""
    problems = []
    for m in _STATEFUL_KOPF.finditer(text):
        decorator, args = m.group(1), m.group(2)
        matched = False
        for (group, plural), names in _RESOURCES.items():
            if re.search(rf"[\"'](?:[\w.]+/)?(?:{'|'.join(names)})[\"']", args):
                matched = True
                if (group, plural, "patch") not in have:
                    problems.append(
                        f"@kopf.{decorator} on {plural} makes kopf patch kopf.zalando.org/* "
                        f"annotations or a finalizer onto every {plural} object: grant patch "
                        f"on {plural} (with a justification row) or use kopf.on.event"
                    )
        if not matched:
            problems.append(
                f"@kopf.{decorator}({args.strip()}) writes kopf state onto the objects it "
                "handles; name the resource literally so this test can check the role"
            )
    return problems


def test_kopf_handler_kinds_fit_the_granted_verbs() -> None:
    text = module_text(HANDLERS)
    assert text is not None, f"{HANDLERS} is where the kopf handlers are registered"
    decorators = _ANY_KOPF.findall(text)
    assert "on.event" in decorators  # the check below reads the real registrations
    unknown = {d for d in decorators if d not in _STATELESS_KOPF} - {
        m.group(1) for m in _STATEFUL_KOPF.finditer(text)
    }
    assert not unknown, f"kopf decorators this test does not classify: {unknown}"
    assert kopf_state_problems(text, granted()) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ('@kopf.on.update("v1", "pods")\ndef f(): ...', "onto every pods object"),
        ('@kopf.timer("pullmedic.dev", "v1alpha1", "pullpolicies", interval=1)', "pullpolicies"),
        ("@kopf.daemon(GROUP, VERSION, plural)", "name the resource literally"),
        ('@kopf.on.event("v1", "pods")', ""),
    ],
)
def test_the_kopf_state_check_catches_a_stateful_handler(source: str, found: str) -> None:
    """The check above can fail: a stateful handler on a resource without patch, or on a
    resource it cannot name, is reported; a stateless one is not."""
    problems = kopf_state_problems(source, {("", "namespaces", "patch")})
    if found:
        assert problems and found in problems[0]
    else:
        assert problems == []
