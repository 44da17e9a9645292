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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pullmedic.core import jsonpointer
from pullmedic.core.detection import controller_of

HASH_SPACE = 1 << 64
HANDOFF_LABEL = "pullmedic.dev/shard"
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = HASH_SPACE - 1


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

    def handoff_selector(self) -> str:
        """The ``labelSelector`` of the pods other shards hand over to this one."""
        return f"{HANDOFF_LABEL}={self.name}"

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


def handed_to(pod: Mapping[str, Any]) -> str:
    """The hand-off label already on the pod ("" when none)."""
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(HANDOFF_LABEL) or "")


def handoff_patch(pod: Mapping[str, Any], target: Shard) -> list[dict[str, Any]]:
    """JSON patch: label the pod for ``target``, on this very pod (uid test)."""
    meta = pod.get("metadata") or {}
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": meta.get("uid")}]
    if meta.get("labels"):
        key = jsonpointer.escape(HANDOFF_LABEL)
        ops.append({"op": "add", "path": f"/metadata/labels/{key}", "value": target.name})
    else:
        ops.append({"op": "add", "path": "/metadata/labels", "value": {HANDOFF_LABEL: target.name}})
    return ops
