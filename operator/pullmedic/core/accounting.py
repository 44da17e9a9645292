"""What each policy has done, as the numbers its status shows. Pure bookkeeping: outcomes
in, counts, last actions, rate-limit slots and back-off figures out, in the status format
``policystatus`` owns."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from pullmedic.core import backoff
from pullmedic.core.actions import ActionType, ObjectRef, Plan, Result
from pullmedic.core.grouping import PodState
from pullmedic.core.policystatus import (
    LAST_ACTIONS,
    Counts,
    LastAction,
    ManagedSecret,
    Part,
    PendingAction,
    UnavailableImage,
)

APPLIED_OK = frozenset({"applied", "unchanged", "dry-run", "skipped"})
RATE_WINDOW = 3600.0


@dataclass
class PolicyStats:
    counts: dict[str, int] = field(
        default_factory=lambda: {"detected": 0, "suggested": 0, "remediated": 0, "failed": 0}
    )
    last_actions: deque[LastAction] = field(default_factory=lambda: deque(maxlen=LAST_ACTIONS))
    attempts: int = 0
    lost: float = 0.0
    saved: float = 0.0
    remediations: deque[float] = field(default_factory=deque)  # wall times of slots taken
    copies: set[tuple[str, str]] = field(default_factory=set)  # (source ns/name, copy ns/name)
    dirty: bool = True
    # The journal, published as status.pendingActions: a fix is entered before its first
    # write and leaves once counted and announced. Entries a previous process left are
    # ``inherited``: the next decision for that workload continues them, or the status
    # loop resolves them from the workload's record.
    journal: dict[str, PendingAction] = field(default_factory=dict)
    inherited: dict[str, PendingAction] = field(default_factory=dict)
    inherited_at: float = 0.0  # monotonic time they were loaded
    audit: list[UnavailableImage] = field(default_factory=list)  # images that would not pull

    def intend(self, workload: ObjectRef, cause: str, since: str) -> None:
        self.journal[str(workload)] = {"workload": str(workload), "cause": cause, "since": since}
        self.dirty = True

    def settle(self, workload: ObjectRef) -> None:
        if self.journal.pop(str(workload), None) is not None:
            self.dirty = True

    def defer(self, workload: ObjectRef, now: float) -> None:
        """A fix whose last write's outcome is unknown (its answer was lost): left to be
        resolved from the workload's record, like one a crashed process began."""
        key = str(workload)
        entry = self.journal.pop(key, None) or self.inherited.get(key)
        if entry is not None:
            self.inherited[key] = entry
            self.inherited_at = now
            self.dirty = True

    def take_inherited(self, workload: str) -> PendingAction | None:
        entry = self.inherited.pop(workload, None)
        if entry is not None:
            self.dirty = True
        return entry

    def load(self, part: Part) -> None:
        """Continue from what the status says (written by the previous leader, or by this
        process before a restart): counts never go back to zero on failover."""
        for k, n in part["counts"].items():
            if k in self.counts and isinstance(n, int) and n > self.counts[k]:
                self.counts[k] = n
        b = part["backoff"]
        self.attempts = max(self.attempts, b.get("pullAttempts", self.attempts))
        self.lost = max(self.lost, float(b.get("secondsLostWaiting", self.lost)))
        self.saved = max(self.saved, float(b.get("secondsSavedByRecreation", self.saved)))
        self.inherited = {
            e["workload"]: e
            for e in part["pendingActions"]
            if e.get("since") and e["workload"] not in self.journal
        }
        if not self.last_actions:
            self.last_actions.extend(part["lastActions"][-LAST_ACTIONS:])

    def adopt(self, copies: Iterable[ManagedSecret]) -> None:
        """Secret copies the status lists (made by this policy before): keep them in sync."""
        self.copies.update((m["source"], m["copy"]) for m in copies)

    # ---- rate limit ------------------------------------------------------------------
    def rate_limited(self, per_hour: int, now: float) -> bool:
        while self.remediations and now - self.remediations[0] > RATE_WINDOW:
            self.remediations.popleft()
        return len(self.remediations) >= per_hour

    def reserve(self, slot: float) -> None:
        self.remediations.append(slot)

    def release(self, slot: float) -> None:
        if slot in self.remediations:
            self.remediations.remove(slot)

    # ---- outcomes --------------------------------------------------------------------
    def note(self, workload: ObjectRef, cause: str, action: str, result: str, detail: str) -> None:
        self.last_actions.append(
            {
                "time": now_iso(),
                "workload": str(workload),
                "cause": cause,
                "action": action,
                "result": result,
                "detail": detail[:500],
            }
        )
        self.dirty = True

    def detected(self) -> None:
        self.counts["detected"] += 1
        self.dirty = True

    def suggested(self, workload: ObjectRef, cause: str, message: str) -> None:
        self.counts["suggested"] += 1
        self.note(workload, cause, "Suggest", "suggested", message)

    def circuit_opened(self, workload: ObjectRef, cause: str) -> None:
        self.counts["failed"] += 1
        self.note(workload, cause, "CircuitBreaker", "failed", "same cause after remediation")

    def applied(
        self,
        p: Plan,
        results: Sequence[Result],
        workload: ObjectRef,
        text: str,
        saved: float,
        *,
        written: bool = False,  # written by an earlier process (a continuation)
    ) -> None:
        ok, wrote = outcome(results)
        wrote = wrote or written
        for r in results:
            if (
                r.action.type is ActionType.COPY_SECRET
                and r.action.source is not None
                and r.outcome in ("applied", "unchanged")
            ):
                self.copies.add(
                    (str(r.action.source), f"{r.action.target.namespace}/{r.action.secret}")
                )
        if wrote:
            self.counts["remediated"] += 1
        if not ok:
            self.counts["failed"] += 1
        self.saved += saved
        self.note(
            workload,
            str(p.cause),
            ",".join(str(a.type) for a in p.actions),
            "applied" if wrote else ("failed" if not ok else "unchanged"),
            text,
        )

    def account_backoff(self, members: Iterable[PodState], now: float) -> None:
        attempts = sum(backoff.state(now - m.first_seen).attempts for m in members)
        self.attempts = max(self.attempts, attempts)
        self.dirty = True

    def status(self, stuck: int) -> Part:
        journal = {**self.inherited, **self.journal}
        return {
            "counts": cast(Counts, {**self.counts, "stuck": stuck}),
            "backoff": {
                "pullAttempts": self.attempts,
                "secondsLostWaiting": round(self.lost, 1),
                "secondsSavedByRecreation": round(self.saved, 1),
            },
            "lastActions": list(self.last_actions),
            "managedSecrets": [{"source": s, "copy": d} for s, d in sorted(self.copies)],
            "unavailableImages": list(self.audit),
            "pendingActions": [journal[w] for w in sorted(journal)],
        }


def outcome(results: Sequence[Result]) -> tuple[bool, bool]:
    """(every action succeeded or had nothing to do, something was written)."""
    ok = all(r.outcome in APPLIED_OK for r in results)
    wrote = any(r.outcome == "applied" for r in results)
    return ok, wrote


def summary(results: Sequence[Result]) -> str:
    return "; ".join(
        f"{r.action.summary}: {r.outcome}" + (f" ({r.detail})" if r.detail else "") for r in results
    )


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
