"""Shards: the API server's hash, the slices, selectors, and who owns a failure group."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from pullmedic.core.metadata import labels_of
from pullmedic.core.sharding import (
    HANDOFF,
    HANDOFF_LABEL,
    Shard,
    fnv1a64,
    group_shard,
    handoff_target,
    owner_uid,
)
from pullmedic.kube.client import KubeError
from tests.unit.fakekube import apply_json_patch

# Go: h := fnv.New64a(); h.Write([]byte(s)); fmt.Printf("%016x", h.Sum64())
GO_FNV = [
    ("", 0xCBF29CE484222325),
    ("a", 0xAF63DC4C8601EC8C),
    ("0b9f2a4e-3c1d-4e5f-9a8b-7c6d5e4f3a2b", 0xC29DFF11AD21655B),
    ("namespace-x", 0x068137D0620C281D),
]


@pytest.mark.parametrize(("value", "expected"), GO_FNV)
def test_hash_is_go_fnv1a_64(value: str, expected: int) -> None:
    assert fnv1a64(value) == expected


@pytest.mark.parametrize(
    ("index", "count", "selector"),
    [
        (0, 1, ""),
        (
            0,
            2,
            "shardRange(object.metadata.uid, '0x0000000000000000', '0x8000000000000000')",
        ),
        (
            1,
            2,
            "shardRange(object.metadata.uid, '0x8000000000000000', '0x10000000000000000')",
        ),
        (
            2,
            4,
            "shardRange(object.metadata.uid, '0x8000000000000000', '0xc000000000000000')",
        ),
        (
            0,
            3,
            "shardRange(object.metadata.uid, '0x0000000000000000', '0x5555555555555555')",
        ),
    ],
)
def test_selector_matches_the_api_server_syntax(index: int, count: int, selector: str) -> None:
    assert Shard(index, count).selector() == selector


@pytest.mark.parametrize(("index", "count"), [(0, 0), (1, 1), (-1, 2), (4, 4)])
def test_impossible_shards_are_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        Shard(index, count)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_every_uid_is_in_exactly_one_shard_and_of_names_it(count: int) -> None:
    rnd = random.Random(count)
    uids = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(400)]
    shards = [Shard(i, count) for i in range(count)]
    for uid in uids:
        holders = [s.index for s in shards if s.holds(uid)]
        assert holders == [shards[0].of(uid)]


@pytest.mark.parametrize(
    ("h", "count", "index"),
    [
        (0, 2, 0),
        ((1 << 63) - 1, 2, 0),
        (1 << 63, 2, 1),
        ((1 << 64) - 1, 2, 1),
        ((1 << 64) - 1, 3, 2),
        (0x5555555555555554, 3, 0),
        (0x5555555555555555, 3, 1),
    ],
)
def test_slice_edges(h: int, count: int, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pullmedic.core.sharding.fnv1a64", lambda _: h)
    s = Shard(0, count)
    assert s.of("x") == index
    assert s.peer(index).holds("x")


def pod(uid: str, owner: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    refs = [{"kind": "ReplicaSet", "name": "web-1", "uid": owner, "controller": True}]
    meta: dict[str, Any] = {"name": f"p-{uid}", "namespace": "ns", "uid": uid}
    if owner:
        meta["ownerReferences"] = refs
    if labels is not None:
        meta["labels"] = labels
    return {"metadata": meta}


def uid_in(shard: Shard, salt: str) -> str:
    """A uid whose hash falls into ``shard``."""
    for i in range(10_000):
        u = f"{salt}-{i}"
        if shard.holds(u):
            return u
    raise AssertionError("no uid found")


def test_siblings_in_different_shards_have_one_owner() -> None:
    two = [Shard(0, 2), Shard(1, 2)]
    rs = uid_in(two[1], "rs")
    a, b = pod(uid_in(two[0], "pod"), rs), pod(uid_in(two[1], "pod"), rs)
    assert owner_uid(a) == owner_uid(b) == rs
    assert {group_shard(s, p) for s in two for p in (a, b)} == {1}
    assert handoff_target(two[0], a) == two[1]  # watched by 0, owned by 1: handed over
    assert handoff_target(two[1], b) is None  # watched and owned by 1


@pytest.mark.parametrize(
    ("pod_body", "owner"),
    [
        (pod("u1", "rs-uid"), "rs-uid"),
        (pod("u2"), "u2"),  # a bare pod is its own owner: always its watcher's
        (
            {"metadata": {"uid": "u3", "ownerReferences": [{"uid": "x", "controller": False}]}},
            "u3",
        ),
    ],
)
def test_owner_uid(pod_body: dict[str, Any], owner: str) -> None:
    assert owner_uid(pod_body) == owner


def test_a_bare_pod_is_never_handed_over() -> None:
    for count in (2, 4):
        for i in range(count):
            s = Shard(i, count)
            assert handoff_target(s, pod(uid_in(s, "bare"))) is None


def test_unsharded_owns_everything() -> None:
    one = Shard()
    assert one.holds("anything") and group_shard(one, pod("a", "b")) == 0
    assert handoff_target(one, pod("a", "b")) is None


@pytest.mark.parametrize("labels", [{"app": "web"}, {}, None])
def test_handoff_patch_labels_the_pod(labels: dict[str, str] | None) -> None:
    body = pod("u1", "rs", labels)
    out = apply_json_patch(body, HANDOFF.store(body, Shard(3, 4)))
    assert HANDOFF.fetch(labels_of(out)) == Shard(3, 4)
    assert out["metadata"]["labels"][HANDOFF_LABEL] == "3-of-4"
    assert {k: v for k, v in out["metadata"]["labels"].items() if k != HANDOFF_LABEL} == (
        labels or {}
    )
    assert HANDOFF.selector(Shard(3, 4)) == f"{HANDOFF_LABEL}=3-of-4"
    purged = apply_json_patch(out, HANDOFF.purge(out))
    assert HANDOFF.fetch(labels_of(purged)) is None
    assert labels_of(purged) == (labels or {})
    assert HANDOFF.purge(purged) == []


def test_the_handoff_patch_is_for_this_very_pod() -> None:
    body = pod("u1", "rs", {"app": "web"})
    other = {**body, "metadata": {**body["metadata"], "uid": "u2"}}
    with pytest.raises(KubeError):
        apply_json_patch(other, HANDOFF.store(body, Shard(1, 2)))


@pytest.mark.parametrize(
    "value", [None, "", "1-of-2 ", "01-of-2", "2-of-2", "1-of-0", "one-of-two", "-1-of-2", 7]
)
def test_a_label_that_names_no_shard_hands_to_none(value: object) -> None:
    assert HANDOFF.fetch({HANDOFF_LABEL: value}) is None
    assert HANDOFF.fetch({HANDOFF_LABEL: "1-of-2"}) == Shard(1, 2)
