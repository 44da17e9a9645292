"""One typed cache for the probe: time-to-live, least-recently-used, single flight.

Every cached thing (a diagnosis, a probe, a tag list, a platform or integrity verdict,
a document by digest) is stored under a key whose class names the value's type, so one
store serves them all, one bound limits them all, and ``clear`` really clears.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from pullmedic.probe.singleflight import SingleFlight

V = TypeVar("V")


class CacheKey(Generic[V]):
    """Base of every key; ``V`` is the type of the value stored under it.

    Subclasses are frozen dataclasses, so two keys of different kinds never collide.
    """

    __slots__ = ()


class Cache:
    """A bounded store of values, each with its own time to live and a size (default 1).

    ``enabled=False`` makes every lookup a miss and every store a no-op, and
    ``single_flight=False`` lets concurrent loads of one key each run: together they give
    the naive baseline the benchmarks compare against.
    """

    def __init__(self, max_size: int, *, enabled: bool = True, single_flight: bool = True) -> None:
        self.max_size = max_size
        self.enabled = enabled
        self.single_flight = single_flight
        self._data: OrderedDict[CacheKey[Any], tuple[float, int, Any]] = OrderedDict()
        self._size = 0
        self._flight: SingleFlight[CacheKey[Any], Any] = SingleFlight()
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        return self._size

    def get(self, key: CacheKey[V]) -> V | None:
        item = self._data.get(key) if self.enabled else None
        if item is None or item[0] <= time.monotonic():
            if item is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return cast(V, item[2])

    def put(self, key: CacheKey[V], value: V, ttl: float = math.inf, size: int = 1) -> None:
        """Store ``value`` for ``ttl`` seconds; nothing when ``ttl <= 0`` or it cannot fit."""
        if not self.enabled or ttl <= 0 or size > self.max_size:
            return
        if key in self._data:
            self._drop(key)
        if self._size + size > self.max_size:
            now = time.monotonic()
            for k in [k for k, (exp, _, _) in self._data.items() if exp <= now]:
                self._drop(k)
            while self._size + size > self.max_size:
                self._drop(next(iter(self._data)))
        self._data[key] = (time.monotonic() + ttl, size, value)
        self._size += size

    async def load(
        self,
        key: CacheKey[V],
        fn: Callable[[], Awaitable[V]],
        ttl_of: Callable[[V], float],
        *,
        on_hit: Callable[[V], None] | None = None,
        share: bool = True,
    ) -> V:
        """The cached value (``on_hit`` told), or ``fn()``'s, kept ``ttl_of(value)`` seconds.

        Concurrent loads of one key share one call unless ``share`` is off (or the cache's
        ``single_flight``).
        """
        hit = self.get(key)
        if hit is not None:
            if on_hit is not None:
                on_hit(hit)
            return hit

        async def run() -> V:
            value = await fn()
            self.put(key, value, ttl_of(value))
            return value

        if share and self.single_flight:
            return cast(V, await self._flight.do(key, run))
        return await run()

    def discard(self, doomed: Callable[[CacheKey[Any], object], bool]) -> int:
        """Drop every entry ``doomed(key, value)`` names; how many were dropped."""
        keys = [k for k, (_, _, v) in self._data.items() if doomed(k, v)]
        for k in keys:
            self._drop(k)
        return len(keys)

    def forget(self, key: CacheKey[Any]) -> None:
        if key in self._data:
            self._drop(key)

    def clear(self) -> None:
        self._data.clear()
        self._size = 0

    def _drop(self, key: CacheKey[Any]) -> None:
        _, size, _ = self._data.pop(key)
        self._size -= size
