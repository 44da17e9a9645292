"""The policy status format through its one owner (core/policystatus.py): what a hostile
or older status reads as, and the patches a replica writes and reads back."""

from __future__ import annotations

from typing import Any

import pytest

from pullmedic.core.accounting import PolicyStats
from pullmedic.core.actions import ObjectRef
from pullmedic.core.policystatus import Condition, StatusStore, parse_part
from tests.unit.fakekube import merge_patch

EMPTY: dict[str, Any] = {
    "counts": {},
    "backoff": {},
    "lastActions": [],
    "managedSecrets": [],
    "unavailableImages": [],
    "pendingActions": [],
}


@pytest.mark.parametrize(
    "raw",
    [None, "junk", [], {}, {k: "junk" for k in EMPTY}, {k: 7 for k in EMPTY}],
)
def test_nonsense_reads_as_an_empty_part(raw: Any) -> None:
    assert parse_part(raw) == EMPTY


def test_only_well_formed_entries_are_read() -> None:
    part = parse_part(
        {
            "counts": {"detected": 3, "failed": "x", "stuck": True},
            "backoff": {"pullAttempts": 2.5, "secondsLostWaiting": 4},
            "lastActions": [{"time": "t", "detail": 5}, "junk"],
            "managedSecrets": [{"source": "a/s", "copy": ""}, {"source": "a/s", "copy": "b/s"}],
            "pendingActions": [{"cause": "c"}, {"workload": "w", "since": None}],
        }
    )
    assert part["counts"] == {"detected": 3, "stuck": True}
    assert part["backoff"] == {"secondsLostWaiting": 4}
    assert part["lastActions"] == [{"time": "t", "detail": "5"}]  # text, as it always was
    assert part["managedSecrets"] == [{"source": "a/s", "copy": "b/s"}]
    assert part["pendingActions"] == [{"workload": "w", "since": "None"}]


def _stats() -> PolicyStats:
    st = PolicyStats()
    st.detected()
    st.intend(ObjectRef("Deployment", "ns", "web", "u"), "TagNotFound", "2026-01-01T00:00:00Z")
    st.copies.add(("src/cred", "ns/cred"))
    return st


@pytest.mark.parametrize("part", ["", "1-of-2"])
def test_a_restarted_replica_continues_what_it_stored(part: str) -> None:
    store = StatusStore(part)
    other = {"shards": {"0-of-2": {"counts": {"detected": 9}}}} if part else {}
    status = merge_patch(other, store.store(_stats().status(2), other, lead=False))
    back = PolicyStats()
    back.load(store.fetch(status))
    back.adopt(store.fetch(status)["managedSecrets"])
    assert back.counts["detected"] == 1
    assert set(back.inherited) == {"Deployment/ns/web"}
    assert back.copies == {("src/cred", "ns/cred")}
    assert store.others(status) == other.get("shards", {})
    purged = merge_patch(status, store.purge())
    assert store.fetch(purged) == EMPTY
    assert purged == other  # another shard's part stays


def test_the_lead_also_writes_the_sum_of_all_parts() -> None:
    status = {"shards": {"0-of-2": {"counts": {"detected": 9, "stuck": 1}}}}
    patch = StatusStore("1-of-2").store(_stats().status(2), status, lead=True)
    assert set(patch["shards"]) == {"1-of-2"}
    assert patch["counts"]["detected"] == 10 and patch["counts"]["stuck"] == 3
    assert patch["managedSecrets"] == [{"source": "src/cred", "copy": "ns/cred"}]


def test_the_ready_condition_is_written_when_it_or_the_generation_changed() -> None:
    cond: Condition = {"type": "Ready", "status": "True", "reason": "Accepted", "message": "m"}
    written = merge_patch({}, StatusStore.ready({**cond, "lastTransitionTime": "t"}, 3))
    assert not StatusStore.ready_changed(written, cond, 3)
    assert StatusStore.ready_changed(written, cond, 4)
    assert StatusStore.ready_changed(written, {**cond, "status": "False"}, 3)
    assert StatusStore.ready_changed({"conditions": ["junk", 5]}, cond, 3)
    assert StatusStore.ready_changed({}, cond, 3)
