"""The control loop: stuck pods in, diagnoses and plans out, applied under policy.

The kopf handlers feed pod, namespace and policy events here. Failures are grouped by
(owner, container, image) so a thousand failing replicas cost one diagnosis and one plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from pullmedic import backoff, events, metrics, reference
from pullmedic import policy as pol
from pullmedic.actuator import CIRCUIT_ANNOTATION, REMEDIATION_ANNOTATION, Actuator, Kube, Result
from pullmedic.detection import (
    StuckContainer,
    controller_of,
    is_terminating,
    parse_time,
    stuck_containers,
)
from pullmedic.diagnosis import Cause, Diagnosis
from pullmedic.keyring import Keyring, PullSecret, SecretProblem
from pullmedic.planning import (
    API_VERSIONS,
    Action,
    ActionType,
    Failure,
    ObjectRef,
    Plan,
    plan,
)
from pullmedic.platforms import Platform

log = logging.getLogger("pullmedic")

CREDENTIAL_CAUSES = (
    Cause.AuthenticationRequired,
    Cause.CredentialsRejected,
    Cause.NotFoundOrPrivate,
)


class Diagnoser(Protocol):
    async def diagnose(
        self,
        image: str,
        keyring: Keyring,
        platform: Platform,
        *,
        suggest: bool = True,
        candidate_keyrings: Mapping[str, Keyring] | None = None,
        tag_policy: pol.TagCorrection | None = None,
        secret_problems: Sequence[SecretProblem] = (),
        distrust_available: bool = False,
    ) -> Diagnosis: ...


@dataclass(frozen=True)
class EngineSettings:
    operator_namespace: str | None = None
    default_platform: str = "linux/amd64"
    debounce: float = 0.25  # gather sibling pods of one owner before deciding
    recheck_after: float = 30.0  # re-diagnose a group still stuck after this long
    circuit_window: float = 3600.0
    status_interval: float = 1.0
    secret_sync_interval: float = 60.0  # how often managed copies follow their source
    dry_run: bool = False


@dataclass
class PodState:
    ref: ObjectRef
    body: dict[str, Any]  # a trimmed copy: only what planning and keyrings need
    containers: list[StuckContainer]
    first_seen: float
    created: float
    policy: str | None = None
    groups: set[tuple[str, str, str]] = field(default_factory=set)
    checked: float = 0.0  # last time the sweep confirmed the pod still exists


@dataclass
class Group:
    key: tuple[str, str, str]
    first_seen: float
    task: asyncio.Task[None] | None = None
    handled_at: float = 0.0
    cause: str = ""
    pods: set[str] = field(default_factory=set)
    posted: str = ""  # fingerprint of the last Event-worthy outcome: post only on change
    applied: str = ""  # fingerprint of the last plan applied, and when
    applied_at: float = 0.0
    again: bool = False  # new members arrived while a decision was running
    empty_since: float | None = None  # kept a while: its memory outlives its pods
    timer: asyncio.TimerHandle | None = None  # the one pending wake-up of this group
    failures: int = 0  # consecutive postponed/failed decisions: retries back off
    quiet: int = 0  # consecutive decisions that changed nothing: rechecks back off

    def recheck_in(self, base: float) -> float:
        """Like the kubelet: a failure nothing can fix is looked at less and less often."""
        return float(min(300.0, base * 2.0 ** min(self.quiet, 4)))


@dataclass
class PolicyStats:
    counts: dict[str, int] = field(
        default_factory=lambda: {"detected": 0, "suggested": 0, "remediated": 0, "failed": 0}
    )
    last_actions: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=10))
    attempts: int = 0
    lost: float = 0.0
    saved: float = 0.0
    remediations: deque[float] = field(default_factory=deque)
    copies: set[tuple[str, str]] = field(default_factory=set)  # (source ns/name, copy ns/name)
    dirty: bool = True


def _trim(pod: Mapping[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    return {
        "metadata": {
            k: meta.get(k)
            for k in ("name", "namespace", "uid", "labels", "ownerReferences", "creationTimestamp")
        },
        "spec": {
            "serviceAccountName": spec.get("serviceAccountName") or "default",
            "imagePullSecrets": spec.get("imagePullSecrets") or [],
            "nodeName": spec.get("nodeName"),
        },
    }


def _owner_key(pod: Mapping[str, Any]) -> str:
    ref = controller_of(pod)
    meta = pod.get("metadata") or {}
    if ref is None:
        return f"Pod/{meta.get('namespace')}/{meta.get('name')}"
    return f"{ref.get('kind')}/{meta.get('namespace')}/{ref.get('name')}"


class Postpone(Exception):
    """Not enough known yet to decide safely (e.g. a namespace's labels); retry soon."""


@dataclass(frozen=True)
class RemediationRecord:
    """What was done to a workload, for the circuit breaker (annotation or memory)."""

    at: float
    cause: str
    container: str
    action: str
    new_image: str
    secret: str
    # Known only in memory: the pods that were stuck when the fix was made, and the newest
    # of their creation times (apiserver clock), so "created after the fix" needs no
    # agreement between our clock and the apiserver's.
    old_pods: frozenset[str] = frozenset()
    old_created: float | None = None

    @classmethod
    def from_annotation(cls, raw: str | None) -> RemediationRecord | None:
        if not raw:
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(rec, dict):
            return None  # anyone who can edit the workload can write this: trust nothing
        at = rec.get("time")
        try:
            when = parse_time(at) if isinstance(at, str) else None
        except ValueError:
            when = None
        if when is None:
            return None
        return cls(
            when,
            str(rec.get("cause", "")),
            str(rec.get("container", "")),
            str(rec.get("action", "")),
            str(rec.get("newImage") or ""),
            str(rec.get("secret") or ""),
        )


# Owners whose metadata the ClusterRole lets pullmedic patch (records and circuit state).
ANNOTATABLE = frozenset({"Deployment", "StatefulSet", "DaemonSet", "CronJob"})


class Engine:
    def __init__(self, kube: Kube, prober: Diagnoser, settings: EngineSettings) -> None:
        self.kube = kube
        self.prober = prober
        self.settings = settings
        self.actuator = Actuator(kube, dry_run=settings.dry_run)
        self.policies: dict[str, pol.Policy] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.pods: dict[str, PodState] = {}
        self.groups: dict[tuple[str, str, str], Group] = {}
        self.stats: dict[str, PolicyStats] = {}
        self.policy_status: dict[str, dict[str, Any]] = {}
        self._node_platforms: dict[str, Platform] = {}
        # Remediations this process made, by (workload, container): the circuit breaker for
        # owners it may not annotate (bare Jobs/ReplicaSets, bare pods); annotations carry it
        # across restarts where RBAC allows.
        self.records: dict[tuple[str, str], RemediationRecord] = {}
        self.circuits: set[tuple[str, str]] = set()
        self._flusher: asyncio.Task[None] | None = None

    # ---- inputs -------------------------------------------------------------------------

    def on_namespace(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name")
        if not name:
            return
        if event_type == "DELETED":
            self.namespaces.pop(name, None)
        else:
            self.namespaces[name] = dict((body.get("metadata") or {}).get("labels") or {})

    async def on_policy(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        policy, problems = pol.parse(body)
        if event_type == "DELETED":
            self.policies.pop(policy.key, None)
            self.stats.pop(policy.key, None)
            return
        if problems:
            self.policies.pop(policy.key, None)
        else:
            self.policies[policy.key] = policy
        cond = {
            "type": "Ready",
            "status": "False" if problems else "True",
            "reason": "InvalidSpec" if problems else "Accepted",
            "message": "; ".join(problems) if problems else f"mode {policy.mode}",
            "observedGeneration": policy.generation,
        }
        status = body.get("status") or {}
        old: dict[str, Any] = next(
            (c for c in status.get("conditions") or () if c.get("type") == "Ready"), {}
        )
        if {k: old.get(k) for k in cond} != cond or status.get("observedGeneration") != (
            policy.generation
        ):
            cond["lastTransitionTime"] = _now_iso()
            await self._patch_policy_status(
                policy, {"observedGeneration": policy.generation, "conditions": [cond]}
            )
            if problems:
                await events.post(
                    self.kube,
                    self._policy_involved(policy),
                    "InvalidSpec",
                    "; ".join(problems),
                    "Warning",
                )
        st = self.stats.setdefault(policy.key, PolicyStats())
        for item in status.get("managedSecrets") or ():
            if item.get("source") and item.get("copy"):
                st.copies.add((str(item["source"]), str(item["copy"])))

    def on_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Cheap: runs for every pod event in the cluster."""
        meta = body.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        stuck = [] if event_type == "DELETED" or is_terminating(body) else stuck_containers(body)
        if not stuck:
            if uid in self.pods:
                self._recovered(self.pods.pop(uid))
            return
        now = time.monotonic()
        state = self.pods.get(uid)
        if state is None:
            state = PodState(
                ref=ObjectRef("Pod", meta.get("namespace", ""), meta.get("name", ""), uid),
                body=_trim(body),
                containers=stuck,
                first_seen=now,
                created=parse_time(meta.get("creationTimestamp")) or time.time(),
            )
            self.pods[uid] = state
        else:
            state.containers = stuck
        owner = _owner_key(body)
        keys = {(owner, c.name, c.image) for c in stuck}
        for old in state.groups - keys:  # the image changed: leave the old group
            self._leave(old, uid)
        state.groups = keys
        for key in keys:
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Group(key, now)
            joined = uid not in group.pods
            group.pods.add(uid)
            group.empty_since = None
            # A sibling failing just after the group's fix was applied (it was created before
            # the fix) gets the same fix now, not after --recheck-after.
            follow_up = (
                joined
                and bool(group.applied)
                and (now - group.applied_at < self.settings.recheck_after)
            )
            self._schedule(group, now, force=follow_up)

    def _schedule(self, group: Group, now: float, *, force: bool = False) -> None:
        if group.task is not None and not group.task.done():
            group.again = group.again or force
            return
        since = now - group.handled_at
        due = group.recheck_in(self.settings.recheck_after)
        if group.handled_at and since < due and not force:
            if group.timer is None:  # stuck pods may send no event for minutes (back-off)
                self._wake(group, due - since)
            return
        self._wake(group, None)
        group.task = asyncio.get_running_loop().create_task(self._handle(group))

    def _wake(self, group: Group, delay: float | None, *, force: bool = False) -> None:
        """Keep exactly one pending wake-up per group (None: cancel it)."""
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if delay is not None:
            group.timer = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._reschedule, group.key, force
            )

    def _recovered(self, state: PodState) -> None:
        lost = time.monotonic() - state.first_seen
        metrics.SECONDS_LOST.inc(lost)
        if state.policy and state.policy in self.stats:
            st = self.stats[state.policy]
            st.lost += lost
            st.dirty = True
        for key in state.groups:
            self._leave(key, state.ref.uid)

    def _leave(self, key: tuple[str, str, str], uid: str) -> None:
        group = self.groups.get(key)
        if group is None:
            return
        group.pods.discard(uid)
        if not group.pods and group.empty_since is None:
            group.empty_since = time.monotonic()

    def _forget_idle_groups(self) -> None:
        oldest = time.time() - self.settings.circuit_window
        for k in [k for k, r in self.records.items() if r.at < oldest]:
            del self.records[k]
        horizon = time.monotonic() - max(120.0, 2 * self.settings.recheck_after)
        for key, g in list(self.groups.items()):
            if (
                g.empty_since is not None
                and g.empty_since < horizon
                and (g.task is None or g.task.done())
            ):
                del self.groups[key]

    # ---- the decision loop --------------------------------------------------------------

    async def _handle(self, group: Group) -> None:
        retry_in: float | None = None
        try:
            await asyncio.sleep(self.settings.debounce)
            await self._decide(group)
        except asyncio.CancelledError:
            raise
        except Postpone as why:
            group.failures += 1
            retry_in = min(60.0, 0.5 * 2**group.failures)
            level = logging.INFO if group.failures < 5 else logging.WARNING
            log.log(level, "postponing %s: %s", "/".join(group.key), why)
        except Exception:
            group.failures += 1
            retry_in = min(300.0, 2.5 * 2**group.failures)
            log.exception("handling %s failed; retrying in %.0fs", "/".join(group.key), retry_in)
        else:
            group.failures = 0
        group.handled_at = time.monotonic()
        if not group.pods:
            return
        if group.again:
            group.again = False
            self._wake(group, self.settings.debounce, force=True)
        elif retry_in is not None:
            self._wake(group, retry_in, force=True)
        else:
            self._wake(group, group.recheck_in(self.settings.recheck_after))

    def _reschedule(self, key: tuple[str, str, str], force: bool = False) -> None:
        group = self.groups.get(key)
        if group is None:
            return
        group.timer = None  # this is the handle that fired: _wake keeps only one
        if group.pods:
            self._schedule(group, time.monotonic(), force=force)

    async def _decide(self, group: Group) -> None:
        members = [self.pods[u] for u in sorted(group.pods) if u in self.pods]
        if not members:
            return
        rep = members[0]
        _, container_name, _image = group.key
        sc = next((c for c in rep.containers if c.name == container_name), None)
        if sc is None:
            return
        pod = rep.body
        ns = rep.ref.namespace
        if ns not in self.namespaces:
            # Unknown labels would match NotIn/DoesNotExist selectors: never guess.
            raise Postpone(f"labels of namespace {ns} not known yet")
        workload, job, wobj = await self._owner_chain(pod)
        wspec_index = _template_index(wobj, workload, sc) if wobj else None

        failure = Failure(
            pod=rep.ref,
            container=sc.name,
            container_kind=sc.kind,
            container_index=sc.index,
            image=sc.image,
            reason=sc.reason,
            service_account=pod["spec"]["serviceAccountName"],
            pod_pull_secrets=tuple(s.get("name", "") for s in pod["spec"]["imagePullSecrets"]),
            workload=workload,
            job=job,
            workload_container_index=wspec_index,
            workload_labels=tuple(
                sorted(((wobj or {}).get("metadata") or {}).get("labels", {}).items())
            )
            if wobj
            else (),
            workload_annotations=tuple(
                sorted((((wobj or {}).get("metadata") or {}).get("annotations") or {}).items())
            ),
            stuck_pods=tuple(m.ref for m in members),
            template_pull_secrets=_template_pull_secrets(wobj, workload),
        )
        try:
            ref = reference.parse(sc.image)
            canonical, familiar = str(ref), ref.familiar()
        except reference.InvalidReference:
            canonical = familiar = sc.image
        policy = pol.choose(
            list(self.policies.values()),
            namespace=ns,
            namespace_labels=self.namespaces.get(ns, {}),
            pod_labels=(pod["metadata"].get("labels") or {}),
            image=canonical,
            familiar_image=familiar,
            operator_namespace=self.settings.operator_namespace,
        )
        for m in members:
            m.policy = policy.key if policy else None

        keyring, candidates, problems = await self._keyrings(pod, policy)
        platform = await self._platform(pod["spec"].get("nodeName"))
        t0 = time.monotonic()
        diagnosis = await self.prober.diagnose(
            sc.image,
            keyring,
            platform,
            suggest=policy is not None and policy.mode is not pol.Mode.OBSERVE,
            candidate_keyrings=candidates or None,
            tag_policy=policy.tags if policy else None,
            secret_problems=problems,
            # The kubelet just failed this pull: a cached "pullable" is stale by definition.
            distrust_available=True,
        )
        metrics.PROBE_SECONDS.observe(time.monotonic() - t0)

        mirror_image = None
        if policy and diagnosis.cause in (Cause.RegistryUnreachable, Cause.RateLimited):
            mirror_image = await self._verified_mirror(sc.image, policy, keyring, platform)

        if policy is not None:
            # The policy may have changed or gone while we probed (a kill switch to Observe).
            current = self.policies.get(policy.key)
            if current is None or current.generation != policy.generation:
                raise Postpone(f"{policy.key} changed while diagnosing")
            policy = current
        first = group.cause == ""  # only now: a Postpone above must not lose the first report
        group.quiet = 0 if group.cause != str(diagnosis.cause) else group.quiet + 1
        group.cause = str(diagnosis.cause)
        if first:
            metrics.DETECTIONS.labels(cause=str(diagnosis.cause)).inc()
        remediating = policy is not None and policy.mode is pol.Mode.REMEDIATE
        target = workload or rep.ref
        circuit = remediating and self._circuit_open(wobj, target, failure, diagnosis, members)
        stats = self.stats.get(policy.key) if policy else None
        rate_limited = False
        if stats is not None and policy is not None:
            now = time.time()
            while stats.remediations and now - stats.remediations[0] > 3600:
                stats.remediations.popleft()
            rate_limited = len(stats.remediations) >= policy.remediations_per_hour
        p = plan(
            failure,
            diagnosis,
            policy,
            mirror_image=mirror_image,
            circuit_open=circuit,
            rate_limited=rate_limited,
        )
        slot = time.time()
        fingerprint = _fingerprint(p)
        follow_up = (
            bool(fingerprint)
            and group.applied == fingerprint
            and time.monotonic() - group.applied_at < self.settings.recheck_after
        )
        if p.apply and stats is not None and not follow_up:
            stats.remediations.append(slot)  # reserved with no await since the check
        log.info(
            "plan %s",
            p.render(),
            extra={"cause": str(diagnosis.cause), "workload": str(target)},
        )
        await self._report_diagnosis(failure, diagnosis, p, first, rep)
        if stats is not None and first:
            stats.counts["detected"] += 1
            stats.dirty = True
        self._account_backoff(members, stats)

        if circuit:
            await self._open_circuit(failure, target, wobj, diagnosis, stats, group)
            return
        if p.apply:
            await self._apply(p, failure, members, stats, group, slot, follow_up, fingerprint)
        elif policy is not None and policy.mode is not pol.Mode.OBSERVE and p.actions:
            await self._suggest(p, failure, stats, group)
        metrics.PLANS.labels(
            mode=str(p.mode),
            decision=(
                "applied"
                if p.apply
                else "suggested"
                if p.actions and policy and policy.mode is not pol.Mode.OBSERVE
                else "observed"
            ),
        ).inc()

    async def _apply(
        self,
        p: Plan,
        f: Failure,
        members: list[PodState],
        stats: PolicyStats | None,
        group: Group,
        started: float,
        follow_up: bool = False,
        fingerprint: str = "",
    ) -> None:
        """Apply a plan. A follow-up repeats an applied plan for late siblings: its writes
        (recreating those pods) happen, but it is not a new remediation to count, record
        or announce."""
        results = await self.actuator.apply(p, started=started)
        # Account first: nothing after this point may make the plan run again unrecorded.
        ok = all(r.outcome in ("applied", "unchanged", "dry-run", "skipped") for r in results)
        wrote = any(r.outcome == "applied" for r in results)
        if follow_up and any(
            r.outcome == "applied" and r.action.type is not ActionType.RECREATE_PODS
            for r in results
        ):
            # Someone undid the fix (a GitOps sync, a human): this is a new remediation.
            follow_up = False
            if stats is not None:
                stats.remediations.append(started)
        if wrote:
            group.quiet = 0
        if ok and (wrote or all(r.outcome == "unchanged" for r in results)):
            if not follow_up:  # the window counts from the fix, not from its follow-ups
                group.applied_at = time.monotonic()
            group.applied = fingerprint
        target = f.workload or f.pod
        main = next(
            (
                a
                for a in p.actions
                if a.type in (ActionType.ATTACH_PULL_SECRET, ActionType.ADD_TEMPLATE_PULL_SECRET)
            ),
            next((a for a in p.actions if a.new_image), p.actions[-1]),
        )
        if wrote and not follow_up:
            self.records[(str(target), f.container)] = RemediationRecord(
                started,
                str(p.cause),
                f.container,
                str(main.type),
                main.new_image,
                main.secret,
                frozenset(m.ref.uid for m in members),
                max(m.created for m in members),
            )
        for r in results:
            metrics.ACTIONS.labels(action=str(r.action.type), outcome=r.outcome).inc()
        if not follow_up:
            metrics.TIME_TO_ACTION.observe(time.monotonic() - group.first_seen)
        saved = 0.0
        if any(
            r.action.type is ActionType.RECREATE_PODS and r.outcome == "applied" for r in results
        ):
            now = time.monotonic()
            saved = sum(backoff.saved_by_recreation(now - m.first_seen) for m in members)
            metrics.SECONDS_SAVED.inc(saved)
        text = "; ".join(
            f"{r.action.summary}: {r.outcome}" + (f" ({r.detail})" if r.detail else "")
            for r in results
        )
        if stats is not None and follow_up:
            stats.saved += saved
            stats.dirty = True
        elif stats is not None:
            if not wrote and started in stats.remediations:
                stats.remediations.remove(started)  # nothing written: give the slot back
            for r in results:
                if (
                    r.action.type is ActionType.COPY_SECRET
                    and r.action.source is not None
                    and r.outcome in ("applied", "unchanged")
                ):
                    copy = f"{r.action.target.namespace}/{r.action.secret}"
                    stats.copies.add((str(r.action.source), copy))
            if wrote:
                stats.counts["remediated"] += 1
            if not ok:
                stats.counts["failed"] += 1
            stats.saved += saved
            stats.last_actions.append(
                {
                    "time": _now_iso(),
                    "workload": str(target),
                    "cause": str(p.cause),
                    "action": ",".join(str(a.type) for a in p.actions),
                    "result": "applied" if wrote else ("failed" if not ok else "unchanged"),
                    "detail": text[:500],
                }
            )
            stats.dirty = True
        if follow_up:
            return
        if (
            f.workload is not None
            and wrote
            and f.workload.kind in ANNOTATABLE
            and not any(
                r.action.type
                in (ActionType.PATCH_WORKLOAD_IMAGE, ActionType.ADD_TEMPLATE_PULL_SECRET)
                and r.outcome == "applied"
                for r in results
            )
        ):
            # Image patches carry their record; secret fixes and recreations get one too.
            with contextlib.suppress(ApiException):
                await self.actuator.record(p, main, f.workload, started=started)
        if wrote:
            msg = f"Remediated {p.cause} for container {f.container}: {text}"
            if saved:
                msg += f"; back-off waiting saved by recreating pods: {saved:.0f}s"
            await events.post(self.kube, _involved(target), "Remediated", msg)
            if p.policy and p.policy in self.policies:
                await events.post(
                    self.kube,
                    self._policy_involved(self.policies[p.policy]),
                    "Remediated",
                    f"{target}: {msg}",
                )
        elif not ok and self._fresh(group, f"failed:{p.cause}:{text}"):
            await events.post(
                self.kube,
                _involved(target),
                "RemediationFailed",
                f"Could not remediate {p.cause}: {text}",
                "Warning",
            )

    @staticmethod
    def _fresh(group: Group, fingerprint: str) -> bool:
        """True once per distinct outcome of a group: rechecks must not flood Events."""
        if group.posted == fingerprint:
            return False
        group.posted = fingerprint
        return True

    async def _suggest(self, p: Plan, f: Failure, stats: PolicyStats | None, group: Group) -> None:
        target = f.workload or f.pod
        if not self._fresh(group, "suggest:" + "|".join(p.suggestions) + p.note):
            return
        cmds = " && ".join(p.suggestions)
        msg = (
            f"Suggested fix for {p.cause} in container {f.container}: "
            + "; ".join(a.summary for a in p.actions)
            + (f". Run: {cmds}" if cmds else "")
        )
        if p.note:
            msg += f" ({p.note})"
        await events.post(self.kube, _involved(target), "SuggestedFix", msg)
        if stats is not None:
            stats.counts["suggested"] += 1
            stats.last_actions.append(
                {
                    "time": _now_iso(),
                    "workload": str(target),
                    "cause": str(p.cause),
                    "action": "Suggest",
                    "result": "suggested",
                    "detail": msg[:500],
                }
            )
            stats.dirty = True

    async def _report_diagnosis(
        self, f: Failure, d: Diagnosis, p: Plan, first: bool, rep: PodState
    ) -> None:
        if not first:
            return
        b = backoff.state(time.monotonic() - rep.first_seen)
        msg = f"{d.summary} (cause {d.cause}, confidence {d.confidence})"
        if p.note:
            msg += f"; {p.note}"
        msg += (
            f". Kubelet back-off so far: {b.attempts} pull attempt(s), current step "
            f"{b.current_step:.0f}s, next retry in {b.next_attempt_in:.0f}s"
        )
        await events.post(
            self.kube,
            _involved(f.pod),
            "PullDiagnosed",
            msg,
            "Normal" if d.cause is Cause.ImageAvailable else "Warning",
        )

    def _policy_involved(self, p: pol.Policy) -> events.Involved:
        # The apiserver keeps Events of cluster-scoped objects in `default`.
        return events.Involved(f"{pol.GROUP}/{pol.VERSION}", p.kind, p.namespace, p.name, p.uid)

    def _account_backoff(self, members: list[PodState], stats: PolicyStats | None) -> None:
        now = time.monotonic()
        attempts = sum(backoff.state(now - m.first_seen).attempts for m in members)
        if stats is not None:
            stats.attempts = max(stats.attempts, attempts)
            stats.dirty = True

    # ---- circuit breaker ----------------------------------------------------------------

    def _circuit_key(self, target: ObjectRef, container: str) -> tuple[str, str]:
        # Owners we cannot annotate are remembered in memory, by uid: a recreated workload
        # of the same name starts clean.
        return (f"{target}#{target.uid}", container)

    def _circuit_open(
        self,
        wobj: Mapping[str, Any] | None,
        target: ObjectRef,
        f: Failure,
        d: Diagnosis,
        members: list[PodState],
    ) -> bool:
        """Open when a pod that already carries our fix fails again with the same cause."""
        ann = ((wobj or {}).get("metadata") or {}).get("annotations") or {}
        if target.kind in ANNOTATABLE:
            if ann.get(CIRCUIT_ANNOTATION) == "open":
                return True  # removing the annotation re-arms
        elif self._circuit_key(target, f.container) in self.circuits:
            return True
        rec = self.records.get((str(target), f.container))
        from_ann = RemediationRecord.from_annotation(ann.get(REMEDIATION_ANNOTATION))
        if (
            from_ann is not None
            and from_ann.container == f.container
            and (rec is None or from_ann.at > rec.at + 1)
        ):
            rec = from_ann  # survives restarts
        if rec is None or time.time() - rec.at > self.settings.circuit_window:
            return False
        same = rec.cause == str(d.cause) or (
            rec.cause in CREDENTIAL_CAUSES and d.cause in CREDENTIAL_CAUSES
        )
        if not same:
            return False
        if rec.action in (ActionType.PATCH_WORKLOAD_IMAGE, ActionType.PATCH_POD_IMAGE):
            return f.image == rec.new_image  # the image we chose fails itself
        if rec.secret:
            return rec.secret in f.pod_pull_secrets  # the pod got our secret, still fails
        # Recreated pods: a member that was not among the pods we deleted and is newer than
        # them. After a restart only the record's time is known: allow for clock skew.
        if rec.old_created is not None:
            return any(
                m.ref.uid not in rec.old_pods and m.created >= rec.old_created for m in members
            )
        return any(m.created >= rec.at + 5 for m in members)

    async def _open_circuit(
        self,
        f: Failure,
        target: ObjectRef,
        wobj: Mapping[str, Any] | None,
        d: Diagnosis,
        stats: PolicyStats | None,
        group: Group,
    ) -> None:
        key = self._circuit_key(target, f.container)
        annotations = ((wobj or {}).get("metadata") or {}).get("annotations") or {}
        already = key in self.circuits or annotations.get(CIRCUIT_ANNOTATION) == "open"
        if target.kind not in ANNOTATABLE:
            self.circuits.add(key)
        if already or not self._fresh(group, f"circuit:{d.cause}"):
            return
        if target.kind in ANNOTATABLE and wobj:
            with contextlib.suppress(ApiException):
                await self.kube.json_patch(
                    target.kind,
                    target.namespace,
                    target.name,
                    Actuator.annotation_ops(wobj, {CIRCUIT_ANNOTATION: "open"}),
                    self.settings.dry_run,
                )
        await events.post(
            self.kube,
            _involved(target),
            "RemediationIneffective",
            f"{d.cause} came back for container {f.container} after pullmedic's remediation; "
            "not acting again. Remove annotation pullmedic.dev/circuit (or restart pullmedic "
            "for owners it cannot annotate) to re-arm.",
            "Warning",
        )
        if stats is not None:
            stats.counts["failed"] += 1
            stats.last_actions.append(
                {
                    "time": _now_iso(),
                    "workload": str(target),
                    "cause": str(d.cause),
                    "action": "CircuitBreaker",
                    "result": "failed",
                    "detail": "same cause after remediation",
                }
            )
            stats.dirty = True

    # ---- lookups ------------------------------------------------------------------------

    async def _owner_chain(
        self, pod: Mapping[str, Any]
    ) -> tuple[ObjectRef | None, ObjectRef | None, dict[str, Any] | None]:
        ns = pod["metadata"]["namespace"]
        ref = controller_of(pod)
        if ref is None:
            return None, None, None
        kind, name = ref.get("kind", ""), ref.get("name", "")
        if kind == "ReplicaSet":
            rs = await self.kube.get("ReplicaSet", ns, name)
            up = controller_of(rs) if rs else None
            if up is None or up.get("kind") != "Deployment":
                return ObjectRef("ReplicaSet", ns, name, ref.get("uid", "")), None, rs
            dep = await self.kube.get("Deployment", ns, up.get("name", ""))
            if dep is None:  # being deleted: never mistake its pods for bare pods
                return ObjectRef("ReplicaSet", ns, name, ref.get("uid", "")), None, rs
            return (
                ObjectRef("Deployment", ns, dep["metadata"]["name"], dep["metadata"]["uid"]),
                None,
                dep,
            )
        if kind == "Job":
            job = await self.kube.get("Job", ns, name)
            job_ref = ObjectRef("Job", ns, name, ref.get("uid", ""))
            up = controller_of(job) if job else None
            if up is None or up.get("kind") != "CronJob":
                return job_ref, None, job
            cj = await self.kube.get("CronJob", ns, up.get("name", ""))
            if cj is None:
                return job_ref, None, job
            return ObjectRef("CronJob", ns, up.get("name", ""), cj["metadata"]["uid"]), job_ref, cj
        if kind in ("Deployment", "StatefulSet", "DaemonSet"):
            obj = await self.kube.get(kind, ns, name)
            if obj is None:
                return ObjectRef(kind, ns, name, ref.get("uid", "")), None, None
            return ObjectRef(kind, ns, name, obj["metadata"]["uid"]), None, obj
        return ObjectRef(kind, ns, name, ref.get("uid", "")), None, None

    async def _secret(self, ns: str, name: str) -> PullSecret | None:
        obj = await self.kube.get("Secret", ns, name)
        if obj is None:
            return None
        return PullSecret(
            namespace=ns, name=name, type=str(obj.get("type", "")), data=dict(obj.get("data") or {})
        )

    async def _keyrings(
        self, pod: Mapping[str, Any], policy: pol.Policy | None
    ) -> tuple[Keyring, dict[str, Keyring], list[SecretProblem]]:
        """Exactly the kubelet's credentials for this pod, plus the policy's candidates."""
        ns = pod["metadata"]["namespace"]
        own = [
            s
            for n in pod["spec"]["imagePullSecrets"]
            if (s := await self._secret(ns, n.get("name", ""))) is not None
        ]
        keyring, problems = Keyring.from_secrets(own)
        candidates: dict[str, Keyring] = {}
        if policy is not None and policy.credentials_enabled:
            for ref in policy.secrets:
                if not policy.is_cluster and ref.namespace != policy.namespace:
                    continue  # defence in depth: parse() already refuses these
                s = await self._secret(ref.namespace, ref.name)
                if s is not None:
                    candidates[str(ref)], _ = Keyring.from_secrets([s])
        return keyring, candidates, problems

    async def _platform(self, node: str | None) -> Platform:
        default = Platform.parse(self.settings.default_platform)
        if not node:
            return default
        if node not in self._node_platforms:
            try:
                obj = await self.kube.call("GET", f"/api/v1/nodes/{node}")
                labels = (obj.get("metadata") or {}).get("labels") or {}
                self._node_platforms[node] = Platform(
                    labels.get("kubernetes.io/os", default.os),
                    labels.get("kubernetes.io/arch", default.architecture),
                )
            except ApiException:
                return default
        return self._node_platforms[node]

    async def _verified_mirror(
        self, image: str, policy: pol.Policy, keyring: Keyring, platform: Platform
    ) -> str | None:
        try:
            ref = reference.parse(image)
        except reference.InvalidReference:
            return None
        mirror = policy.mirror_for(ref.domain) or policy.mirror_for(ref.registry_host)
        if not mirror:
            return None
        candidate = (
            f"{mirror}/{ref.path}"
            + (f":{ref.tag}" if ref.tag else "")
            + (f"@{ref.digest}" if ref.digest else "")
        )
        d = await self.prober.diagnose(candidate, keyring, platform, suggest=False)
        return candidate if d.cause is Cause.ImageAvailable else None

    # ---- policy status ------------------------------------------------------------------

    async def run_status_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval)
            stuck: dict[str | None, int] = {}
            attempts = 0
            now = time.monotonic()
            for state in self.pods.values():  # one pass per interval, never per event
                stuck[state.policy] = stuck.get(state.policy, 0) + 1
                attempts += backoff.state(now - state.first_seen).attempts
            metrics.PULL_ATTEMPTS.set(attempts)
            self._update_stuck_gauge()
            self._forget_idle_groups()
            for key, st in list(self.stats.items()):
                p = self.policies.get(key)
                if p is None or not st.dirty:
                    continue
                st.dirty = False
                try:
                    await self._patch_policy_status(
                        p,
                        {
                            "counts": {**st.counts, "stuck": stuck.get(key, 0)},
                            "backoff": {
                                "pullAttempts": st.attempts,
                                "secondsLostWaiting": round(st.lost, 1),
                                "secondsSavedByRecreation": round(st.saved, 1),
                            },
                            "lastActions": list(st.last_actions),
                            "managedSecrets": [
                                {"source": src, "copy": dst} for src, dst in sorted(st.copies)
                            ],
                        },
                    )
                except ApiException as e:
                    log.warning("status of %s not written: %s", key, e.status)
                    st.dirty = True

    async def run_sweeper(self, every: float = 60.0, max_age: float = 300.0) -> None:
        """Forget stuck pods that vanished while the watch was down: a re-list after 410
        delivers the living, never a DELETED for the dead."""
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for uid, state in list(self.pods.items()):
                if now - max(state.checked, state.first_seen) < max_age:
                    continue
                state.checked = now
                try:
                    obj = await self.kube.get("Pod", state.ref.namespace, state.ref.name)
                except ApiException:
                    continue
                if (obj is None or (obj.get("metadata") or {}).get("uid") != uid) and (
                    self.pods.get(uid) is state
                ):
                    self._recovered(self.pods.pop(uid))
                await asyncio.sleep(0.05)  # at most ~20 GETs a second

    async def run_secret_sync(self) -> None:
        """Managed copies follow their source: a rotated registry password reaches every
        namespace a ClusterPullPolicy copied it to, without watching all secrets."""
        while True:
            await asyncio.sleep(self.settings.secret_sync_interval)
            for key, st in list(self.stats.items()):
                policy = self.policies.get(key)
                if policy is None or not policy.is_cluster:
                    continue
                for src, dst in sorted(st.copies):
                    await self._sync_copy(policy, src, dst)

    async def _sync_copy(self, policy: pol.Policy, src: str, dst: str) -> None:
        src_ns, _, src_name = src.partition("/")
        dst_ns, _, dst_name = dst.partition("/")
        if pol.SecretRef(src_ns, src_name) not in policy.secrets:
            return  # no longer a candidate of this policy: leave the copy alone
        if dst_ns not in self.namespaces or not policy.selects_namespace(
            dst_ns, self.namespaces[dst_ns], self.settings.operator_namespace
        ):
            return  # never write into a namespace the policy does not select
        action = Action(
            ActionType.COPY_SECRET,
            ObjectRef("Secret", dst_ns, dst_name),
            f"refresh {dst} from {src}",
            source=pol.SecretRef(src_ns, src_name),
            secret=dst_name,
        )
        try:
            result = await self.actuator.apply_action(action)
        except ApiException as e:
            log.warning("could not refresh %s from %s: %s", dst, src, e.status)
            return
        metrics.ACTIONS.labels(action="RefreshSecret", outcome=result.outcome).inc()
        if result.outcome == "applied":
            await events.post(
                self.kube,
                self._policy_involved(policy),
                "SecretRefreshed",
                f"Copy {dst} updated after its source {src} changed.",
            )

    def _update_stuck_gauge(self) -> None:
        by_cause: dict[str, int] = {}
        for g in self.groups.values():
            if g.cause:
                by_cause[g.cause] = by_cause.get(g.cause, 0) + len(g.pods)
        for cause in Cause:
            metrics.STUCK_PODS.labels(cause=str(cause)).set(by_cause.get(str(cause), 0))

    async def _patch_policy_status(self, p: pol.Policy, status: dict[str, Any]) -> None:
        if p.is_cluster:
            path = f"/apis/{pol.GROUP}/{pol.VERSION}/clusterpullpolicies/{p.name}/status"
        else:
            path = (
                f"/apis/{pol.GROUP}/{pol.VERSION}/namespaces/{p.namespace}/pullpolicies/"
                f"{p.name}/status"
            )
        try:
            await self.kube.call("PATCH", path, {"status": status}, "application/merge-patch+json")
        except ApiException as e:
            if e.status != 404:
                raise


def _template_spec(wobj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    spec: Any = wobj.get("spec") or {}
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    tspec: Mapping[str, Any] = (spec.get("template") or {}).get("spec") or {}
    return tspec


def _template_pull_secrets(
    wobj: Mapping[str, Any] | None, workload: ObjectRef | None
) -> tuple[str, ...] | None:
    if not wobj or workload is None:
        return None
    refs = _template_spec(wobj, workload.kind).get("imagePullSecrets") or ()
    return tuple(str(r.get("name", "")) for r in refs if isinstance(r, Mapping))


def _fingerprint(p: Plan) -> str:
    """What a plan changes, recreations aside: equal fingerprints are the same fix."""
    parts = [
        f"{a.type}:{a.target}:{a.new_image}:{a.secret}"
        for a in p.actions
        if a.type is not ActionType.RECREATE_PODS
    ]
    return f"{p.cause}|" + "|".join(parts) if p.actions else ""


def _template_index(
    wobj: Mapping[str, Any], workload: ObjectRef | None, sc: StuckContainer
) -> int | None:
    if workload is None:
        return None
    for i, c in enumerate(_template_spec(wobj, workload.kind).get(sc.kind) or ()):
        if c.get("name") == sc.name:
            return i
    return None


def _involved(ref: ObjectRef) -> events.Involved:
    return events.Involved(
        API_VERSIONS.get(ref.kind, "v1"), ref.kind, ref.namespace, ref.name, ref.uid
    )


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["Diagnoser", "Engine", "EngineSettings", "Result"]
