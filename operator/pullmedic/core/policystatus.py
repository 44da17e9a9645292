"""The one owner of the policy status format (``status`` of PullPolicy and
ClusterPullPolicy). The TypedDicts are the one description of its shape: the parser below
is driven by them, and tests/unit/test_crds.py checks crds/*.yaml against them field by
field. ``parse_part`` is the one parser of what a status says (anyone who may write the
status subresource can put anything there). ``StatusStore`` is its storage, in the style
of kopf's progress storage: ``fetch`` reads this replica's figures, ``store`` and
``purge`` return the merge patch, which the control loop writes.

No ``from __future__ import annotations`` here: Python 3.11 honours ``NotRequired`` in a
TypedDict's required keys only when the annotations are evaluated.
"""

from collections.abc import Mapping
from typing import (
    Any,
    NotRequired,
    TypedDict,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from pullmedic.core.detection import parse_time


class Counts(TypedDict, total=False):
    detected: int
    suggested: int
    remediated: int
    failed: int
    stuck: int


class Backoff(TypedDict, total=False):
    """Kubelet back-off accounting for the workloads the policy saw."""

    pullAttempts: int
    secondsLostWaiting: float
    secondsSavedByRecreation: float


class LastAction(TypedDict, total=False):
    time: str
    workload: str
    cause: str
    action: str
    result: str
    detail: str


class ManagedSecret(TypedDict):
    """A secret copy the policy made and keeps in sync with its source ("ns/name" each)."""

    source: str
    copy: str


class UnavailableImage(TypedDict, total=False):
    """Audit: a workload image that would not pull for a new pod."""

    workload: str
    container: str
    image: str
    cause: str
    message: str
    lastChecked: str


class PendingAction(TypedDict):
    """The journal: a remediation begun and not yet counted (``since`` is its record's time)."""

    workload: str
    cause: NotRequired[str]
    since: NotRequired[str]


class Part(TypedDict):
    """One writer's figures and journal: the whole status, or with shards the part each
    shard writes under ``status.shards["<I>-of-<N>"]``."""

    counts: Counts
    backoff: Backoff
    lastActions: list[LastAction]
    managedSecrets: list[ManagedSecret]
    unavailableImages: list[UnavailableImage]
    pendingActions: list[PendingAction]


class Condition(TypedDict):
    type: str
    status: str
    reason: NotRequired[str]
    message: NotRequired[str]
    lastTransitionTime: NotRequired[str]
    observedGeneration: NotRequired[int]


class PolicyStatus(Part, total=False):
    """The whole status; with shards, the top-level figures are the sum of the parts."""

    observedGeneration: int
    conditions: list[Condition]
    shards: dict[str, Part]


def since(entry: PendingAction) -> float | None:
    """When the journal entry's fix began (its record's time), or None when unreadable."""
    try:
        return parse_time(entry.get("since"))
    except ValueError:
        return None


LAST_ACTIONS = 10  # kept, and published, per writer
UNAVAILABLE_IMAGES = 100


def _value(hint: Any, raw: Any) -> Any:
    """``raw`` read as ``hint`` says, or None when it cannot be. Text fields take any value
    spelled as text (as every version read them); list items that miss a required key, or
    have it empty, are dropped; containers that are not containers read as empty."""
    if hint is str:
        return str(raw)
    if hint is int:
        return raw if isinstance(raw, int) else None
    if hint is float:
        return raw if isinstance(raw, int | float) else None
    if is_typeddict(hint):
        src = raw if isinstance(raw, Mapping) else {}
        out = {}
        for key, sub in get_type_hints(hint).items():
            if key in src or get_origin(sub) in (list, dict) or is_typeddict(sub):
                v = _value(sub, src.get(key))
                if v is not None:
                    out[key] = v
        return out
    origin, args = get_origin(hint), get_args(hint)
    if origin is list:
        return (
            [_value(args[0], x) for x in raw if _whole(args[0], x)] if isinstance(raw, list) else []
        )
    if origin is dict:
        src = raw if isinstance(raw, Mapping) else {}
        return {str(k): _value(args[1], v) for k, v in src.items()}
    raise TypeError(f"no reader for {hint!r}")  # a field type this parser does not know


def _whole(hint: Any, raw: Any) -> bool:
    """A list item worth keeping: an object with every required key set."""
    if not is_typeddict(hint):
        return _value(hint, raw) is not None
    return isinstance(raw, Mapping) and all(raw.get(k) for k in hint.__required_keys__)


def parse_part(raw: Any) -> Part:
    """What a status (or one shard's part of it) says, as far as it says it correctly."""
    return cast(Part, _value(Part, raw))


def shard_parts(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """``status.shards`` of a sharded policy, by shard ("<I>-of-<N>"), unparsed; empty when
    absent."""
    shards = status.get("shards")
    return shards if isinstance(shards, Mapping) else {}


def merge_parts(parts: Mapping[str, Any]) -> Part:
    """The top-level status of a sharded policy: the sum of its shards' parts. Malformed
    parts count as empty."""
    counts: dict[str, int] = {}
    backoff: dict[str, float] = {}
    actions: list[LastAction] = []
    copies: set[tuple[str, str]] = set()
    audit: list[UnavailableImage] = []
    pending: dict[str, PendingAction] = {}
    for name in sorted(parts):
        part = parse_part(parts[name])
        for k, n in part["counts"].items():
            counts[k] = counts.get(k, 0) + cast(int, n)
        for k, v in part["backoff"].items():
            backoff[k] = backoff.get(k, 0) + cast(float, v)
        actions += part["lastActions"]
        audit += part["unavailableImages"]
        copies.update((m["source"], m["copy"]) for m in part["managedSecrets"])
        pending.update((e["workload"], e) for e in part["pendingActions"])
    actions.sort(key=lambda a: a.get("time", ""))
    return {
        "counts": cast(Counts, counts),
        "backoff": cast(
            Backoff, {k: round(v, 1) if isinstance(v, float) else v for k, v in backoff.items()}
        ),
        "lastActions": actions[-LAST_ACTIONS:],
        "managedSecrets": [{"source": a, "copy": b} for a, b in sorted(copies)],
        "unavailableImages": audit[:UNAVAILABLE_IMAGES],
        "pendingActions": [pending[w] for w in sorted(pending)],
    }


class StatusStore:
    """A policy's status as one replica reads and writes it: the whole status when
    unsharded; with shards (``part`` is the shard's name), its own part under
    ``status.shards``, and for the lead (shard 0) the sum of all parts at the top level.
    Merge patches: each writer replaces only what is its own."""

    def __init__(self, part: str = "") -> None:
        self.part = part

    def fetch(self, status: Mapping[str, Any]) -> Part:
        """This replica's figures and journal, as last published."""
        return parse_part(shard_parts(status).get(self.part) if self.part else status)

    def others(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """The other shards' parts, unparsed (the lead writes the sum again when they change)."""
        return {k: v for k, v in shard_parts(status).items() if k != self.part}

    def store(self, mine: Part, status: Mapping[str, Any], *, lead: bool) -> dict[str, Any]:
        """The patch publishing ``mine``; ``status`` is the policy's status as last seen."""
        if not self.part:
            return dict(mine)
        out: dict[str, Any] = {"shards": {self.part: mine}}
        if lead:
            out.update(merge_parts({**shard_parts(status), self.part: mine}))
        return out

    def purge(self) -> dict[str, Any]:
        """The patch removing what ``store`` writes (its top-level sum stays the lead's)."""
        if self.part:
            return {"shards": {self.part: None}}
        return dict.fromkeys(Part.__annotations__)

    @staticmethod
    def ready_changed(status: Mapping[str, Any], condition: Condition, generation: int) -> bool:
        """The status does not say ``condition`` for this generation of the spec yet (its
        transition time aside: that is set only when this is true)."""
        conditions = status.get("conditions")
        old: Mapping[str, Any] = next(
            (
                c
                for c in (conditions if isinstance(conditions, list) else ())
                if isinstance(c, Mapping) and c.get("type") == condition["type"]
            ),
            {},
        )
        return {k: old.get(k) for k in condition} != dict(condition) or status.get(
            "observedGeneration"
        ) != generation

    @staticmethod
    def ready(condition: Condition, generation: int) -> dict[str, Any]:
        """The patch publishing the Ready condition for a generation of the spec."""
        return {"observedGeneration": generation, "conditions": [condition]}
