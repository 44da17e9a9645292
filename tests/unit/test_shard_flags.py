"""`--shards` and `--shard-index`: the shard, its Lease, and the StatefulSet ordinal."""

from __future__ import annotations

import argparse

import pytest

from pullmedic.app.flags import add_arguments
from pullmedic.app.runner import _ordinal, settings_from
from pullmedic.core.sharding import Shard


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize(
    ("value", "index"),
    [("pullmedic-3", 3), ("pullmedic-shard-0", 0), ("pullmedic", 0), ("", 0), (None, 0), ("7", 7)],
)
def test_ordinal(value: str | None, index: int) -> None:
    assert _ordinal(value) == index


@pytest.mark.parametrize(
    ("argv", "shard", "lease"),
    [
        ((), Shard(), "pullmedic"),
        (("--shards", "1", "--shard-index", "0"), Shard(), "pullmedic"),
        (("--shards", "2", "--shard-index", "1"), Shard(1, 2), "pullmedic-shard-1-of-2"),
        (("--shards", "4", "--shard-index", "3"), Shard(3, 4), "pullmedic-shard-3-of-4"),
    ],
)
def test_shard_and_its_lease(argv: tuple[str, ...], shard: Shard, lease: str) -> None:
    s = settings_from(parse("--leader-elect", "--operator-namespace", "ops", *argv)).engine
    assert s.shard == shard
    assert s.lease is not None and s.lease.name == lease


@pytest.mark.parametrize(
    "argv",
    [
        ("--shards", "0"),
        ("--shards", "2", "--shard-index", "2"),
        ("--shards", "2", "--shard-index", "-1"),
    ],
)
def test_impossible_shards_are_usage_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        settings_from(parse(*argv))


@pytest.mark.parametrize(
    ("pod", "shards", "shard"),
    [
        ("pullmedic-0", 2, Shard(0, 2)),
        ("pullmedic-1", 2, Shard(1, 2)),
        ("pullmedic-2", 2, Shard(0, 2)),  # the standby of shard 0
        ("pullmedic-3", 2, Shard(1, 2)),
        ("pullmedic-5", 4, Shard(1, 4)),
        ("pullmedic-7", 1, Shard()),
    ],
)
def test_statefulset_ordinal_modulo_shards(
    monkeypatch: pytest.MonkeyPatch, pod: str, shards: int, shard: Shard
) -> None:
    monkeypatch.setenv("POD_NAME", pod)
    monkeypatch.delenv("PULLMEDIC_SHARD_INDEX", raising=False)
    s = settings_from(parse("--operator-namespace", "ops", "--shards", str(shards))).engine
    assert s.shard == shard
