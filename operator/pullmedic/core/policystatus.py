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

import functools
from collections.abc import Callable, Mapping
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


Reader = Callable[[Any], Any]


def _number(types: type | tuple[type, ...]) -> Reader:
    return lambda raw: raw if isinstance(raw, types) else None


def _container(hint: Any) -> bool:
    return is_typeddict(hint) or get_origin(hint) in (list, dict)


@functools.cache
def _reader(hint: Any) -> Reader:
    """How to read a value of type ``hint`` (built once per type: statuses are read on
    every policy event). Readers return None for a value that cannot be one: text takes any
    value spelled as text (as every version read it), containers that are not containers
    read as empty, and list items missing a required key (or with it empty) are dropped."""
    if hint is str:
        return str
    if hint is int:
        return _number(int)
    if hint is float:
        return _number((int, float))
    if is_typeddict(hint):
        fields = [(k, _reader(t), _container(t)) for k, t in get_type_hints(hint).items()]

        def typed(raw: Any) -> dict[str, Any]:
            src = raw if isinstance(raw, Mapping) else {}
            out = {}
            for key, read, always in fields:
                if key in src or always:
                    v = read(src.get(key))
                    if v is not None:
                        out[key] = v
            return out

        return typed
    origin, args = get_origin(hint), get_args(hint)
    if origin is list:
        item, need = _reader(args[0]), getattr(args[0], "__required_keys__", None)

        def whole(x: Any) -> bool:
            if need is None:
                return item(x) is not None
            return isinstance(x, Mapping) and all(x.get(k) for k in need)

        return lambda raw: [item(x) for x in raw if whole(x)] if isinstance(raw, list) else []
    if origin is dict:
        value = _reader(args[1])
        return lambda raw: (
            {str(k): value(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        )
    raise TypeError(f"no reader for {hint!r}")  # a field type this parser does not know


def parse_part(raw: Any) -> Part:
    """What a status (or one shard's part of it) says, as far as it says it correctly."""
    return cast(Part, _reader(Part)(raw))


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
