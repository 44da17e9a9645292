"""The one rendering of an action as a kubectl command, for each kind of action."""

from __future__ import annotations

import pytest

from pullmedic.core.actions import Action, ActionType, ObjectRef
from pullmedic.core.kubectl import command
from pullmedic.core.policy import SecretRef

NS = "team-a"
DEPLOY = ObjectRef("Deployment", NS, "web")
POD = ObjectRef("Pod", NS, "web-1")
CASES: list[tuple[str, Action, str]] = [
    (
        "workload image",
        Action(
            ActionType.PATCH_WORKLOAD_IMAGE,
            DEPLOY,
            "",
            container_path="/spec/template/spec/containers/0/image",
            new_image="nginx:1.27.3",
        ),
        "kubectl -n team-a patch deployment web --type=json -p "
        '\'[{"op": "replace", "path": "/spec/template/spec/containers/0/image", '
        '"value": "nginx:1.27.3"}]\'',
    ),
    (
        "pod image",
        Action(
            ActionType.PATCH_POD_IMAGE,
            POD,
            "",
            container_path="/spec/initContainers/1/image",
            new_image="a:1",
        ),
        "kubectl -n team-a patch pod web-1 --type=json -p "
        '\'[{"op": "replace", "path": "/spec/initContainers/1/image", "value": "a:1"}]\'',
    ),
    (
        "copy secret",
        Action(
            ActionType.COPY_SECRET,
            ObjectRef("Secret", NS, "pullmedic.shared.regcred"),
            "",
            source=SecretRef("shared", "regcred"),
            secret="pullmedic.shared.regcred",
        ),
        "kubectl -n shared get secret regcred -o json | "
        'jq \'.metadata={name:"pullmedic.shared.regcred",namespace:"team-a"}\' | '
        "kubectl apply -f -",
    ),
    (
        "template pull secret",
        Action(
            ActionType.ADD_TEMPLATE_PULL_SECRET,
            ObjectRef("StatefulSet", NS, "db"),
            "",
            container_path="/spec/template/spec/imagePullSecrets/-",
            secret="regcred",
        ),
        "kubectl -n team-a patch statefulset db --type=json -p "
        '\'[{"op": "add", "path": "/spec/template/spec/imagePullSecrets/-", '
        '"value": {"name": "regcred"}}]\'',
    ),
    (
        "service account pull secret",
        Action(
            ActionType.ATTACH_PULL_SECRET,
            ObjectRef("ServiceAccount", NS, "default"),
            "",
            secret="regcred",
        ),
        "kubectl -n team-a patch serviceaccount default --type=strategic "
        '-p \'{"imagePullSecrets": [{"name": "regcred"}]}\'',
    ),
    (
        "recreate",
        Action(
            ActionType.RECREATE_PODS,
            ObjectRef("Pod", NS, "*"),
            "",
            pods=(POD, ObjectRef("Pod", NS, "web-2")),
        ),
        "kubectl -n team-a delete pod web-1 web-2",
    ),
    ("report", Action(ActionType.REPORT, POD, "nothing to run"), ""),
    (
        "copy without a source",
        Action(ActionType.COPY_SECRET, ObjectRef("Secret", NS, "x"), "", secret="x"),
        "",
    ),
]


@pytest.mark.parametrize(("name", "action", "expected"), CASES, ids=[c[0] for c in CASES])
def test_command(name: str, action: Action, expected: str) -> None:
    assert command(action) == expected
