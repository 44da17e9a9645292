"""What application teams read in `kubectl describe`: one Event per distinct outcome, with
the cause, the evidence in one sentence and, for suggestions, the command to run."""

from __future__ import annotations

from pullmedic.core import backoff
from pullmedic.core import policy as pol
from pullmedic.core.actions import Failure, ObjectRef, Plan
from pullmedic.core.diagnosis import Cause, Diagnosis
from pullmedic.core.kinds import KINDS
from pullmedic.kube import events
from pullmedic.kube.client import KubeApi


def involved(ref: ObjectRef) -> events.Involved:
    return events.Involved(
        KINDS[ref.kind].api_version if ref.kind in KINDS else "v1",
        ref.kind,
        ref.namespace,
        ref.name,
        ref.uid,
    )


def policy_involved(p: pol.Policy) -> events.Involved:
    # The apiserver keeps Events of cluster-scoped objects in `default`.
    return events.Involved(f"{pol.GROUP}/{pol.VERSION}", p.kind, p.namespace, p.name, p.uid)


def diagnosis_message(d: Diagnosis, p: Plan, stuck_for: float) -> str:
    b = backoff.state(stuck_for)
    msg = f"{d.summary} (cause {d.cause}, confidence {d.confidence})"
    if p.note:
        msg += f"; {p.note}"
    return msg + (
        f". Kubelet back-off so far: {b.attempts} pull attempt(s), current step "
        f"{b.current_step:.0f}s, next retry in {b.next_attempt_in:.0f}s"
    )


def suggestion_message(p: Plan, f: Failure) -> str:
    cmds = " && ".join(p.suggestions)
    msg = (
        f"Suggested fix for {p.cause} in container {f.container}: "
        + "; ".join(a.summary for a in p.actions)
        + (f". Run: {cmds}" if cmds else "")
    )
    return msg + (f" ({p.note})" if p.note else "")


def remediated_message(p: Plan, f: Failure, text: str, saved: float) -> str:
    msg = f"Remediated {p.cause} for container {f.container}: {text}"
    if saved:
        msg += f"; back-off waiting saved by recreating pods: {saved:.0f}s"
    return msg


def ineffective_message(f: Failure, cause: Cause) -> str:
    return (
        f"{cause} came back for container {f.container} after pullmedic's remediation; "
        "not acting again. Remove annotation pullmedic.dev/circuit (or restart pullmedic "
        "for owners it cannot annotate) to re-arm."
    )


class Reporter:
    def __init__(self, kube: KubeApi, outbox: events.Outbox | None = None) -> None:
        self.kube = kube
        self.outbox = outbox  # keyed Events that did not get through are posted again

    async def diagnosed(self, f: Failure, d: Diagnosis, p: Plan, stuck_for: float) -> None:
        await events.post(
            self.kube,
            involved(f.pod),
            "PullDiagnosed",
            diagnosis_message(d, p, stuck_for),
            "Normal" if d.cause is Cause.ImageAvailable else "Warning",
            key=f"{f.pod.uid}|{f.container}|{f.image}|{d.cause}",  # once per pod, restarts too
            outbox=self.outbox,
        )

    async def suggested(self, target: ObjectRef, message: str) -> None:
        await events.post(self.kube, involved(target), "SuggestedFix", message)

    async def remediated(
        self, target: ObjectRef, policy: pol.Policy | None, message: str, *, key: str = ""
    ) -> None:
        """``key`` identifies the fix (its record's time): announcing it again is a no-op."""
        await events.post(
            self.kube, involved(target), "Remediated", message, key=key, outbox=self.outbox
        )
        if policy is not None:
            await events.post(
                self.kube,
                policy_involved(policy),
                "Remediated",
                f"{target}: {message}",
                key=f"{target}|{key}" if key else "",
                outbox=self.outbox,
            )

    async def failed(self, target: ObjectRef, cause: Cause, text: str) -> None:
        await events.post(
            self.kube,
            involved(target),
            "RemediationFailed",
            f"Could not remediate {cause}: {text}",
            "Warning",
        )

    async def ineffective(self, target: ObjectRef, f: Failure, cause: Cause) -> None:
        await events.post(
            self.kube,
            involved(target),
            "RemediationIneffective",
            ineffective_message(f, cause),
            "Warning",
        )

    async def image_unavailable(
        self, target: ObjectRef, container: str, image: str, cause: str, summary: str
    ) -> None:
        await events.post(
            self.kube,
            involved(target),
            "ImageUnavailable",
            f"Image {image} of container {container} would not pull for a new pod "
            f"({cause}): {summary}",
            "Warning",
            key=f"{container}|{image}|{cause}",  # once, across restarts
            outbox=self.outbox,
        )

    async def image_available_again(self, target: ObjectRef, container: str, image: str) -> None:
        await events.post(
            self.kube,
            involved(target),
            "ImageAvailableAgain",
            f"Image {image} of container {container} pulls again.",
        )

    async def invalid_spec(self, policy: pol.Policy, problems: str) -> None:
        await events.post(self.kube, policy_involved(policy), "InvalidSpec", problems, "Warning")

    async def secret_refreshed(self, policy: pol.Policy, src: str, dst: str) -> None:
        await events.post(
            self.kube,
            policy_involved(policy),
            "SecretRefreshed",
            f"Copy {dst} updated after its source {src} changed.",
        )
