"""The probe's one cache (TTL, LRU, sizes, single flight) and the kubelet's credential order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from pullmedic.core.observation import Observation
from pullmedic.probe import cache as cache_module
from pullmedic.probe.cache import Cache, CacheKey
from pullmedic.probe.credential_order import choose


@dataclass(frozen=True)
class K(CacheKey[str]):
    name: str


@dataclass(frozen=True)
class Other(CacheKey[str]):
    name: str


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(cache_module.time, "monotonic", c.monotonic)
    return c


# (steps, then which names are still there); a step is (op, name, ttl or size)
CASES = [
    ("kept until its ttl", [("put", "a", 10), ("wait", "", 9)], {"a"}),
    ("gone after its ttl", [("put", "a", 10), ("wait", "", 10)], set()),
    ("ttl 0 is not stored", [("put", "a", 0)], set()),
    ("the least recently used goes first", [("put", "a", 99), ("put", "b", 99),
     ("get", "a", 0), ("put", "c", 99), ("put", "d", 99)], {"a", "c", "d"}),
    ("expired entries go before live ones", [("put", "a", 99), ("put", "b", 5),
     ("put", "c", 99), ("wait", "", 6), ("put", "d", 99)], {"a", "c", "d"}),
]  # fmt: skip


@pytest.mark.parametrize(("steps", "kept"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_ttl_and_eviction(
    clock: Clock, steps: list[tuple[str, str, float]], kept: set[str]
) -> None:
    c = Cache(3)
    for op, name, n in steps:
        if op == "put":
            c.put(K(name), name, n)
        elif op == "get":
            assert c.get(K(name)) == name
        else:
            clock.now += n
    assert {n for n in "abcd" if c.get(K(n)) is not None} == kept


@pytest.mark.parametrize(
    ("sizes", "kept"),
    [
        ([4, 4], {"0", "1"}),
        ([4, 4, 4], {"1", "2"}),  # 12 > 10: the oldest goes
        ([11], set()),  # larger than the whole cache: not stored
        ([9, 2], {"1"}),
    ],
)
def test_sizes_bound_the_cache(sizes: list[int], kept: set[str]) -> None:
    c = Cache(10)
    for i, size in enumerate(sizes):
        c.put(K(str(i)), "x", size=size)
    assert {str(i) for i in range(len(sizes)) if c.get(K(str(i)))} == kept
    assert c.size == sum(sizes[int(k)] for k in kept)


def test_kinds_of_key_never_collide_and_discard_picks() -> None:
    c = Cache(10)
    c.put(K("a"), "k")
    c.put(Other("a"), "other")
    assert (c.get(K("a")), c.get(Other("a"))) == ("k", "other")
    assert c.discard(lambda key, _value: isinstance(key, Other)) == 1
    assert (c.get(K("a")), c.get(Other("a"))) == ("k", None)


@pytest.mark.parametrize(
    ("enabled", "single_flight", "calls", "second_load_calls"),
    [(True, True, 1, 0), (True, False, 5, 0), (False, True, 1, 1), (False, False, 5, 1)],
)
async def test_load_shares_flights_and_keeps_values(
    enabled: bool, single_flight: bool, calls: int, second_load_calls: int
) -> None:
    c = Cache(10, enabled=enabled, single_flight=single_flight)
    count = 0
    hits: list[str] = []

    async def fn() -> str:
        nonlocal count
        count += 1
        await asyncio.sleep(0.01)
        return "v"

    got = await asyncio.gather(*(c.load(K("a"), fn, lambda _: 60) for _ in range(5)))
    assert got == ["v"] * 5 and count == calls
    await c.load(K("a"), fn, lambda _: 60, on_hit=hits.append)
    assert count == calls + second_load_calls
    assert hits == ([] if second_load_calls else ["v"])


def _obs(status: int | None, scheme: str = "none", failure: str | None = None) -> Observation:
    return Observation("i", manifest_status=status, auth_scheme=scheme, failure=failure)


@pytest.mark.parametrize(
    ("observations", "chosen"),
    [
        ([_obs(401, "basic"), _obs(200)], 1),  # success first
        ([_obs(404, "bearer"), _obs(404)], 1),  # then an authorised 404
        ([_obs(401, "basic"), _obs(None, failure="timeout")], 1),  # then the registry's fault
        ([_obs(401, "basic"), _obs(403, "basic")], 0),  # else the first credential's
    ],
)
def test_the_kubelet_credential_order_chooses(observations: list[Observation], chosen: int) -> None:
    assert choose(observations) == chosen
