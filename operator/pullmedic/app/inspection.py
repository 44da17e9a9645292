"""What ``pullmedic explain`` reads about one pod and concludes, through the operator's code.

Which containers are stuck is :mod:`detection`'s answer, the owner chain and the pull
secrets come from :mod:`lookups`, the workload's record is read by :mod:`records` and the
``kubectl`` command for a verified fix is :mod:`planning`'s (rendered by :mod:`kubectl`):
explain never says "not stuck" about a pod the operator is healing, nor prints a
different command for its fix. Only reads, with the caller's own credentials; the
command line and the text are :mod:`pullmedic.app.explain`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pullmedic.control.diagnoser import Diagnoser
from pullmedic.core.actions import ObjectRef
from pullmedic.core.circuit import CIRCUIT_OPEN, MARK
from pullmedic.core.decision import failure_of
from pullmedic.core.detection import StuckContainer, controller_of, parse_time, stuck_containers
from pullmedic.core.diagnosis import Diagnosis
from pullmedic.core.dockerconfig import PullSecret, SecretProblem
from pullmedic.core.grouping import PodState, trim
from pullmedic.core.keyring import Keyring
from pullmedic.core.kinds import kubectl_name
from pullmedic.core.planning import plan
from pullmedic.core.platforms import Platform
from pullmedic.core.policy import CLUSTER_KIND, Mode, Policy
from pullmedic.core.records import RECORD
from pullmedic.core.tokenmode import PodIdentity
from pullmedic.kube.client import KubeApi, KubeError, RestKube
from pullmedic.kube.lookups import Lookups

OPERATOR_COMPONENT = "pullmedic"
DEFAULT_PLATFORM = "linux/amd64"
# Planning as a Suggest-mode ClusterPullPolicy with defaults would: the command for every
# verified fix. The caller cannot read the policies; whether the operator may apply it is
# what its own Events say.
SUGGEST_ALL = Policy(kind=CLUSTER_KIND, name="explain", namespace=None, mode=Mode.SUGGEST)


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
    diagnoses: list[Diagnosis] = field(default_factory=list)
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
            "diagnoses": [d.to_dict() for d in self.diagnoses],
            "commands": self.commands,
        }


class Lists(Protocol):
    """The collections explain reads beyond single objects (KubeApi has no selectors)."""

    async def pods(self, ns: str, labels: Mapping[str, str]) -> list[dict[str, Any]]: ...

    async def jobs(self, ns: str) -> list[dict[str, Any]]: ...

    async def events(self, ns: str, kind: str, name: str) -> list[dict[str, Any]]: ...


class RestLists:
    """:class:`Lists` over the operator's API client (its timeouts and retries)."""

    def __init__(self, kube: RestKube) -> None:
        self.kube = kube

    async def _items(self, path: str, query: list[tuple[str, str]]) -> list[dict[str, Any]]:
        page = await self.kube.request("GET", path, query=query) or {}
        return [dict(i) for i in page.get("items") or ()]

    async def pods(self, ns: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return await self._items(f"/api/v1/namespaces/{ns}/pods", [("labelSelector", selector)])

    async def jobs(self, ns: str) -> list[dict[str, Any]]:
        return await self._items(f"/apis/batch/v1/namespaces/{ns}/jobs", [])

    async def events(self, ns: str, kind: str, name: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        return await self._items(f"/api/v1/namespaces/{ns}/events", [("fieldSelector", selector)])


def stuck_row(s: StuckContainer) -> dict[str, str]:
    """One of the operator's stuck containers, as explain reports it."""
    return {
        "kind": s.kind,
        "container": s.name,
        "image": s.image,
        "reason": s.reason,
        "message": s.message,
    }


def commands(
    pod: Mapping[str, Any],
    stuck: Sequence[StuckContainer],
    owner: tuple[ObjectRef | None, ObjectRef | None, Mapping[str, Any] | None],
    diagnoses: Mapping[str, Diagnosis],
) -> list[str]:
    """The commands the operator would suggest for these diagnoses, one plan per container."""
    meta = pod.get("metadata") or {}
    ref = ObjectRef("Pod", meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""))
    rep = PodState(ref, trim(pod), list(stuck), 0.0, 0.0)
    workload, job, wobj = owner
    out: list[str] = []
    for sc in stuck:
        d = diagnoses.get(sc.image)
        if d is None:
            continue
        failure = failure_of(rep, sc, [rep], workload, job, wobj)
        out.extend(c for c in plan(failure, d, SUGGEST_ALL).suggestions if c not in out)
    return out


def last_remediation(annotations: Mapping[str, str]) -> dict[str, Any] | None:
    """The workload's record as the operator reads it; unreadable ones are shown raw."""
    raw = annotations.get(RECORD.key)
    if not raw:
        return None
    rec = RECORD.parse(raw)
    return rec.to_dict() if rec is not None else {"raw": raw}


def _why(exc: KubeError, what: str) -> ExplainError:
    if exc.status == 403:
        return ExplainError(f"not allowed to read {what}")
    return ExplainError(f"reading {what}: {exc}")


async def _read(kube: KubeApi, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return await kube.get(kind, ns, name)
    except KubeError as exc:
        raise _why(exc, f"{kind} {ns}/{name}") from None


def _created(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


async def _pods_of(
    lists: Lists, ns: str, kind: str, obj: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The workload's pods, stuck ones first (the one worth explaining)."""
    try:
        if kind == "CronJob":
            uid = (obj.get("metadata") or {}).get("uid")
            jobs = [j for j in await lists.jobs(ns) if (controller_of(j) or {}).get("uid") == uid]
            jobs.sort(key=_created, reverse=True)
            return [p for j in jobs for p in await _pods_of(lists, ns, "Job", j)]
        selector = (obj.get("spec") or {}).get("selector") or {}
        labels = selector.get("matchLabels") or {}
        pods = await lists.pods(ns, labels) if labels else []
    except KubeError as exc:
        raise _why(exc, f"the pods of {kubectl_name(kind)} {ns}") from None
    pods.sort(key=lambda p: (not stuck_containers(p), _created(p)))
    return pods


def _when(row: Mapping[str, str]) -> float:
    try:
        return parse_time(row["time"]) or 0.0
    except ValueError:
        return 0.0


async def _events(lists: Lists, ns: str, kind: str, name: str, uid: str) -> list[dict[str, str]]:
    try:
        items = await lists.events(ns, kind, name)
    except KubeError as exc:
        if exc.status == 403:
            return [{"reason": "Forbidden", "message": "not allowed to list events", "from": ""}]
        raise _why(exc, f"the events of {kind} {ns}/{name}") from None
    rows = []
    for e in items:
        involved = e.get("involvedObject") or {}
        if involved.get("uid") and involved.get("uid") != uid:
            continue  # an earlier object of the same name
        meta = e.get("metadata") or {}
        t = (
            e.get("lastTimestamp")
            or e.get("eventTime")
            or e.get("firstTimestamp")
            or meta.get("creationTimestamp")
        )
        rows.append(
            {
                "time": str(t or ""),
                "type": str(e.get("type") or ""),
                "reason": str(e.get("reason") or ""),
                "from": str(
                    (e.get("source") or {}).get("component") or e.get("reportingComponent") or ""
                ),
                "message": str(e.get("message") or ""),
                "count": str(e.get("count") or 1),
            }
        )
    rows.sort(key=_when)
    return rows


def _about_pulls(e: Mapping[str, str]) -> bool:
    return e["reason"] in ("Failed", "BackOff", "Pulling", "Pulled", "InspectFailed") or (
        "pull" in e["message"].lower() or "image" in e["message"].lower()
    )


async def _pull_secrets(
    lookups: Lookups, ns: str, pod: Mapping[str, Any], report: Report
) -> tuple[Keyring, list[SecretProblem]]:
    """The pod's own pull secrets (as admission left them); anonymous where forbidden."""
    names = [str(r.get("name", "")) for r in (pod.get("spec") or {}).get("imagePullSecrets") or ()]
    read, forbidden, missing = [], [], []
    secrets: list[PullSecret] = []
    for name in names:
        try:
            s = await lookups.secret(ns, name)
        except KubeError as exc:
            if exc.status != 403:
                raise _why(exc, f"secret {ns}/{name}") from None
            forbidden.append(name)
            continue
        if s is None:
            missing.append(name)
            continue
        read.append(name)
        secrets.append(s)
    report.credentials = {
        "pullSecrets": names,
        "read": read,
        "forbidden": forbidden,
        "missing": missing,
        "anonymous": not secrets,
    }
    return Keyring.from_secrets(secrets)


async def _platform(kube: KubeApi, node: str) -> tuple[Platform, str]:
    """The node's platform (the one the kubelet pulls for), linux/amd64 when unreadable."""
    default = Platform.parse(DEFAULT_PLATFORM)
    if not node:
        return default, "assumed (no node)"
    try:
        obj = await kube.get("Node", "", node)
    except KubeError:
        return default, f"assumed (node {node} not readable)"
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    os_, arch = labels.get("kubernetes.io/os"), labels.get("kubernetes.io/arch")
    if not (os_ and arch):
        return default, f"assumed (node {node} not readable)"
    return Platform.parse(f"{os_}/{arch}"), f"node {node}"


async def gather(
    kube: KubeApi,
    lists: Lists,
    ns: str,
    kind: str,
    name: str,
    diagnoser: Diagnoser | None,
) -> Report:
    """The report for ``kind/name`` in ``ns`` (a workload: its stuck pod). Without a
    diagnoser nothing is probed (``--no-probe``)."""
    obj = await _read(kube, kind, ns, name)
    if obj is None:
        raise ExplainError(f"{kubectl_name(kind)}/{name} not found in namespace {ns}")
    if kind == "Pod":
        pod = obj
    else:
        pods = await _pods_of(lists, ns, kind, obj)
        if not pods:
            raise ExplainError(f"{kubectl_name(kind)}/{name} has no pods")
        pod = pods[0]
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    pod_name = str(meta.get("name", ""))
    lookups = Lookups(kube, DEFAULT_PLATFORM)
    try:
        owner = await lookups.owner_chain(pod)
    except KubeError as exc:
        raise _why(exc, f"the owner of pod {ns}/{pod_name}") from None
    workload, _, wobj = owner
    stuck = stuck_containers(pod)
    report = Report(
        namespace=ns,
        pod=pod_name,
        phase=str((pod.get("status") or {}).get("phase") or ""),
        node=str(spec.get("nodeName") or ""),
        workload=f"{workload.kind}/{workload.name}" if workload else None,
        stuck=[stuck_row(s) for s in stuck],
    )
    events = await _events(lists, ns, "Pod", pod_name, str(meta.get("uid", "")))
    if workload is not None:
        events += await _events(lists, ns, workload.kind, workload.name, workload.uid)
    if wobj is not None:
        annotations = (wobj.get("metadata") or {}).get("annotations") or {}
        report.last_remediation = last_remediation(annotations)
        report.circuit = CIRCUIT_OPEN if MARK.fetch(annotations) else None
    events.sort(key=_when)
    report.operator_events = [e for e in events if e["from"] == OPERATOR_COMPONENT]
    report.kubelet_events = [
        e for e in events if e["from"] != OPERATOR_COMPONENT and _about_pulls(e)
    ]
    if stuck and diagnoser is not None:
        keyring, problems = await _pull_secrets(lookups, ns, pod, report)
        platform, source = await _platform(kube, report.node)
        report.platform = f"{platform} ({source})"
        found: dict[str, Diagnosis] = {}
        for image in dict.fromkeys(s.image for s in stuck):
            d = await diagnoser.diagnose(
                image, keyring, platform, secret_problems=problems, pod=PodIdentity.of_pod(pod)
            )
            found[image] = d
            report.diagnoses.append(d)
        report.commands = commands(pod, stuck, owner, found)
    return report
