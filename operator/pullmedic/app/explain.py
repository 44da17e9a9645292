"""``pullmedic explain`` (also ``kubectl pullmedic explain``): why is this pod stuck?

For application teams, who do not run the operator: everything is read with the user's
own kubeconfig. The answer combines what the kubelet reported (container state, its
Events), what the operator did or suggested (its Events, the workload's
``pullmedic.dev/last-remediation`` and ``pullmedic.dev/circuit`` annotations) and,
unless ``--no-probe``, a diagnosis made here with the same prober the operator uses.
When RBAC forbids reading the pod's pull secrets the probe is anonymous, and says so.
What it reads and concludes is the operator's own code (:mod:`pullmedic.app.inspection`);
this module is the command line and the text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from pullmedic.app import nodecreds
from pullmedic.app.inspection import ExplainError, Report, RestLists, gather
from pullmedic.app.options import context_namespace, probe_config
from pullmedic.core import kinds
from pullmedic.core.actions import Action, ActionType, ObjectRef
from pullmedic.core.circuit import CIRCUIT_ANNOTATION
from pullmedic.core.diagnosis import Cause, Fix
from pullmedic.core.kubectl import command
from pullmedic.kube.client import KubeError, RestKube
from pullmedic.probe.config import ClientConfig
from pullmedic.probe.netguard import AddressPolicy

CONTAINER_LABELS = {
    "containers": "Container",
    "initContainers": "Init container",
    "ephemeralContainers": "Ephemeral container",
}


def add_parser(sub: Any) -> None:
    """Register ``explain`` on the ``pullmedic`` command's subparsers."""
    p = sub.add_parser("explain", help="why is this pod stuck pulling its image?")
    p.add_argument("target", help="pod/NAME, deployment/NAME, statefulset/NAME, ... or NAME")
    p.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    p.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--no-probe", action="store_true", help="do not ask the registry")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST")
    p.add_argument("--allow-address", action="append", default=[], metavar="CIDR|HOST")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S")
    nodecreds.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_explain)


def parse_target(target: str) -> tuple[str, str]:
    """``kind/name`` in kubectl's spelling (bare ``name`` is a pod) -> (Kind, name)."""
    kind, sep, name = target.partition("/")
    if not sep:
        return "Pod", target
    resolved = kinds.by_user_name(kind.split(".")[0])
    if resolved not in kinds.WITH_POD_SPEC:
        resolved = None  # only what holds pods is explained
    if resolved is None or not name:
        raise ExplainError(f"cannot explain {target!r}: use pod/NAME, deployment/NAME, ...")
    return resolved, name


def cmd_explain(args: argparse.Namespace) -> int:
    """Exit 0 when the pod pulls fine, 1 when it is stuck, 2 when it cannot be read."""
    from kubernetes import config as kconfig

    try:
        kind, name = parse_target(args.target)
        addresses = AddressPolicy(tuple(args.allow_address))
        node = nodecreds.settings_from(args)
    except (ExplainError, ValueError) as exc:
        print(f"pullmedic: error: {exc}", file=sys.stderr)
        return 2
    try:
        api = kconfig.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig, context=args.context
        )
        namespace = args.namespace or context_namespace(args.kubeconfig, args.context)
    except (kconfig.ConfigException, OSError) as exc:
        print(f"pullmedic: error: kubeconfig: {exc}", file=sys.stderr)
        return 2
    probe = None
    if not args.no_probe:
        probe = probe_config(args, addresses)
    try:
        report = explain(api, namespace, kind, name, probe, node)
    except (ExplainError, KubeError) as exc:
        print(f"pullmedic: error: {exc}", file=sys.stderr)
        return 2
    finally:
        api.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(render(report))
    return 1 if report.stuck else 0


def explain(
    api: Any,
    ns: str,
    kind: str,
    name: str,
    probe: ClientConfig | None,
    node: nodecreds.NodeSettings | None = None,
) -> Report:
    """Collect the report for ``kind/name`` in ``ns`` (a workload: its stuck pod)."""
    kube = RestKube(api)
    try:
        return asyncio.run(_explain(kube, ns, kind, name, probe, node))
    finally:
        kube.close()


async def _explain(
    kube: RestKube,
    ns: str,
    kind: str,
    name: str,
    probe: ClientConfig | None,
    node: nodecreds.NodeSettings | None = None,
) -> Report:
    if probe is None:
        return await gather(kube, RestLists(kube), ns, kind, name, None)
    prober = nodecreds.build_diagnoser(probe, node or nodecreds.NodeSettings(), kube)
    try:
        return await gather(kube, RestLists(kube), ns, kind, name, prober)
    finally:
        await prober.aclose()


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------


def render(r: Report) -> str:
    lines = [f"Pod {r.namespace}/{r.pod} ({r.phase or 'unknown'}, node {r.node or 'none'})"]
    if r.workload:
        lines.append(f"Owned by {r.workload}")
    if not r.stuck:
        lines.append("No container is stuck pulling its image.")
    for s in r.stuck:
        label = CONTAINER_LABELS.get(s.get("kind", ""), "Container")
        lines.append(f"{label} {s['container']}: {s['reason']} for image {s['image']}")
        if s["message"]:
            lines.append(f"  kubelet: {s['message']}")
    for d in r.diagnoses:
        lines.append(f"Cause: {d.cause} ({d.confidence} confidence): {d.summary}")
        lines.extend(f"  evidence: {e.line()}" for e in d.evidence)
        if d.fix:
            lines.append(f"  verified fix: {_fix_line(d.fix)}")
    if r.credentials:
        c = r.credentials
        if c["forbidden"]:
            lines.append(
                "Note: not allowed to read pull secret(s) "
                f"{', '.join(c['forbidden'])}: the registry was probed ANONYMOUSLY, so an "
                "authentication cause may only mean the probe had no credentials."
            )
        elif c["anonymous"]:
            lines.append("Probed anonymously: the pod has no readable pull secrets.")
        if c["missing"]:
            lines.append(f"Pull secret(s) listed but missing: {', '.join(c['missing'])}")
    if r.platform:
        lines.append(f"Platform: {r.platform}")
    if r.operator_events:
        lines.append("pullmedic said:")
        lines.extend(f"  {e['time']} {e['reason']}: {e['message']}" for e in r.operator_events)
    else:
        lines.append("pullmedic said nothing (no policy covers this namespace, or not yet).")
    if r.last_remediation and "raw" in r.last_remediation:
        lines.append(
            f"Last remediation record on {r.workload} is unreadable; pullmedic ignores it."
        )
    elif r.last_remediation:
        rec = r.last_remediation
        lines.append(
            f"Last remediation on {r.workload}: {rec.get('time', '?')} {rec.get('action', '?')}"
            f" for {rec.get('cause', '?')}: {rec.get('previousImage', '?')} -> "
            f"{rec.get('newImage', '?')}"
            + (f" (secret {rec['secret']})" if rec.get("secret") else "")
        )
    if r.circuit:
        lines.append(
            f"Circuit {r.circuit}: pullmedic stopped fixing {r.workload} because its fix did "
            f"not hold; remove annotation {CIRCUIT_ANNOTATION} to re-arm it."
        )
    if r.commands:
        lines.append("To fix:")
        lines.extend(f"  {c}" for c in r.commands)
    elif r.diagnoses and all(d.cause is Cause.ImageAvailable for d in r.diagnoses):
        pod = ObjectRef("Pod", r.namespace, r.pod)
        recreate = Action(ActionType.RECREATE_PODS, pod, "recreate the pod", pods=(pod,))
        lines.append(f"To fix: the image pulls now; {command(recreate)}")
    return "\n".join(lines)


def _fix_line(f: Fix) -> str:
    """The fix in explain's words (the operator's Events use :meth:`Fix.line`)."""
    if f.kind == "secret":
        return f"add pull secret {f.secret}: {f.reason}"
    return f"use image {f.image}: {f.reason}"
