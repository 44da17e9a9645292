"""What each policy has done, as the numbers its status shows. Pure bookkeeping: outcomes
in, counts, last actions, rate-limit slots and back-off figures out."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pullmedic.core import backoff
from pullmedic.core.actions import ActionType, ObjectRef, Plan, Result
from pullmedic.core.grouping import PodState

APPLIED_OK = frozenset({"applied", "unchanged", "dry-run", "skipped"})
RATE_WINDOW = 3600.0


@dataclass
class PolicyStats:
    counts: dict[str, int] = field(
        default_factory=lambda: {"detected": 0, "suggested": 0, "remediated": 0, "failed": 0}
    )
    last_actions: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=10))
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
    journal: dict[str, dict[str, str]] = field(default_factory=dict)
    inherited: dict[str, dict[str, str]] = field(default_factory=dict)
    inherited_at: float = 0.0  # monotonic time they were loaded
    audit: list[dict[str, str]] = field(default_factory=list)  # images that would not pull

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

    def take_inherited(self, workload: str) -> dict[str, str] | None:
        entry = self.inherited.pop(workload, None)
        if entry is not None:
            self.dirty = True
        return entry

    def load(self, status: Mapping[str, Any]) -> None:
        """Continue from what the status says (written by the previous leader, or by this
        process before a restart): counts never go back to zero on failover."""
        counts = status.get("counts") or {}
        for k in self.counts:
            v = counts.get(k)
            if isinstance(v, int) and v > self.counts[k]:
                self.counts[k] = v
        backoff_ = status.get("backoff") or {}
        if isinstance(backoff_.get("pullAttempts"), int):
            self.attempts = max(self.attempts, backoff_["pullAttempts"])
        for name, attr in (("secondsLostWaiting", "lost"), ("secondsSavedByRecreation", "saved")):
            v = backoff_.get(name)
            if isinstance(v, int | float) and v > getattr(self, attr):
                setattr(self, attr, float(v))
        pending = status.get("pendingActions")
        self.inherited = {}
        for e in pending if isinstance(pending, list) else ():
            if isinstance(e, Mapping) and e.get("workload") and e.get("since"):
                w = str(e["workload"])
                if w not in self.journal:
                    self.inherited[w] = {str(k): str(v) for k, v in e.items()}
        actions = status.get("lastActions")
        if isinstance(actions, list) and not self.last_actions:
            for a in actions[-(self.last_actions.maxlen or 10) :]:
                if isinstance(a, Mapping):
                    self.last_actions.append({str(k): str(v) for k, v in a.items()})

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

    def status(self, stuck: int) -> dict[str, Any]:
        return {
            "counts": {**self.counts, "stuck": stuck},
            "backoff": {
                "pullAttempts": self.attempts,
                "secondsLostWaiting": round(self.lost, 1),
                "secondsSavedByRecreation": round(self.saved, 1),
            },
            "lastActions": list(self.last_actions),
            "managedSecrets": [{"source": s, "copy": d} for s, d in sorted(self.copies)],
            "unavailableImages": list(self.audit),
            "pendingActions": [
                {**self.inherited, **self.journal}[w]
                for w in sorted({**self.inherited, **self.journal})
            ],
        }


def merge_parts(parts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The top-level status of a sharded policy: the sum of its shards' parts
    (status.shards), each written by its own shard. Malformed parts count as empty."""
    counts: dict[str, int] = {}
    backoff_: dict[str, float] = {}
    actions: list[dict[str, str]] = []
    copies: set[tuple[str, str]] = set()
    audit: list[dict[str, str]] = []
    pending: dict[str, dict[str, str]] = {}
    for name in sorted(parts):
        part = parts[name]
        if not isinstance(part, Mapping):
            continue
        for k, v in (part.get("counts") or {}).items():
            if isinstance(v, int):
                counts[str(k)] = counts.get(str(k), 0) + v
        for k, v in (part.get("backoff") or {}).items():
            if isinstance(v, int | float):
                backoff_[str(k)] = backoff_.get(str(k), 0) + v
        for key, into in (("lastActions", actions), ("unavailableImages", audit)):
            items = part.get(key)
            into.extend(
                {str(a): str(b) for a, b in x.items()}
                for x in (items if isinstance(items, list) else ())
                if isinstance(x, Mapping)
            )
        for m in part.get("managedSecrets") or ():
            if isinstance(m, Mapping) and m.get("source") and m.get("copy"):
                copies.add((str(m["source"]), str(m["copy"])))
        for e in part.get("pendingActions") or ():
            if isinstance(e, Mapping) and e.get("workload"):
                pending[str(e["workload"])] = {str(a): str(b) for a, b in e.items()}
    actions.sort(key=lambda a: a.get("time", ""))
    backoff_ = {k: round(v, 1) if isinstance(v, float) else v for k, v in backoff_.items()}
    return {
        "counts": counts,
        "backoff": backoff_,
        "lastActions": actions[-10:],
        "managedSecrets": [{"source": a, "copy": b} for a, b in sorted(copies)],
        "unavailableImages": audit[:100],
        "pendingActions": [pending[w] for w in sorted(pending)],
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
