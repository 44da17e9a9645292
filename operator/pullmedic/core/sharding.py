"""Shards: which replica watches a pod, and which one decides for a failure group.

Pure and synchronous. The API server's ShardedListAndWatch (alpha in 1.36) filters a list
or watch by ``shardRange(object.metadata.uid, '0x<start>', '0x<end>')``: the 64-bit FNV-1a
hash of the uid (k8s.io/apimachinery/pkg/sharding) in [start, end). Shard ``i`` of ``n``
gets the i-th of n equal slices of the hash space.

A failure group belongs to the shard its owner's uid hashes into (a bare pod: its own
uid), by the same hash, so every replica computes the same owner for every group without
talking to the others. A replica that watches a stuck pod of a group another shard owns
hands the pod over with a label (``HANDOFF_LABEL: "<owner>-of-<n>"``); every shard also
watches pods carrying its own label value, so the owner sees that pod like one of its own.
This module owns that label's format (``HANDOFF``: fetch / store / purge); ``kube.handoff``
applies its patches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pullmedic.core.detection import controller_of
from pullmedic.core.metadata import precondition, remove_ops, set_ops

HASH_SPACE = 1 << 64
HANDOFF_LABEL = "pullmedic.dev/shard"
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = HASH_SPACE - 1
_NAME = re.compile(r"([0-9]+)-of-([0-9]+)")


def fnv1a64(value: str) -> int:
    """The API server's shard hash (Go hash/fnv New64a over the UTF-8 bytes)."""
    h = _FNV_OFFSET
    for b in value.encode():
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


def _hex(v: int) -> str:
    # The API server wants 16 hex digits ("0x0" is refused); 2^64 as the open end has 17.
    return f"0x{v:016x}"


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: need 0 <= index < count")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def name(self) -> str:
        """``"<index>-of-<count>"``: the hand-off label value and the Lease suffix."""
        return f"{self.index}-of-{self.count}"

    @property
    def start(self) -> int:
        return self.index * HASH_SPACE // self.count

    @property
    def end(self) -> int:
        return (self.index + 1) * HASH_SPACE // self.count

    def selector(self) -> str:
        """The ``shardSelector`` of this shard's pod list and watch; "" when unsharded."""
        if not self.sharded:
            return ""
        return f"shardRange(object.metadata.uid, '{_hex(self.start)}', '{_hex(self.end)}')"

    def holds(self, uid: str) -> bool:
        """This shard's slice of the hash space contains ``uid``."""
        return not self.sharded or self.start <= fnv1a64(uid) < self.end

    def of(self, uid: str) -> int:
        """The index of the shard (of ``count``) whose slice contains ``uid``."""
        # The slices are [i * 2^64 // n, (i + 1) * 2^64 // n): invert with a ceiling.
        return ((fnv1a64(uid) + 1) * self.count - 1) // HASH_SPACE

    def peer(self, index: int) -> Shard:
        return Shard(index, self.count)


def owner_uid(pod: Mapping[str, Any]) -> str:
    """The uid a pod's failure group is placed by: its controller's, or its own."""
    ref = controller_of(pod)
    if ref is not None and ref.get("uid"):
        return str(ref["uid"])
    return str((pod.get("metadata") or {}).get("uid") or "")


def group_shard(shard: Shard, pod: Mapping[str, Any]) -> int:
    """The index of the shard that decides for the pod's failure group."""
    return shard.of(owner_uid(pod)) if shard.sharded else 0


def handoff_target(shard: Shard, pod: Mapping[str, Any]) -> Shard | None:
    """The shard a pod watched here must be handed to, or None when this one owns it."""
    owner = group_shard(shard, pod)
    return None if owner == shard.index else shard.peer(owner)


class HandoffLabel:
    """The hand-off label on a pod: ``HANDOFF_LABEL: "<index>-of-<count>"`` (``Shard.name``),
    the shard the pod was handed to. Patches are on this very pod (a uid ``test``)."""

    key = HANDOFF_LABEL

    def fetch(self, labels: Mapping[str, Any]) -> Shard | None:
        """The shard the label names; None when there is none or it names no shard."""
        raw = labels.get(self.key)
        m = _NAME.fullmatch(raw) if isinstance(raw, str) else None
        if m is None:
            return None
        try:
            shard = Shard(int(m[1]), int(m[2]))
        except ValueError:
            return None
        return shard if shard.name == raw else None  # "01-of-4" is not shard 1's label

    def store(self, pod: Mapping[str, Any], target: Shard) -> list[dict[str, Any]]:
        """JSON patch ops labelling the pod for ``target``."""
        return [precondition(pod, "uid"), *set_ops(pod, "labels", {self.key: target.name})]

    def purge(self, pod: Mapping[str, Any]) -> list[dict[str, Any]]:
        ops = remove_ops(pod, "labels", self.key)
        return [precondition(pod, "uid"), *ops] if ops else []

    def selector(self, shard: Shard) -> str:
        """The ``labelSelector`` of the pods handed to ``shard``."""
        return f"{self.key}={shard.name}"


HANDOFF = HandoffLabel()
