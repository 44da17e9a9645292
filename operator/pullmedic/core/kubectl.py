"""The ``kubectl`` command a human could run instead of an action.

One rendering for every place that prints one: Suggest mode's Events and status (through
the plan's suggestions) and ``pullmedic explain``, so they never disagree.
"""

from __future__ import annotations

import json
import shlex

from pullmedic.core.actions import Action, ActionType
from pullmedic.core.kinds import kubectl_name


def command(action: Action) -> str:
    """The command for ``action``; "" for one that changes nothing (a report)."""
    t = action.target
    if action.type in (ActionType.PATCH_WORKLOAD_IMAGE, ActionType.PATCH_POD_IMAGE):
        patch = [{"op": "replace", "path": action.container_path, "value": action.new_image}]
        return (
            f"kubectl -n {t.namespace} patch {kubectl_name(t.kind)} "
            f"{t.name} --type=json -p {shlex.quote(json.dumps(patch))}"
        )
    if action.type is ActionType.COPY_SECRET and action.source is not None:
        return (
            f"kubectl -n {action.source.namespace} get secret {action.source.name} -o json | "
            f'jq \'.metadata={{name:"{action.secret}",namespace:"{t.namespace}"}}\' | '
            "kubectl apply -f -"
        )
    if action.type is ActionType.ADD_TEMPLATE_PULL_SECRET:
        add = [{"op": "add", "path": action.container_path, "value": {"name": action.secret}}]
        return (
            f"kubectl -n {t.namespace} patch {kubectl_name(t.kind)} "
            f"{t.name} --type=json -p {shlex.quote(json.dumps(add))}"
        )
    if action.type is ActionType.ATTACH_PULL_SECRET:
        sa_patch = {"imagePullSecrets": [{"name": action.secret}]}
        return (
            f"kubectl -n {t.namespace} patch serviceaccount {t.name} --type=strategic "
            f"-p {shlex.quote(json.dumps(sa_patch))}"
        )
    if action.type is ActionType.RECREATE_PODS:
        names = " ".join(p.name for p in action.pods)
        return f"kubectl -n {t.namespace} delete pod {names}"
    return ""
