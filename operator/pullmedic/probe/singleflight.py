"""Single flight: concurrent callers asking for the same thing share one call.

A thousand pods of one Deployment failing at once must cost one set of registry
requests, not a thousand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Concurrent callers for the same key share one in-flight call and its result."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self.calls = 0
        self.shared = 0

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        fut = self._inflight.get(key)
        if fut is not None:
            self.shared += 1
            return await asyncio.shield(fut)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._inflight[key] = fut
        self.calls += 1
        try:
            result = await fn()
        except BaseException as exc:
            if not fut.done():
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                else:
                    fut.cancel()
            # Retrieve so asyncio does not warn when nobody else was waiting.
            if not fut.cancelled():
                fut.exception()
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            self._inflight.pop(key, None)
