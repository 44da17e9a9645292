"""``pullmedic explain`` (also ``kubectl pullmedic explain``): why is this pod stuck?

For application teams, who do not run the operator: everything is read with the user's
own kubeconfig. The answer combines what the kubelet reported (container state, its
Events), what the operator did or suggested (its Events, the workload's
``pullmedic.dev/last-remediation`` and ``pullmedic.dev/circuit`` annotations) and,
unless ``--no-probe``, a diagnosis made here with the same prober the operator uses.
When RBAC forbids reading the pod's pull secrets the probe is anonymous, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from pullmedic.diagnosis import Cause, Diagnosis
from pullmedic.keyring import Keyring, PullSecret, SecretProblem
from pullmedic.netguard import AddressPolicy
from pullmedic.platforms import Platform
from pullmedic.prober import Prober
from pullmedic.records import CIRCUIT_ANNOTATION, REMEDIATION_ANNOTATION
from pullmedic.registry import ClientConfig

PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
OPERATOR_COMPONENT = "pullmedic"
# kubectl's spellings of the kinds explain accepts.
KINDS = {
    "pod": "Pod",
    "pods": "Pod",
    "po": "Pod",
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "statefulset": "StatefulSet",
    "statefulsets": "StatefulSet",
    "sts": "StatefulSet",
    "daemonset": "DaemonSet",
    "daemonsets": "DaemonSet",
    "ds": "DaemonSet",
    "job": "Job",
    "jobs": "Job",
    "cronjob": "CronJob",
    "cronjobs": "CronJob",
    "cj": "CronJob",
}
KUBECTL_NAME = {
    "Deployment": "deployment",
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
    "CronJob": "cronjob",
    "Job": "job",
    "Pod": "pod",
}


class ExplainError(Exception):
    """The target could not be found or read (exit code 2)."""


@dataclass
class Report:
    """Everything ``explain`` found about one pod: rendered as text or JSON."""

    namespace: str
    pod: str
    phase: str
    node: str
    workload: str | None
    stuck: list[dict[str, str]] = field(default_factory=list)
    kubelet_events: list[dict[str, str]] = field(default_factory=list)
    operator_events: list[dict[str, str]] = field(default_factory=list)
    last_remediation: dict[str, Any] | None = None
    circuit: str | None = None
    credentials: dict[str, Any] = field(default_factory=dict)
    platform: str = ""
    diagnoses: list[dict[str, Any]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "phase": self.phase,
            "node": self.node,
            "workload": self.workload,
            "stuck": self.stuck,
            "kubeletEvents": self.kubelet_events,
            "operatorEvents": self.operator_events,
            "lastRemediation": self.last_remediation,
            "circuit": self.circuit,
            "credentials": self.credentials,
            "platform": self.platform,
            "diagnoses": self.diagnoses,
            "commands": self.commands,
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
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_explain)


def parse_target(target: str) -> tuple[str, str]:
    """``kind/name`` in kubectl's spelling (bare ``name`` is a pod) -> (Kind, name)."""
    kind, sep, name = target.partition("/")
    if not sep:
        return "Pod", target
    resolved = KINDS.get(kind.lower().split(".")[0])
    if resolved is None or not name:
        raise ExplainError(f"cannot explain {target!r}: use pod/NAME, deployment/NAME, ...")
    return resolved, name


def cmd_explain(args: argparse.Namespace) -> int:
    """Exit 0 when the pod pulls fine, 1 when it is stuck, 2 when it cannot be read."""
    from kubernetes import config as kconfig

    try:
        kind, name = parse_target(args.target)
        addresses = AddressPolicy(tuple(args.allow_address))
    except (ExplainError, ValueError) as exc:
        print(f"pullmedic: error: {exc}", file=sys.stderr)
        return 2
    try:
        api = kconfig.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig, context=args.context
        )
        namespace = args.namespace
        if not namespace:
            contexts, ctx = kconfig.list_kube_config_contexts(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
            if args.context:
                ctx = next((c for c in contexts if c["name"] == args.context), ctx)
            namespace = (ctx.get("context") or {}).get("namespace") or "default"
    except (kconfig.ConfigException, OSError) as exc:
        print(f"pullmedic: error: kubeconfig: {exc}", file=sys.stderr)
        return 2
    probe = None
    if not args.no_probe:
        probe = ClientConfig(
            connect_timeout=min(args.timeout, 5.0),
            read_timeout=args.timeout,
            operation_timeout=args.timeout * 3,
            insecure_hosts=frozenset(h.lower() for h in args.insecure_registry),
            address_policy=addresses,
        )
    try:
        report = explain(api, namespace, kind, name, probe)
    except ExplainError as exc:
        print(f"pullmedic: error: {exc}", file=sys.stderr)
        return 2
    finally:
        api.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(render(report))
    return 1 if report.stuck else 0


# ---------------------------------------------------------------------------------------
# Reading the cluster
# ---------------------------------------------------------------------------------------


def _apis(api: Any) -> tuple[Any, Any, Any]:
    """Core, apps and batch API handles, untyped: fields are checked where used."""
    from kubernetes import client

    return client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)


def _forbidden(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 403


def _read(api: Any, kind: str, ns: str, name: str) -> Any:
    """The object, or None when it does not exist; ExplainError when forbidden."""
    from kubernetes.client.exceptions import ApiException

    core, apps, batch = _apis(api)
    readers = {
        "Pod": core.read_namespaced_pod,
        "Deployment": apps.read_namespaced_deployment,
        "StatefulSet": apps.read_namespaced_stateful_set,
        "DaemonSet": apps.read_namespaced_daemon_set,
        "ReplicaSet": apps.read_namespaced_replica_set,
        "Job": batch.read_namespaced_job,
        "CronJob": batch.read_namespaced_cron_job,
    }
    try:
        return readers[kind](name, ns)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if _forbidden(exc):
            raise ExplainError(f"not allowed to read {kind} {ns}/{name}") from None
        raise ExplainError(f"reading {kind} {ns}/{name}: {exc.status} {exc.reason}") from None


def _pods_of(api: Any, ns: str, kind: str, obj: Any) -> list[Any]:
    """The workload's pods, stuck ones first (the one worth explaining)."""
    core, _, batch = _apis(api)
    if kind == "CronJob":
        jobs = [
            j
            for j in batch.list_namespaced_job(ns).items
            if any(o.uid == obj.metadata.uid for o in j.metadata.owner_references or [])
        ]
        jobs.sort(key=lambda j: j.metadata.creation_timestamp, reverse=True)
        return [p for j in jobs for p in _pods_of(api, ns, "Job", j)]
    labels = (obj.spec.selector.match_labels or {}) if obj.spec.selector else {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    pods = core.list_namespaced_pod(ns, label_selector=selector).items if selector else []
    pods.sort(key=lambda p: (not _stuck(p), p.metadata.creation_timestamp))
    return list(pods)


def _owner(api: Any, ns: str, pod: Any) -> tuple[str, Any] | None:
    """The workload that owns the pod's template: Deployment, StatefulSet, ... or None."""
    refs = [o for o in pod.metadata.owner_references or [] if o.controller]
    if not refs:
        return None
    kind, name = refs[0].kind, refs[0].name
    obj = _read(api, kind, ns, name) if kind in KUBECTL_NAME or kind == "ReplicaSet" else None
    if obj is None:
        return None
    if kind in ("ReplicaSet", "Job"):
        up = [o for o in obj.metadata.owner_references or [] if o.controller]
        if up and up[0].kind in ("Deployment", "CronJob"):
            parent = _read(api, up[0].kind, ns, up[0].name)
            if parent is not None:
                return up[0].kind, parent
        if kind == "ReplicaSet":
            return None  # a bare ReplicaSet: explain the pod alone
    return kind, obj


def _stuck(pod: Any) -> list[dict[str, str]]:
    out = []
    statuses = [
        *((pod.status.init_container_statuses or []) if pod.status else []),
        *((pod.status.container_statuses or []) if pod.status else []),
    ]
    for cs in statuses:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in PULL_REASONS:
            out.append(
                {
                    "container": cs.name,
                    "image": cs.image,
                    "reason": waiting.reason,
                    "message": waiting.message or "",
                }
            )
    return out


def _events(api: Any, ns: str, kind: str, name: str, uid: str) -> list[dict[str, str]]:
    from kubernetes.client.exceptions import ApiException

    try:
        items = (
            _apis(api)[0]
            .list_namespaced_event(
                ns, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}"
            )
            .items
        )
    except ApiException as exc:
        if _forbidden(exc):
            return [{"reason": "Forbidden", "message": "not allowed to list events", "from": ""}]
        raise

    def when(e: Any) -> str:
        t = e.last_timestamp or e.event_time or e.first_timestamp or e.metadata.creation_timestamp
        return t.isoformat() if t else ""

    rows = [
        {
            "time": when(e),
            "type": e.type or "",
            "reason": e.reason or "",
            "from": (e.source.component if e.source else "") or e.reporting_component or "",
            "message": e.message or "",
            "count": str(e.count or 1),
        }
        for e in items
        if not e.involved_object.uid or e.involved_object.uid == uid
    ]
    rows.sort(key=lambda r: r["time"])
    return rows


def _pull_secrets(
    api: Any, ns: str, pod: Any, report: Report
) -> tuple[Keyring, list[SecretProblem]]:
    """The pod's own pull secrets (as admission left them); anonymous where forbidden."""
    from kubernetes.client.exceptions import ApiException

    core = _apis(api)[0]
    read, forbidden, missing = [], [], []
    secrets: list[PullSecret] = []
    for ref in pod.spec.image_pull_secrets or []:
        try:
            s = core.read_namespaced_secret(ref.name, ns)
        except ApiException as exc:
            if _forbidden(exc):
                forbidden.append(ref.name)
            elif exc.status == 404:
                missing.append(ref.name)
            else:
                raise
            continue
        read.append(ref.name)
        secrets.append(PullSecret(ns, ref.name, s.type or "", dict(s.data or {})))
    report.credentials = {
        "pullSecrets": [r.name for r in pod.spec.image_pull_secrets or []],
        "read": read,
        "forbidden": forbidden,
        "missing": missing,
        "anonymous": not secrets,
    }
    return Keyring.from_secrets(secrets)


def _platform(api: Any, node: str) -> tuple[Platform, str]:
    """The node's platform (the one the kubelet pulls for), linux/amd64 when unreadable."""
    from kubernetes.client.exceptions import ApiException

    if node:
        try:
            labels = _apis(api)[0].read_node(node).metadata.labels or {}
            os_, arch = labels.get("kubernetes.io/os"), labels.get("kubernetes.io/arch")
            if os_ and arch:
                return Platform.parse(f"{os_}/{arch}"), f"node {node}"
        except ApiException as exc:
            if not _forbidden(exc) and exc.status != 404:
                raise
            return Platform.parse("linux/amd64"), f"assumed (node {node} not readable)"
    return Platform.parse("linux/amd64"), "assumed (no node)"


def explain(api: Any, ns: str, kind: str, name: str, probe: ClientConfig | None) -> Report:
    """Collect the report for ``kind/name`` in ``ns`` (a workload: its stuck pod)."""
    obj = _read(api, kind, ns, name)
    if obj is None:
        raise ExplainError(f"{KUBECTL_NAME[kind]}/{name} not found in namespace {ns}")
    owner: tuple[str, Any] | None
    if kind == "Pod":
        pod, owner = obj, _owner(api, ns, obj)
    else:
        pods = _pods_of(api, ns, kind, obj)
        if not pods:
            raise ExplainError(f"{KUBECTL_NAME[kind]}/{name} has no pods")
        pod, owner = pods[0], (kind, obj)
    report = Report(
        namespace=ns,
        pod=pod.metadata.name,
        phase=(pod.status.phase if pod.status else "") or "",
        node=pod.spec.node_name or "",
        workload=f"{owner[0]}/{owner[1].metadata.name}" if owner else None,
        stuck=_stuck(pod),
    )
    events = _events(api, ns, "Pod", pod.metadata.name, pod.metadata.uid)
    if owner is not None:
        events += _events(api, ns, owner[0], owner[1].metadata.name, owner[1].metadata.uid)
        annotations = owner[1].metadata.annotations or {}
        raw = annotations.get(REMEDIATION_ANNOTATION)
        if raw:
            try:
                report.last_remediation = json.loads(raw)
            except ValueError:
                report.last_remediation = {"raw": raw}
        report.circuit = annotations.get(CIRCUIT_ANNOTATION)
    events.sort(key=lambda r: r["time"])
    report.operator_events = [e for e in events if e["from"] == OPERATOR_COMPONENT]
    report.kubelet_events = [
        e for e in events if e["from"] != OPERATOR_COMPONENT and _about_pulls(e)
    ]
    if report.stuck and probe is not None:
        keyring, problems = _pull_secrets(api, ns, pod, report)
        platform, source = _platform(api, report.node)
        report.platform = f"{platform} ({source})"
        for d in asyncio.run(_diagnose(probe, report.stuck, keyring, platform, problems)):
            report.diagnoses.append(d.to_dict())
            report.commands.extend(_commands(report, pod, owner, d))
    return report


def _about_pulls(e: dict[str, str]) -> bool:
    return e["reason"] in ("Failed", "BackOff", "Pulling", "Pulled", "InspectFailed") or (
        "pull" in e["message"].lower() or "image" in e["message"].lower()
    )


async def _diagnose(
    config: ClientConfig,
    stuck: list[dict[str, str]],
    keyring: Keyring,
    platform: Platform,
    problems: list[SecretProblem],
) -> list[Diagnosis]:
    async with Prober(config) as prober:
        images = list(dict.fromkeys(s["image"] for s in stuck))
        return [
            await prober.diagnose(i, keyring, platform, secret_problems=problems) for i in images
        ]


def _commands(report: Report, pod: Any, owner: tuple[str, Any] | None, d: Diagnosis) -> list[str]:
    """The kubectl command that applies the diagnosis' verified fix where it lasts."""
    if d.fix is None:
        return []
    ns = report.namespace
    containers = [s["container"] for s in report.stuck if s["image"] == d.image]
    if d.fix.kind == "tag" and d.fix.image:
        target = (
            f"{KUBECTL_NAME[owner[0]]}/{owner[1].metadata.name}"
            if owner and owner[0] != "Job"
            else f"pod/{pod.metadata.name}"
        )
        sets = " ".join(f"{c}={d.fix.image}" for c in containers)
        return [f"kubectl -n {ns} set image {target} {sets}"]
    if d.fix.kind == "secret" and d.fix.secret:
        src_ns, _, secret = d.fix.secret.partition("/")
        out = []
        if src_ns != ns:
            out.append(
                f"kubectl -n {src_ns} get secret {secret} -o json | jq 'del(.metadata."
                "namespace,.metadata.uid,.metadata.resourceVersion,.metadata.creationTimestamp)'"
                f" | kubectl -n {ns} apply -f -"
            )
        patch = json.dumps({"imagePullSecrets": [{"name": secret}]})
        sa = pod.spec.service_account_name or "default"
        out.append(f"kubectl -n {ns} patch serviceaccount {sa} -p {shlex.quote(patch)}")
        return out
    return []


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
        lines.append(f"Container {s['container']}: {s['reason']} for image {s['image']}")
        if s["message"]:
            lines.append(f"  kubelet: {s['message']}")
    for d in r.diagnoses:
        lines.append(f"Cause: {d['cause']} ({d['confidence']} confidence): {d['summary']}")
        for e in d["evidence"]:
            lines.append(f"  evidence: {_evidence_line(e)}")
        if d["fix"]:
            lines.append(f"  verified fix: {_fix_line(d['fix'])}")
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
    if r.last_remediation:
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
    elif r.diagnoses and all(d["cause"] == str(Cause.ImageAvailable) for d in r.diagnoses):
        lines.append(f"To fix: the image pulls now; kubectl -n {r.namespace} delete pod {r.pod}")
    return "\n".join(lines)


def _evidence_line(e: dict[str, Any]) -> str:
    """As Evidence.line, from its JSON form."""
    parts = [str(e["kind"]), f"{e.get('method', '')} {e.get('url', '')}".strip()]
    if e.get("status") is not None:
        parts.append(f"-> {e['status']}")
    parts.append(",".join(e.get("errorCodes") or ()))
    if e.get("credential"):
        parts.append(f"[as {e['credential']}]")
    if e.get("note"):
        parts.append(f"({e['note']})")
    return " ".join(p for p in parts if p)


def _fix_line(f: dict[str, Any]) -> str:
    if f["kind"] == "secret":
        return f"add pull secret {f.get('secret')}: {f['reason']}"
    return f"use image {f.get('image')}: {f['reason']}"
